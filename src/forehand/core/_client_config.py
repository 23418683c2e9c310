"""`ClientConfig`: every bound and timeout of the client core, named with its unit."""

from __future__ import annotations

import random
from dataclasses import dataclass, fields

from forehand.errors import ConfigError
from forehand.wire import DEFAULT_CONFIG

__all__ = ["ClientConfig"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    """How a `ClientCore` behaves; frozen, validated on construction."""

    node_id: str = "client"
    """This client's node name, as drivers route it."""
    manager_node_id: str = "manager"
    """The node the client opens sessions at and asks for placements (MAP_REQUEST)."""
    sessions_max: int = 1024
    """Bound on sessions the client holds at once; `open_session` beyond it is refused."""
    inflight_requests_max: int = 1024
    """Bound on requests (and session opens) awaiting an answer; `call` beyond it is refused."""
    connections_max: int = 256
    """Bound on pooled server connections (CONNECTING, READY or DRAINING)."""
    connection_queue_frames_max: int = 4096
    """Bound on frames queued on a connection that waits for WELCOME."""
    hello_credentials_max: int = DEFAULT_CONFIG.credentials_max
    """Most session credentials one HELLO or MAP_REQUEST presents: HELLO to a server, the
    sessions with a part on it; HELLO to the manager, every session (those with a part being
    moved or located first); MAP_REQUEST, the sessions being located, in turns when more are."""
    request_timeout_ms: int = 10_000
    """A request without a final answer this long after `call` fails with RequestFailed."""
    wait_budget_margin_ms: int = 500
    """Kept back from what is left of a call's own timeout (`call(..., timeout_ms=)`) when its
    REQUEST tells the server how long the client can still wait (the wait budget, PROTOCOL.md
    5.6): time for the answer to come back before the deadline."""
    retry_attempts_max: int = 8
    """Bound on sends of one request, and on MAP_REQUEST rounds of one relocation no request
    waits for (a part with requests waiting is located until their deadline). A TRY_AGAIN from
    the part's primary stamped with a map older than the client's for the part is not counted:
    that primary has not heard of its placement yet, and `request_timeout_ms` bounds the wait."""
    retry_backoff_ms: int = 50
    """First delay before a retry; it doubles per attempt up to `retry_backoff_max_ms`."""
    retry_backoff_max_ms: int = 2_000
    """Cap on the retry delay."""
    retry_jitter_ratio: float = 0.5
    """Each retry delay is scaled by a factor drawn from [1 - ratio, 1 + ratio]."""
    map_request_timeout_ms: int = 3_000
    """A MAP_REQUEST unanswered this long is retried (with backoff). Above the manager's
    `map_request_hold_ms` (1,500 by default): a round that has no news while the server the
    client lost is being failed over is held that long (a lost connection to the manager ends
    the round at once)."""
    handoff_deadline_ms_max: int = 10_000
    """Cap on a HANDOFF's deadline, so a server cannot hold the client's parts for longer."""
    resume_timeout_ms: int = 2_000
    """Time one handoff target has to answer RESUME before the client tries the next one."""
    credential_renew_interval_ms: int = 43_200_000
    """How often the client renews each session's credential: a RESUME with it to the primary
    of one of the session's parts, answered by RESUME_OK with a fresh one. Credentials expire
    (the manager's and servers' `credential_lifetime_ms`, 24 hours), and a session outlives any
    one of them. Servers and the manager state that lifetime in SETTINGS, and the client renews
    at half of it (at most once a second) when that comes first, so this only needs lowering to
    renew more often than that (a renewal that finds no part placed, is refused or gets no fresh
    credential tries again after an eighth of the interval)."""
    ping_interval_ms: int = 1_000
    """Period of PING on each READY connection."""
    pings_outstanding_max: int = 4
    """Bound on unanswered PINGs remembered per connection (older ones are forgotten)."""
    silent_locate_pings: int | None = 1
    """When this many PINGs to a part's primary are unanswered while requests wait there, the
    client asks the manager (MAP_REQUEST, presenting those sessions) where their parts live now,
    keeping the connection: a server that stopped without closing its sockets (paused, frozen,
    cut off) and that the manager has failed over is left at the answer, not at the driver's
    silence bound (five ping intervals). It asks again at twice and at four times as many, once
    each, as far as `pings_outstanding_max` (the most it counts); an answer naming the same
    server changes nothing, and a PONG ends the silence. None: never."""
    call_servers_lost_max: int = 2
    """The most servers one call may be in flight on that are lost while it waits there (their
    connection closed, or their PINGs unanswered until the manager placed the part elsewhere):
    past the first it is sent on to the part's next primary, as a crash's failover wants; once
    this many were lost, it fails (`RequestFailedWhy.SERVERS_LOST`) instead of going to another.
    A handler that blocks the event loop past the manager's failure timeout gets its server
    declared dead, and the call, sent on to the next primary, blocks that one too: without this
    bound one such call failed the part over from server to server until its deadline (59
    failovers in 60 s on a cluster of five). With 2, it takes down two servers at most, and a
    part with two replicas keeps a copy."""
    rtt_samples_max: int = 32
    """Bound on RTT samples kept per server for telemetry."""
    telemetry_samples_max: int = DEFAULT_CONFIG.telemetry_samples_max
    """Most path samples one PING reports."""
    probe_interval_ms: int = 5_000
    """Period of PING on a connection to a server none of the client's parts uses now (a
    potential handoff target, probed so the manager knows the path before it picks one)."""
    probes_per_second_max: int = 20
    """Bound on probe PINGs per second over all such connections; the rest wait their turn."""
    probe_targets_max: int = 8
    """Most potential targets (backups of the client's parts) kept connected for probing."""
    prewarm_probe_targets: bool | None = None
    """Whether the client opens connections to the potential targets of its parts (at most
    `probe_targets_max`, never by evicting another connection) to probe them. None leaves it to
    the runtime: `forehand.connect` turns it on (also in a config the application passes), the
    cores' tests and the simulator leave it off unless they test it."""
    known_servers_max: int = 4096
    """Bound on server endpoints the client remembers (the members HANDOFF may target)."""
    unanswered_ids_max: int = DEFAULT_CONFIG.unanswered_max
    """Most request ids one RESUME lists as unanswered (the rest are re-sent all the same)."""

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.type == "int" and (not isinstance(value, int) or value < 1):
                raise ConfigError(
                    f"ClientConfig.{field.name} must be a positive int, got {value!r}"
                )
        if not self.node_id or not self.manager_node_id:
            raise ConfigError("ClientConfig.node_id and manager_node_id must be non-empty")
        if self.node_id == self.manager_node_id:
            raise ConfigError("ClientConfig.node_id must differ from manager_node_id")
        if not 0.0 <= self.retry_jitter_ratio < 1.0:
            raise ConfigError(
                f"ClientConfig.retry_jitter_ratio must be in [0, 1), got {self.retry_jitter_ratio}"
            )
        if self.retry_backoff_max_ms < self.retry_backoff_ms:
            raise ConfigError("ClientConfig.retry_backoff_max_ms must be >= retry_backoff_ms")
        if self.hello_credentials_max > DEFAULT_CONFIG.credentials_max:
            raise ConfigError(
                "ClientConfig.hello_credentials_max exceeds the wire's credentials_max"
            )
        if self.unanswered_ids_max > DEFAULT_CONFIG.unanswered_max:
            raise ConfigError("ClientConfig.unanswered_ids_max exceeds the wire's unanswered_max")
        silent = self.silent_locate_pings
        if silent is not None and (
            not isinstance(silent, int) or not 1 <= silent <= self.pings_outstanding_max
        ):
            raise ConfigError(
                "ClientConfig.silent_locate_pings must be None (never) or an int from 1 to "
                f"pings_outstanding_max ({self.pings_outstanding_max}), got {silent!r}"
            )
        if self.telemetry_samples_max > DEFAULT_CONFIG.telemetry_samples_max:
            raise ConfigError("ClientConfig.telemetry_samples_max exceeds the wire's bound")

    @classmethod
    def randomized(cls, rng: random.Random, *, node_id: str = "client") -> ClientConfig:
        """A valid configuration drawn from `rng`, for simulations that vary timing and bounds."""
        backoff_ms = rng.choice((10, 25, 50, 100))
        return cls(
            node_id=node_id,
            inflight_requests_max=rng.choice((16, 64, 256, 1024)),
            request_timeout_ms=rng.choice((5_000, 10_000, 30_000)),
            retry_attempts_max=rng.randint(4, 12),
            retry_backoff_ms=backoff_ms,
            retry_backoff_max_ms=backoff_ms * rng.choice((8, 16, 40)),
            retry_jitter_ratio=rng.choice((0.0, 0.25, 0.5)),
            map_request_timeout_ms=rng.choice((250, 500, 1_000, 2_000)),
            handoff_deadline_ms_max=rng.choice((2_000, 5_000, 10_000)),
            resume_timeout_ms=rng.choice((250, 1_000, 2_000)),
            ping_interval_ms=rng.choice((200, 500, 1_000, 5_000)),
            rtt_samples_max=rng.choice((4, 16, 32)),
            credential_renew_interval_ms=rng.choice((1_000, 5_000, 43_200_000)),
        )
