"""The highly available store: the shard map in an etcd cluster, over etcd's v3 JSON gateway.

**Keys**, under a prefix (`/forehand` by default):

    <prefix>/head                   JSON: version, snapshot_version, snapshot_id, snapshot_chunks
    <prefix>/delta/<version:020d>   each version after the snapshot: 0x00 + the encoded delta, or
                                    0x01 + JSON naming the chunks of a delta too large for a value
    <prefix>/blob/<id>/<n:06d>      a large delta, in chunks of at most value_bytes_max
    <prefix>/snapshot/<id>/<n:06d>  the encoded snapshot, in chunks of at most value_bytes_max
    <prefix>/leader                 the leading manager (`forehand.runtime._leader`), on its lease

**Compare-and-swap.** Every write is one etcd transaction that compares the head key's
`mod_revision` with the one this store last read, so a write based on anything but the latest
head fails as a whole and changes nothing: two managers can never both commit a delta on the same
base. With a fence (`leader_key` and `leader_value`), the transaction also compares the leader
key's value, so a manager that lost its leadership cannot write at all, even on the latest base;
that failure comes back as `StoreFailed` and sets `deposed`. The store caches the head it last
read, so a commit is one round trip; a failed comparison reads the head in the same transaction
and the request is checked again against it.

**Endpoints.** Each request goes to the endpoint that answered last; when it cannot be reached
(or answers that it has no quorum), the next one is tried, and when none answers the request
becomes `StoreFailed`. A write whose answer was lost may have landed: the retry's comparison
then fails, the head read back shows the new version, and the core's reload finds its change
already made. Loads read the head and then the snapshot and deltas at the head's revision, one
consistent view even while another manager writes.

**Bounds.** etcd refuses requests above `--max-request-bytes` (1.5 MiB by default), so a snapshot,
and a delta larger than `value_bytes_max` (a failover of a big server), are written in chunks of
that size under a new id before the transaction that makes them part of the map; a transaction
that fails deletes its chunks, and a snapshot deletes the chunks of the deltas it covers.

**Client.** etcd's gRPC API through aetcd 1.0.0 committed about twice as many transactions per
second as this gateway on one member, but aetcd opens only plaintext channels to one endpoint; the
gateway over httpx gives TLS and several endpoints, and a 3-member cluster's disk syncs dominate
either way (docs/DEPLOYMENT.md has the numbers).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import secrets
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from forehand.errors import ConfigError
from forehand.stores._messages import (
    DeltaCommitRequested,
    DeltaCommitted,
    MapLoaded,
    MapLoadRequested,
    SnapshotSaved,
    SnapshotSaveRequested,
    StoreFailed,
    StoreRequest,
    StoreResult,
)
from forehand.stores._store import StoreConfig, check_commit, check_snapshot

__all__ = [
    "ETCD_URL_SCHEME",
    "EtcdClient",
    "EtcdConfig",
    "EtcdError",
    "EtcdStore",
    "parse_etcd_url",
]

ETCD_URL_SCHEME = "etcd://"
"""Store URLs `etcd://host:port,host:port/prefix` name an etcd cluster."""
_VERSION_DIGITS = 20
_RANGE_PAGE_KEYS = 1_000
_WRITE_ATTEMPTS_MAX = 3
_INLINE = b"\x00"
"""First byte of a delta key's value that holds the delta itself."""
_CHUNKED = b"\x01"
"""First byte of a delta key's value that names the chunks holding the delta."""


class EtcdError(Exception):
    """No endpoint of the etcd cluster answered the request, or one refused it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EtcdConfig:
    """Where the etcd cluster is and how to talk to it."""

    endpoints: tuple[str, ...]
    """`host:port` of each member's client URL, tried in turn."""
    prefix: str = "/forehand"
    """Every key of this cluster starts with it; several clusters may share one etcd."""
    ca_path: Path | None = None
    """CA bundle that signed the members' certificates: set it to talk TLS (https)."""
    certificate_path: Path | None = None
    """Client certificate (PEM) for members that require client authentication."""
    private_key_path: Path | None = None
    """Its private key (PEM)."""
    request_timeout_ms: int = 2_000
    """How long one request waits for one endpoint before the next endpoint is tried."""
    value_bytes_max: int = 1_000_000
    """Largest value written in one key: a delta's bound and a snapshot chunk's size. Keep it
    below the members' `--max-request-bytes` (1.5 MiB by default)."""
    snapshot_chunks_max: int = 4_096
    """Most chunks one snapshot may take."""

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ConfigError("etcd needs at least one endpoint")
        for endpoint in self.endpoints:
            host, separator, port = endpoint.rpartition(":")
            if not separator or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"etcd endpoint must be host:port, got {endpoint!r}")
        if not self.prefix.startswith("/") or self.prefix.endswith("/"):
            raise ConfigError(f"etcd prefix must start with / and not end with it: {self.prefix!r}")
        if (self.certificate_path is None) != (self.private_key_path is None):
            raise ConfigError("etcd client certificate and private key go together")
        if self.certificate_path is not None and self.ca_path is None:
            raise ConfigError("an etcd client certificate needs the etcd CA (TLS)")
        for name in ("request_timeout_ms", "value_bytes_max", "snapshot_chunks_max"):
            if getattr(self, name) < 1:
                raise ConfigError(f"EtcdConfig.{name} must be positive")

    @property
    def leader_key(self) -> str:
        """The key the leading manager holds on its lease."""
        return f"{self.prefix}/leader"


def parse_etcd_url(url: str, **options: Any) -> EtcdConfig:
    """`etcd://h1:p1,h2:p2[/prefix]` (plus EtcdConfig keyword options) as an EtcdConfig."""
    if not url.startswith(ETCD_URL_SCHEME):
        raise ConfigError(f"an etcd store URL starts with {ETCD_URL_SCHEME}, got {url!r}")
    rest = url[len(ETCD_URL_SCHEME) :]
    hosts, slash, path = rest.partition("/")
    endpoints = tuple(part.strip() for part in hosts.split(",") if part.strip())
    if slash and path:
        options.setdefault("prefix", "/" + path.rstrip("/"))
    return EtcdConfig(endpoints=endpoints, **options)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(key: bytes) -> bytes:
    """The range end that covers every key starting with `key` (etcd's convention)."""
    ending = bytearray(key)
    while ending:
        if ending[-1] < 0xFF:
            ending[-1] += 1
            return bytes(ending)
        ending.pop()
    return b"\0"


class EtcdClient:
    """A small synchronous client of etcd's v3 JSON gateway, with endpoint failover.

    Thread-safe: one lock serialises requests (each request is short, and the store runs in one
    worker thread anyway).
    """

    def __init__(self, config: EtcdConfig) -> None:
        self.config = config
        """Where and how."""
        scheme = "https" if config.ca_path is not None else "http"
        self._urls = [f"{scheme}://{endpoint}" for endpoint in config.endpoints]
        self._preferred = 0
        self._lock = threading.Lock()
        verify: ssl.SSLContext | bool = True
        if config.ca_path is not None:
            verify = ssl.create_default_context(cafile=str(config.ca_path))
            if config.certificate_path is not None:
                verify.load_cert_chain(str(config.certificate_path), str(config.private_key_path))
        self._http = httpx.Client(timeout=config.request_timeout_ms / 1000, verify=verify)
        # Watches hold a response open; they get connections of their own.
        self._watch_http = httpx.Client(timeout=config.request_timeout_ms / 1000, verify=verify)

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()
        self._watch_http.close()

    def watch_once(self, key: str, *, start_revision: int, timeout_s: float) -> bool:
        """Wait until `key` changes at or after `start_revision` (True) or `timeout_s` passes
        without a change (False); EtcdError if the endpoint fails. Not serialised with `call`,
        so a standby can watch while nothing else waits on the lock."""
        url = f"{self._urls[self._preferred]}/v3/watch"
        body = {
            "create_request": {"key": _b64(key.encode()), "start_revision": str(start_revision)}
        }
        timeout = httpx.Timeout(self.config.request_timeout_ms / 1000, read=timeout_s)
        try:
            with self._watch_http.stream("POST", url, json=body, timeout=timeout) as response:
                for line in response.iter_lines():
                    document = json.loads(line) if line.strip() else {}
                    if "error" in document:
                        raise EtcdError(f"watch: {document['error']}")
                    if document.get("result", {}).get("events"):
                        return True
        except httpx.ReadTimeout:
            return False
        except (httpx.HTTPError, ValueError) as error:
            raise EtcdError(f"watch: {type(error).__name__}: {error}") from error
        return False

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST `body` to `/v3/<path>` on the first endpoint that answers; EtcdError if none."""
        with self._lock:
            failures: list[str] = []
            count = len(self._urls)
            for offset in range(count):
                index = (self._preferred + offset) % count
                url = f"{self._urls[index]}/v3/{path}"
                try:
                    response = self._http.post(url, json=body)
                except httpx.HTTPError as error:
                    failures.append(f"{self.config.endpoints[index]}: {type(error).__name__}")
                    continue
                answer = _answer(response)
                if isinstance(answer, str):
                    failures.append(f"{self.config.endpoints[index]}: {answer}")
                    continue
                self._preferred = index
                return answer
            raise EtcdError("; ".join(failures))

    # -- the few calls the store and the election need -----------------------------------------

    def get(self, key: str, *, revision: int = 0) -> tuple[dict[str, Any] | None, int]:
        """The key's record (value decoded to bytes) or None, and the store's revision."""
        body: dict[str, Any] = {"key": _b64(key.encode())}
        if revision:
            body["revision"] = str(revision)
        answer = self.call("kv/range", body)
        kvs = answer.get("kvs") or []
        return (_record(kvs[0]) if kvs else None), int(answer["header"]["revision"])

    def get_prefix(self, prefix: str, *, revision: int) -> Iterator[dict[str, Any]]:
        """Every record whose key starts with `prefix`, in key order, at `revision`, paginated."""
        start = prefix.encode()
        end = prefix_end(start)
        while True:
            answer = self.call(
                "kv/range",
                {
                    "key": _b64(start),
                    "range_end": _b64(end),
                    "revision": str(revision),
                    "limit": str(_RANGE_PAGE_KEYS),
                },
            )
            kvs = answer.get("kvs") or []
            for kv in kvs:
                yield _record(kv)
            if not answer.get("more") or not kvs:
                return
            start = _unb64(kvs[-1]["key"]) + b"\0"

    def put(self, key: str, value: bytes, *, lease: int = 0) -> None:
        """Write one key (on a lease, if given)."""
        body: dict[str, Any] = {"key": _b64(key.encode()), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        self.call("kv/put", body)

    def delete_prefix(self, prefix: str) -> None:
        """Delete every key that starts with `prefix`."""
        start = prefix.encode()
        self.call("kv/deleterange", {"key": _b64(start), "range_end": _b64(prefix_end(start))})

    def txn(
        self,
        compare: Sequence[dict[str, Any]],
        success: Sequence[dict[str, Any]],
        failure: Sequence[dict[str, Any]] = (),
    ) -> tuple[bool, list[dict[str, Any]], int]:
        """Run one transaction: whether the comparisons held, the responses of its branch, and
        the revision after it (a successful write's own revision)."""
        answer = self.call(
            "kv/txn", {"compare": list(compare), "success": list(success), "failure": list(failure)}
        )
        revision = int(answer["header"]["revision"])
        return bool(answer.get("succeeded")), list(answer.get("responses") or []), revision

    def grant(self, ttl_s: int) -> int:
        """A new lease of `ttl_s` seconds; its id."""
        return int(self.call("lease/grant", {"TTL": str(ttl_s)})["ID"])

    def keepalive(self, lease: int) -> int:
        """Renew a lease; its remaining TTL in seconds (0 or less: the lease is gone)."""
        answer = self.call("lease/keepalive", {"ID": str(lease)})
        result = answer.get("result", answer)
        return int(result.get("TTL", 0))

    def revoke(self, lease: int) -> None:
        """End a lease now; the keys on it are deleted."""
        self.call("lease/revoke", {"ID": str(lease)})


def _answer(response: httpx.Response) -> dict[str, Any] | str:
    """The JSON answer, or why this endpoint could not serve it (worth trying another)."""
    try:
        document = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if response.status_code != 200 or "error" in document:
        return f"HTTP {response.status_code} {document.get('error') or document.get('message')}"
    assert isinstance(document, dict)
    return document


def _record(kv: dict[str, Any]) -> dict[str, Any]:
    return {
        "key": _unb64(kv["key"]).decode(),
        "value": _unb64(kv.get("value", "")),
        "mod_revision": int(kv.get("mod_revision", 0)),
        "create_revision": int(kv.get("create_revision", 0)),
        "lease": int(kv.get("lease", 0)),
    }


# -- operations and comparisons of transactions --------------------------------------------------


def op_put(key: str, value: bytes, *, lease: int = 0) -> dict[str, Any]:
    """A put inside a transaction."""
    body: dict[str, Any] = {"key": _b64(key.encode()), "value": _b64(value)}
    if lease:
        body["lease"] = str(lease)
    return {"request_put": body}


def op_get(key: str) -> dict[str, Any]:
    """A read inside a transaction."""
    return {"request_range": {"key": _b64(key.encode())}}


def op_delete_range(start: str, end: str) -> dict[str, Any]:
    """A delete of keys in [start, end) inside a transaction."""
    return {"request_delete_range": {"key": _b64(start.encode()), "range_end": _b64(end.encode())}}


def op_delete(key: str) -> dict[str, Any]:
    """A delete of one key inside a transaction."""
    return {"request_delete_range": {"key": _b64(key.encode())}}


def compare_mod_revision(key: str, revision: int) -> dict[str, Any]:
    """Holds when the key was last written at `revision` (0: the key does not exist)."""
    return {
        "key": _b64(key.encode()),
        "target": "MOD",
        "result": "EQUAL",
        "mod_revision": str(revision),
    }


def compare_create_revision(key: str, revision: int) -> dict[str, Any]:
    """Holds when the key was created at `revision` (0: the key does not exist)."""
    return {
        "key": _b64(key.encode()),
        "target": "CREATE",
        "result": "EQUAL",
        "create_revision": str(revision),
    }


def compare_value(key: str, value: bytes) -> dict[str, Any]:
    """Holds when the key exists and holds `value`."""
    return {"key": _b64(key.encode()), "target": "VALUE", "result": "EQUAL", "value": _b64(value)}


def range_records(response: dict[str, Any]) -> list[dict[str, Any]]:
    """The records a transaction's range operation returned."""
    found = response.get("response_range", {}).get("kvs") or []
    return [_record(kv) for kv in found]


# -- the store ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Head:
    """What the head key says, and the revision it was written at."""

    version: int = 0
    snapshot_version: int = 0
    snapshot_id: str = ""
    snapshot_chunks: int = 0
    mod_revision: int = 0

    def encode(self) -> bytes:
        document = dataclasses.asdict(self)
        del document["mod_revision"]
        return json.dumps(document, sort_keys=True).encode()

    @staticmethod
    def decode(record: dict[str, Any] | None) -> _Head:
        """The head a record holds; ValueError, KeyError or TypeError if it is not one."""
        if record is None:
            return _Head()
        document = json.loads(record["value"])
        head = _Head(**document, mod_revision=record["mod_revision"])
        assert 0 <= head.snapshot_version <= head.version, head
        return head


class _DeposedError(Exception):
    """The fence failed: another manager holds the leader key."""


class EtcdStore:
    """The shard map's snapshots and deltas in etcd (see the module docstring)."""

    def __init__(
        self,
        *,
        etcd: EtcdConfig | str,
        config: StoreConfig | None = None,
        leader_value: bytes | None = None,
        on_deposed: Callable[[], None] | None = None,
        client: EtcdClient | None = None,
    ) -> None:
        """`etcd` is an EtcdConfig or an `etcd://` URL; `leader_value` fences every write on the
        leader key holding exactly it (None: no fence), and `on_deposed` is called (from the
        calling thread) when a write finds that it no longer does."""
        self.etcd = parse_etcd_url(etcd) if isinstance(etcd, str) else etcd
        """The cluster."""
        self._config = config or StoreConfig()
        self._client = client if client is not None else EtcdClient(self.etcd)
        self._owns_client = client is None
        self._leader_value = leader_value
        self._on_deposed = on_deposed
        self._head: _Head | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.deposed = False
        """True once a write found another manager's value on the leader key."""
        prefix = self.etcd.prefix
        self._head_key = f"{prefix}/head"
        self._delta_prefix = f"{prefix}/delta/"
        self._blob_prefix = f"{prefix}/blob/"
        self._snapshot_prefix = f"{prefix}/snapshot/"

    def execute(self, request: StoreRequest) -> StoreResult:
        with self._lock:
            assert not self._closed, "store used after close"
            try:
                match request:
                    case MapLoadRequested():
                        return self._load(request)
                    case DeltaCommitRequested():
                        return self._commit(request)
                    case SnapshotSaveRequested():
                        return self._save(request)
            except _DeposedError as error:
                self.deposed = True
                if self._on_deposed is not None:
                    self._on_deposed()
                return StoreFailed(request_id=request.request_id, reason=f"deposed: {error}")
            except (EtcdError, ValueError, KeyError, TypeError) as error:
                self._head = None
                return StoreFailed(request_id=request.request_id, reason=f"etcd: {error}")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._owns_client:
                self._client.close()

    def _delta_key(self, version: int) -> str:
        return f"{self._delta_prefix}{version:0{_VERSION_DIGITS}d}"

    def _read_head(self) -> tuple[_Head, int]:
        record, revision = self._client.get(self._head_key)
        head = _Head.decode(record)
        self._head = head
        return head, revision

    def _current_head(self) -> _Head:
        return self._head if self._head is not None else self._read_head()[0]

    # -- load ---------------------------------------------------------------------------------

    def _load(self, request: MapLoadRequested) -> StoreResult:
        head, revision = self._read_head()
        snapshot = None
        if head.snapshot_chunks:
            chunks = list(
                self._client.get_prefix(
                    f"{self._snapshot_prefix}{head.snapshot_id}/", revision=revision
                )
            )
            assert len(chunks) == head.snapshot_chunks, "snapshot chunks missing"
            snapshot = b"".join(chunk["value"] for chunk in chunks)
        deltas = list(self._client.get_prefix(self._delta_prefix, revision=revision))
        versions = [int(record["key"][len(self._delta_prefix) :]) for record in deltas]
        expected = list(range(head.snapshot_version + 1, head.version + 1))
        assert versions == expected, "delta log has a gap"
        return MapLoaded(
            request_id=request.request_id,
            version=head.version,
            snapshot_version=head.snapshot_version,
            snapshot=snapshot,
            deltas=tuple(self._delta_body(record["value"], revision) for record in deltas),
        )

    def _delta_body(self, value: bytes, revision: int) -> bytes:
        """The encoded delta a delta key's value holds or names."""
        if value[:1] == _INLINE:
            return value[1:]
        if value[:1] != _CHUNKED:
            raise ValueError(f"a delta value starts with {value[:1]!r}")
        pointer = json.loads(value[1:])
        chunks = list(self._client.get_prefix(pointer["blob"], revision=revision))
        assert len(chunks) == pointer["chunks"], "delta chunks missing"
        return b"".join(chunk["value"] for chunk in chunks)

    def _put_chunks(self, prefix: str, body: bytes) -> int:
        """Write `body` under `prefix` in chunks of at most value_bytes_max; how many."""
        size = self.etcd.value_bytes_max
        chunks = [body[start : start + size] for start in range(0, len(body), size)] or [b""]
        if len(chunks) > self.etcd.snapshot_chunks_max:
            raise EtcdError(f"{len(chunks)} chunks are above snapshot_chunks_max")
        for number, chunk in enumerate(chunks):
            self._client.put(f"{prefix}{number:06d}", chunk)
        return len(chunks)

    # -- writes -------------------------------------------------------------------------------

    def _fence(self) -> list[dict[str, Any]]:
        if self._leader_value is None:
            return []
        return [compare_value(self.etcd.leader_key, self._leader_value)]

    def _write(self, head: _Head, new_head: _Head, others: list[dict[str, Any]]) -> _Head | None:
        """Replace `head` by `new_head` (and run `others`) in one fenced compare-and-swap; None
        if it committed, else the head found instead."""
        compare = [compare_mod_revision(self._head_key, head.mod_revision), *self._fence()]
        success = [op_put(self._head_key, new_head.encode()), *others]
        failure = [op_get(self._head_key), op_get(self.etcd.leader_key)]
        succeeded, responses, revision = self._client.txn(compare, success, failure)
        if succeeded:
            self._head = dataclasses.replace(new_head, mod_revision=revision)
            return None
        heads, leaders = range_records(responses[0]), range_records(responses[1])
        if self._leader_value is not None:
            holder = leaders[0]["value"] if leaders else b""
            if holder != self._leader_value:
                raise _DeposedError(f"the leader key holds {holder[:200]!r}")
        current = _Head.decode(heads[0] if heads else None)
        self._head = current
        return current

    def _commit(self, request: DeltaCommitRequested) -> StoreResult:
        head = self._current_head()
        for _ in range(_WRITE_ATTEMPTS_MAX):
            rejected = check_commit(
                request,
                current_version=head.version,
                deltas_since_snapshot=head.version - head.snapshot_version,
                config=self._config,
            )
            if rejected is not None:
                return rejected
            version = head.version + 1
            new_head = dataclasses.replace(head, version=version)
            staged = None
            value = _INLINE + request.delta
            if len(value) > self.etcd.value_bytes_max:
                # Too large for one value: the chunks first, under an id nobody reads yet.
                staged = f"{self._blob_prefix}{version:0{_VERSION_DIGITS}d}-{secrets.token_hex(4)}/"
                chunks = self._put_chunks(staged, request.delta)
                value = _CHUNKED + json.dumps({"blob": staged, "chunks": chunks}).encode()
            try:
                current = self._write(head, new_head, [op_put(self._delta_key(version), value)])
            except BaseException:
                if staged is not None:
                    self._client.delete_prefix(staged)
                raise
            if current is None:
                return DeltaCommitted(request_id=request.request_id, version=version)
            if staged is not None:
                self._client.delete_prefix(staged)
            head = current
        return StoreFailed(request_id=request.request_id, reason="etcd: the head kept moving")

    def _save(self, request: SnapshotSaveRequested) -> StoreResult:
        head = self._current_head()
        for _ in range(_WRITE_ATTEMPTS_MAX):
            rejected = check_snapshot(
                request,
                current_version=head.version,
                snapshot_version=head.snapshot_version,
                config=self._config,
            )
            if rejected is not None:
                return rejected
            current = self._save_on(head, request)
            if current is None:
                return SnapshotSaved(request_id=request.request_id, version=request.version)
            head = current
        return StoreFailed(request_id=request.request_id, reason="etcd: the head kept moving")

    def _save_on(self, head: _Head, request: SnapshotSaveRequested) -> _Head | None:
        snapshot_id = f"{request.version:0{_VERSION_DIGITS}d}-{secrets.token_hex(4)}"
        staged = f"{self._snapshot_prefix}{snapshot_id}/"
        # The chunks go first, under a new id nobody reads until the head names it.
        try:
            chunks = self._put_chunks(staged, request.snapshot)
        except BaseException:
            self._client.delete_prefix(staged)
            raise
        new_head = dataclasses.replace(
            head,
            snapshot_version=request.version,
            snapshot_id=snapshot_id,
            snapshot_chunks=chunks,
        )
        covered = f"{request.version + 1:0{_VERSION_DIGITS}d}"
        others = [
            op_delete_range(self._delta_prefix, f"{self._delta_prefix}{covered}"),
            op_delete_range(self._blob_prefix, f"{self._blob_prefix}{covered}"),
        ]
        if head.snapshot_id:
            old = f"{self._snapshot_prefix}{head.snapshot_id}/"
            others.append(op_delete_range(old, prefix_end(old.encode()).decode()))
        try:
            current = self._write(head, new_head, others)
        except BaseException:
            self._client.delete_prefix(staged)
            raise
        if current is not None:
            self._client.delete_prefix(staged)
        return current
