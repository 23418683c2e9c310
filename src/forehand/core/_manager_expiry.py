"""Session expiry: the manager closes a session once no client can bind to it any more.

A client binds a session on a new connection with its credential, and credentials expire
(`credential_lifetime_ms`). The manager issues the first one (SESSION_OPENED); servers issue the
renewals (RESUME_OK) and report each renewed session in their next heartbeat
(`HeartbeatReported.renewed_sessions`). A session none of whose credentials was issued for
`session_expiry_ms` (longer than a credential lives) can be bound by no one: its client is gone,
and without expiry it would stay in the map, on its servers and in their memory for ever.

`SessionExpiry` keeps, per session of the map, when the manager last heard of a credential issued
for it, on the manager's own clock (no server clock is compared). Time is counted in grains of
1/64 of the expiry, and one int object is shared by every session stamped in a grain, so the table
costs a dict entry per session. A sweep walks the sessions in batches of `batch` and returns those
past the expiry; a round starts at most once per grain, so a session is closed between one and
about one and 1/32 expiries after its last credential.

Erring late is safe and erring early is not, so every doubt counts as a renewal: a manager that
starts or takes over stamps every session of the map it loads with the load time, since renewals
sent to the manager before it are lost (a reload of the same manager, after a store failure, keeps
the stamps: it heard every report). Renewals a server reports while the manager does not hear it
are lost with its heartbeats, so the manager closes no session led by a server it does not hear,
and counts a session led by a server heard again as renewed then (`ManagerCore._sweep_expiry`). A
renewal lost otherwise (a connection reset between two heartbeats) is covered by the next one: with
the defaults a client renews every 12 h and the expiry is 48 h.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["SessionExpiry"]

GRAINS_PER_EXPIRY = 64
"""The stamps' resolution: an expiry counts this many grains."""


class SessionExpiry:
    """Per session, the grain of the last credential issued for it; sweeps find the expired."""

    def __init__(self, *, expiry_ms: int, batch: int, step_ms: int) -> None:
        self._expiry_us = expiry_ms * 1000
        self._grain_us = max(1000, self._expiry_us // GRAINS_PER_EXPIRY)
        self._batch = batch
        self._step_us = step_ms * 1000
        self._stamp = -1
        self._stamps: dict[bytes, int] = {}
        self._round: list[bytes] = []
        self._position = 0
        self._round_due_us = 0
        self.closing = False
        """A sweep batch's close is queued or in flight: the next batch waits for it."""
        self.heard_again_us: dict[str, int] = {}
        """When each server last came back from a silence (suspected, or its connection lost),
        as the manager records it: at most the membership's servers."""

    @property
    def enabled(self) -> bool:
        """Whether sessions expire at all (`session_expiry_ms` not 0)."""
        return self._expiry_us > 0

    def __len__(self) -> int:
        return len(self._stamps)

    def _grain(self, now_us: int) -> int:
        stamp = now_us // self._grain_us
        if stamp != self._stamp:
            # One object per grain, shared by every session stamped in it.
            self._stamp = stamp
        return self._stamp

    def track(self, session_id: bytes, *, now_us: int) -> None:
        """A session entered the map with a fresh credential (opened)."""
        if self.enabled:
            self._stamps.setdefault(session_id, self._grain(now_us))

    def renewed(self, session_ids: Iterable[bytes], *, now_us: int) -> None:
        """Credentials were issued for these sessions; ones the map does not hold are ignored."""
        if not self.enabled:
            return
        stamp = self._grain(now_us)
        stamps = self._stamps
        for session_id in session_ids:
            if session_id in stamps:
                stamps[session_id] = stamp

    def overdue(self, *, now_us: int, slack_us: int) -> list[bytes]:
        """The tracked sessions whose last stamp is older than the expiry plus `slack_us` (for
        checks: a sweep that works leaves none for long)."""
        if not self.enabled:
            return []
        oldest = (now_us - self._expiry_us - slack_us) // self._grain_us
        return [session_id for session_id, stamp in self._stamps.items() if stamp < oldest]

    def tracks(self, session_id: bytes) -> bool:
        """Whether the session's expiry is counted (every session of the map, when enabled)."""
        return session_id in self._stamps

    def forget(self, session_id: bytes) -> None:
        """The session left the map."""
        self._stamps.pop(session_id, None)

    def reset(self, session_ids: Iterable[bytes], *, now_us: int) -> None:
        """A map was loaded: its sessions are tracked, and a sweep round starts afresh. A session
        this manager tracks keeps its stamp (a reload after a store failure: this process heard
        every renewal reported meanwhile); any other is stamped now (a manager that starts or
        takes over never heard the renewals reported to the one before)."""
        self._round = []
        self._position = 0
        if not self.enabled:
            self._stamps = {}
            return
        stamp = self._grain(now_us)
        known = self._stamps
        self._stamps = {session_id: known.get(session_id, stamp) for session_id in session_ids}
        self._round_due_us = now_us + self._grain_us

    def due_us(self) -> int | None:
        """When `sweep` has work: the next batch of a round, or the next round."""
        if not self.enabled or not self._stamps:
            return None
        return self._round_due_us

    def sweep(self, *, now_us: int) -> list[bytes]:
        """The next batch's sessions past the expiry. They stay tracked until the map loses them
        (`forget`): the caller closes them, or leaves one for the next round.

        A round walks a list of the session ids taken at its start (8 bytes a session); a
        session closed or added meanwhile is skipped or waits for the next round."""
        if not self.enabled or now_us < self._round_due_us:
            return []
        if self._position >= len(self._round):
            self._round = list(self._stamps)
            self._position = 0
        end = min(self._position + self._batch, len(self._round))
        oldest = (now_us - self._expiry_us) // self._grain_us
        stamps = self._stamps
        expired = []
        for session_id in self._round[self._position : end]:
            stamp = stamps.get(session_id)
            if stamp is not None and stamp < oldest:
                expired.append(session_id)
        self._position = end
        if end >= len(self._round):
            self._round = []
            self._position = 0
            self._round_due_us = now_us + self._grain_us
        else:
            self._round_due_us = now_us + self._step_us
        return expired
