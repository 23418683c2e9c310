"""Leader election of highly available managers on an etcd lease.

Any number of `forehand manager --store etcd://...` processes run this loop; at most one of them
is the manager at a time:

1. **Campaign.** A standby reads `<prefix>/leader` every `campaign_interval_ms`. When the key is
   absent, it grants itself a lease of `lease_ttl_s` and creates the key on it in one
   transaction that holds only if the key still does not exist (create revision 0), so of
   several standbys exactly one wins. The key's value names the leader: its candidate id, node
   id, endpoint and a token unique to the term. A standby does not listen: servers and clients
   that try its endpoint are refused and try their next manager endpoint, the leader's.
2. **Lead.** The winner runs a whole manager (listeners, `ManagerCore`, driver) on an
   `EtcdStore` fenced by its leader value: its writes are transactions that hold only while the
   leader key holds exactly that value. The core loads the map from etcd, where the last leader
   left it, and servers that reconnect are taken back (`ManagerCore` restores them from the
   map with a fresh grace period).
3. **Keep the lease.** The leader renews the lease every third of its TTL. Its lease is safe
   until the renewal's send time plus the TTL etcd answered (etcd counts from when it received
   the renewal, which is later); it steps down `step_down_margin_ms` before that, so a leader
   cut off from etcd stops serving before etcd deletes its key and a standby can win.
4. **Step down** when the lease cannot be renewed in time, when etcd answers that the lease is
   gone, or when a store write finds the leader key holds another value (the store's fence):
   the manager stops (its connections close, so servers and clients go to the next endpoint),
   the leader key is deleted if still its own and the lease revoked, and the process campaigns
   again. On SIGTERM it resigns the same way, so a standby takes over at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from forehand.errors import ConfigError
from forehand.runtime.config import ManagerProcessConfig
from forehand.runtime.loop import stop_event
from forehand.stores import Store
from forehand.stores._etcd import (
    EtcdClient,
    EtcdConfig,
    EtcdError,
    EtcdStore,
    compare_create_revision,
    compare_value,
    op_delete,
    op_put,
    parse_etcd_url,
)

__all__ = [
    "Election",
    "ElectionConfig",
    "LeaderRecord",
    "TermRunner",
    "etcd_config",
    "read_leader",
    "run_elected",
]

_log = logging.getLogger("forehand.runtime.leader")

T = TypeVar("T")
TermRunner = Callable[[Store, asyncio.Event], Awaitable[None]]
"""Runs the manager on a fenced store until the event is set (one term of leadership)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ElectionConfig:
    """Timings of the election."""

    lease_ttl_s: int = 5
    """TTL of the leader's lease: how long a dead leader keeps the key."""
    campaign_interval_ms: int = 200
    """How long a standby waits before trying again after etcd failed it."""
    watch_timeout_ms: int = 2_000
    """A standby watches the leader key for its deletion, and reads it again after this long
    without news."""
    step_down_margin_ms: int = 500
    """The leader steps down this long before its lease could expire unrenewed."""
    etcd_call_timeout_ms: int = 1_000
    """Bound on one etcd call of the election (over all endpoints it tries)."""

    def __post_init__(self) -> None:
        if self.lease_ttl_s < 1:
            raise ConfigError("lease_ttl_s must be at least 1")
        for name in ("campaign_interval_ms", "etcd_call_timeout_ms", "watch_timeout_ms"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ElectionConfig.{name} must be positive")
        if not 0 <= self.step_down_margin_ms < self.lease_ttl_s * 1000:
            raise ConfigError("step_down_margin_ms must be below the lease TTL")

    @property
    def keepalive_interval_s(self) -> float:
        """How often the leader renews its lease."""
        return self.lease_ttl_s / 3


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaderRecord:
    """What the leader key says about the leader."""

    candidate_id: str
    """The leading process: node id, endpoint and a random suffix."""
    node_id: str
    """The manager's node id (its certificate's name)."""
    endpoint: str
    """host:port where it serves servers and clients."""
    term: str
    """A token unique to this term of leadership."""
    since_ms: int
    """When it won, wall-clock milliseconds."""

    def encode(self) -> bytes:
        """The leader key's value."""
        return json.dumps(
            {
                "candidate_id": self.candidate_id,
                "node_id": self.node_id,
                "endpoint": self.endpoint,
                "term": self.term,
                "since_ms": self.since_ms,
            },
            sort_keys=True,
        ).encode()

    @staticmethod
    def decode(value: bytes) -> LeaderRecord:
        """A leader key's value read back."""
        document = json.loads(value)
        return LeaderRecord(**{key: document[key] for key in LeaderRecord.__slots__})


def etcd_config(config: ManagerProcessConfig) -> EtcdConfig:
    """The etcd cluster a manager's configuration names, with its TLS files."""
    return parse_etcd_url(
        config.store,
        ca_path=config.etcd_ca,
        certificate_path=config.etcd_certificate,
        private_key_path=config.etcd_private_key,
        value_bytes_max=config.etcd_value_bytes_max,
    )


def read_leader(client: EtcdClient) -> LeaderRecord | None:
    """The current leader, or None when nobody leads."""
    record, _ = client.get(client.config.leader_key)
    return None if record is None else LeaderRecord.decode(record["value"])


class Election:
    """One candidate's campaign for the leader key, and the lease it holds once it leads."""

    def __init__(
        self,
        client: EtcdClient,
        *,
        node_id: str,
        endpoint: str,
        config: ElectionConfig,
    ) -> None:
        self._client = client
        self._key = client.config.leader_key
        self._node_id = node_id
        self._endpoint = endpoint
        self.config = config
        """Timings."""
        self.candidate_id = f"{node_id}@{endpoint}#{secrets.token_hex(3)}"
        """This process among the candidates."""
        self.value: bytes | None = None
        """The leader key's value while this candidate leads."""
        self._lease = 0
        self._lease_safe_until_s = 0.0
        """Monotonic time until which the lease surely holds (renewals push it forward)."""
        # Election calls run here, never behind the store's requests.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="etcd-election"
        )

    def close(self) -> None:
        """Release the worker threads (without waiting for a call stuck on the network)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _call(self, function: Callable[..., T], *arguments: Any) -> T:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, function, *arguments)
        return await asyncio.wait_for(future, self.config.etcd_call_timeout_ms / 1000)

    async def campaign(self, stop: asyncio.Event) -> bool:
        """Wait until this candidate leads (True) or `stop` is set (False)."""
        interval_s = self.config.campaign_interval_ms / 1000
        while not stop.is_set():
            try:
                if await self._try_to_win(stop):
                    return True
            except (EtcdError, TimeoutError) as error:
                _log.info("campaign: etcd unavailable (%s)", str(error) or type(error).__name__)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval_s)
        return False

    async def _try_to_win(self, stop: asyncio.Event) -> bool:
        record, revision = await self._call(self._client.get, self._key)
        if record is not None:
            await self._watch(revision, stop)
            return False
        granted_s = time.monotonic()
        lease = await self._call(self._client.grant, self.config.lease_ttl_s)
        value = LeaderRecord(
            candidate_id=self.candidate_id,
            node_id=self._node_id,
            endpoint=self._endpoint,
            term=secrets.token_hex(8),
            since_ms=time.time_ns() // 1_000_000,
        ).encode()
        try:
            won, _, _ = await self._call(
                self._client.txn,
                [compare_create_revision(self._key, 0)],
                [op_put(self._key, value, lease=lease)],
            )
        except BaseException:
            await self._revoke(lease)
            raise
        if not won:
            await self._revoke(lease)
            return False
        self._lease, self.value = lease, value
        self._lease_safe_until_s = granted_s + self.config.lease_ttl_s
        return True

    async def _watch(self, revision: int, stop: asyncio.Event) -> None:
        """Wait until the leader key changes after `revision`, `stop`, or an interval passes
        (the key is read again then, whatever the watch saw)."""
        interval_s = self.config.campaign_interval_ms / 1000
        loop = asyncio.get_running_loop()
        watch = loop.run_in_executor(
            self._executor,
            functools.partial(
                self._client.watch_once,
                self._key,
                start_revision=revision + 1,
                timeout_s=self.config.watch_timeout_ms / 1000,
            ),
        )
        stopped = loop.create_task(stop.wait())
        try:
            waiting: set[asyncio.Future[Any]] = {watch, stopped}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not watch.done():
            # Stopping: the watch's thread finishes on its own; its outcome no longer matters.
            watch.add_done_callback(_discard_outcome)
            return
        if watch.exception() is not None:
            _log.info("watch of the leader key failed: %s", watch.exception())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)

    async def hold(self) -> str:
        """Keep the lease until it cannot be kept; why it was lost.

        The renewals run in a thread of their own, so a stalled event loop (a long callback, a
        loaded machine) does not starve them; this coroutine only watches the deadline they
        push forward, and returns once it passes or etcd says the lease is gone.
        """
        margin_s = self.config.step_down_margin_ms / 1000
        done = threading.Event()
        lost: list[str] = []
        keeper = threading.Thread(
            target=self._keep, args=(self._lease, done, lost), name="etcd-lease", daemon=True
        )
        keeper.start()
        try:
            while not lost:
                remaining_s = self._lease_safe_until_s - margin_s - time.monotonic()
                if remaining_s <= 0:
                    return "the lease could not be renewed in time"
                await asyncio.sleep(min(remaining_s, 0.05))
            return lost[0]
        finally:
            done.set()

    def _keep(self, lease: int, done: threading.Event, lost: list[str]) -> None:
        """Renew `lease` every third of its TTL until `done`; report a lease etcd says is gone."""
        interval_s = self.config.keepalive_interval_s
        while not done.is_set():
            sent_s = time.monotonic()
            try:
                ttl_s = self._client.keepalive(lease)
            except EtcdError as error:
                _log.warning("lease renewal failed: %s", error)
                done.wait(0.1)
                continue
            if done.is_set():
                return  # The term is over; a later term's deadline is not this lease's.
            if ttl_s <= 0:
                lost.append("etcd says the lease expired")
                return
            self._lease_safe_until_s = max(self._lease_safe_until_s, sent_s + ttl_s)
            done.wait(interval_s)

    async def resign(self) -> None:
        """Delete the leader key if it is still this term's, and revoke the lease."""
        value, lease = self.value, self._lease
        self.value, self._lease = None, 0
        if value is None:
            return
        with contextlib.suppress(EtcdError, TimeoutError):
            await self._call(
                self._client.txn, [compare_value(self._key, value)], [op_delete(self._key)]
            )
        await self._revoke(lease)

    async def _revoke(self, lease: int) -> None:
        with contextlib.suppress(EtcdError, TimeoutError):
            await self._call(self._client.revoke, lease)


def _discard_outcome(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def run_elected(
    config: ManagerProcessConfig,
    *,
    term: TermRunner,
    stop: asyncio.Event | None = None,
    prepare: Callable[[], object] | None = None,
    election_config: ElectionConfig | None = None,
) -> None:
    """Campaign, lead for as long as the lease holds (running `term`), and campaign again,
    until `stop` is set (by default: until SIGTERM or SIGINT).

    `prepare` runs once, in a thread, before the first campaign: whatever a term would do
    slowly the first time (imports of models, say), so that a standby that wins serves at once.
    """
    etcd = etcd_config(config)
    timings = election_config or ElectionConfig(
        lease_ttl_s=config.lease_ttl_s,
        step_down_margin_ms=min(500, config.lease_ttl_s * 200),
    )
    own_stop, remove = stop_event(stop)
    # The HTTP client logs every request at INFO; renewals several times a second are routine.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Election calls give up on an endpoint sooner than store requests: the lease is short.
    client = EtcdClient(dataclasses.replace(etcd, request_timeout_ms=timings.etcd_call_timeout_ms))
    election = Election(client, node_id=config.node_id, endpoint=config.listen, config=timings)
    try:
        if prepare is not None:
            await asyncio.to_thread(prepare)
        _log.info("manager %s standing by for %s", election.candidate_id, etcd.leader_key)
        while await election.campaign(own_stop):
            await _lead(config, etcd, election, term, own_stop)
    finally:
        remove()
        election.close()
        client.close()


async def _lead(
    config: ManagerProcessConfig,
    etcd: EtcdConfig,
    election: Election,
    term: TermRunner,
    stop: asyncio.Event,
) -> None:
    """One term: run the manager until the lease is lost, a write is fenced, or `stop`."""
    loop = asyncio.get_running_loop()
    value = election.value
    assert value is not None
    _log.info("manager %s leads (%s)", election.candidate_id, value.decode())
    term_stop = asyncio.Event()
    why: list[str] = []

    def end(reason: str) -> None:
        if not term_stop.is_set():
            why.append(reason)
            term_stop.set()

    def deposed() -> None:
        loop.call_soon_threadsafe(end, "a store write found another leader")

    store = EtcdStore(etcd=etcd, leader_value=value, on_deposed=deposed)

    def lost(task: asyncio.Task[str]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        end(task.result() if error is None else f"the lease keeper failed: {error!r}")

    holder = loop.create_task(election.hold())
    holder.add_done_callback(lost)
    stopper = loop.create_task(stop.wait())
    stopper.add_done_callback(lambda task: end("stopping"))
    try:
        await term(store, term_stop)
    finally:
        for task in (holder, stopper):
            task.cancel()
        await asyncio.gather(holder, stopper, return_exceptions=True)
        # The manager has stopped serving; say so before the (maybe slow) resignation.
        if config.ready_file is not None:
            config.ready_file.unlink(missing_ok=True)
        await election.resign()
        _log.warning(
            "manager %s steps down: %s",
            election.candidate_id,
            why[0] if why else "the manager stopped",
        )
