"""The seed corpus: hundreds of seeds of the real cores across every fault mix and planned flow.

Scenario `all` runs the built-in scenarios in turn (seed n runs `ROTATION[n % 9]`), so the corpus
covers each of them with the same number of seeds, a tenth of whose requests are waiting reads.
Every run checks the invariants after every event, liveness after healing and convergence at the
end; a failure prints `SEED=<n>` and the command that replays it.
"""

from __future__ import annotations

import io
import os

import pytest
from rich.console import Console

from forehand.sim import ALL_SCENARIO, ROTATION, Campaign, get_scenario, run_scenario
from forehand.sim._campaign import CampaignResult
from forehand.sim._scenarios import LEAVE_FAULTS_SCENARIO, ONE_WAY_SCENARIO

CORPUS_SEEDS = 40 * len(ROTATION)
"""Seeds in the corpus: 40 of each built-in scenario."""
CORPUS_JOBS = 2
"""Worker processes the corpus runs in, at most one per core, and one under a pytest-xdist
worker (the other workers use the other cores)."""

REACHED = (
    "async-write-lost",
    "client/handoff-followed",
    "client/part-relocated",
    "client/silent-server-asked",
    "client/silent-server-left",
    "client/part-redirected",
    "connection-timeout",
    "manager/drain-finished",
    "manager/failover-completed",
    "manager/handoff-aborted-failed_over",
    "manager/handoff-completed",
    "manager/risk-flagged",
    "manager/server-declared-dead-restarted",
    "manager/server-declared-dead-silence",
    "node-crashed",
    "node-paused",
    "partition-started",
    "retransmission",
    "server/primary-installed-failover",
    "server/primary-installed-handoff",
    "server/snapshot-installed",
    "waiting-read/answered-nothing-yet",
    "waiting-read/answered-version",
    "waiting-read/answered-version-beyond-own-writes",
)
"""Paths the corpus must reach, so that a change that makes it vacuous is noticed."""


@pytest.mark.seed_corpus
# About 215 CPU-seconds: the default 300 s bound leaves too little room on a shared machine.
@pytest.mark.timeout(900)
def test_seed_corpus_passes_every_checker_on_every_seed() -> None:
    """Every seed of every scenario passes all checkers; the corpus reaches the rare paths. The
    seeds run in two worker processes where two cores are and the suite runs in one process
    (each seed's run, and so the outcome, is the same as in one process: `Campaign.run`)."""
    output = io.StringIO()
    campaign = Campaign(
        get_scenario(ALL_SCENARIO),
        console=Console(file=output, width=200, force_terminal=False),
    )
    jobs = 1 if os.environ.get("PYTEST_XDIST_WORKER") else min(CORPUS_JOBS, os.cpu_count() or 1)
    outcome = campaign.run(seed_count=CORPUS_SEEDS, jobs=jobs)
    campaign.print_summary(outcome)
    assert outcome.ok, output.getvalue()
    counters = outcome.counters
    for name in ROTATION:
        assert counters[f"scenario/{name}"][1] == CORPUS_SEEDS // len(ROTATION)
    missing = [name for name in REACHED if name not in counters]
    assert missing == [], output.getvalue()


FOUND_SEEDS = {
    ("mixed", 7202560): "a primary replaced while paused had a write it executed afterwards "
    "acknowledged by the promoted primary's answer to its seal "
    "(tests/core/test_seal_of_another_history.py)",
    ("sudden", 7600466): "a part moved implicitly twice in a row (its primary pushed off by "
    "a failover's promotions, then on to the restarted dead server) reached a primary that "
    "held nothing while no holder would seal it: it stayed unserved to the end "
    "(tests/core/test_server_failover.py)",
    ("sudden", 9200900): "a handoff's target, paused and declared dead, took the part over "
    "with the seal queued for it once resumed and executed a write the source had forwarded; "
    "the source, put back as primary by the failover, relayed its answer "
    "(tests/core/test_forwarded_answer_of_a_replaced_history.py)",
    ("mixed", 9500899): "a one-way partition lost the map versions the manager sent a "
    "server whose heartbeats still arrived; nothing sent them again, and it ended two versions "
    "behind (tests/core/test_manager.py)",
    ("mixed", 9502933): "a primary paused past its failover executed, once resumed, a "
    "request that had reached it late at a position the new history had already written; the "
    "checker counted it as a second execution on the surviving history "
    "(tests/sim/test_checkers.py)",
    ("sudden", 16201118): "the simulated network dropped, with no notice, a client's HELLO "
    "to its manager sent right after it handled a reset of that connection while the manager's "
    "notice was still due: the client waited for a WELCOME for ever (tests/sim/test_network.py)",
    ("crash-replicated", 16600984): "an automatic rebalance's last handoff committed a map version "
    "0.4 ms before the run ended, which no server had heard of yet; the convergence checker "
    "now lets servers lag a version committed within its allowance of the end "
    "(tests/sim/test_checkers.py)",
    ("mixed", 16900996): "a primary cut off from the manager learned at its readmission "
    "of the failover that replaced it, took the map for a move and ran a handoff with its stale "
    "log; a later handoff to it took that copy up as primary and lost the promoted replica's "
    "acknowledged writes (tests/core/test_server_failover.py)",
    ("sudden", 17800769): "a server that joined late got the map of its join whole; the "
    "join had moved a live primary onto it, which it could not tell from a new part, so it "
    "installed the part empty and lost the old primary's acknowledged write "
    "(tests/core/test_manager_cluster.py)",
    ("leave-faults", 745): "a server leaving on SIGTERM handed a part to a paused server, "
    "which was declared dead; the part went elsewhere, and the paused server, resumed, ran a "
    "write the source had forwarded to it, whose answer the source relayed "
    "(tests/core/test_forwarded_answer_of_a_replaced_history.py)",
    ("partition-mid-handoff", 990168): "after a partition healed, a replica's answers to the "
    "probes queued during it each restarted the stream, and the resends kept it from ever "
    "catching up (tests/core/test_replication_backlog.py)",
}
"""Seeds beyond the corpus that a longer campaign once failed, by scenario, with what failed.
Those found by campaigns of `all` are listed under the scenario of the rotation they ran: `all`
makes waiting reads since, which changes every run, while a scenario run alone makes none and
replays them as they failed."""


@pytest.mark.parametrize(("scenario", "seed"), sorted(FOUND_SEEDS))
def test_seeds_that_once_failed_pass(scenario: str, seed: int) -> None:
    """Each seed a longer campaign once failed passes every checker today."""
    result = run_scenario(get_scenario(scenario), seed)
    assert result.failure is None, (FOUND_SEEDS[scenario, seed], result.failure)


ONE_WAY_SEEDS = 12
"""Seeds of `drain-one-way` the suite runs (campaigns name the scenario for more)."""


def test_a_drain_under_a_one_way_partition_passes_every_checker() -> None:
    """A server drained while the manager's messages to it are lost: its handoffs fall back to
    failovers and it catches up in a burst once the cut heals. Every checker holds on every
    seed, and the scenario does reach the failover fallback and the cut."""
    outcome, output = _campaign(ONE_WAY_SCENARIO, ONE_WAY_SEEDS)
    assert outcome.ok, output
    counters = outcome.counters
    for name in ("partition-started", "manager/handoff-aborted-failed_over"):
        assert counters[name][1] >= ONE_WAY_SEEDS // 2, output


def _campaign(scenario: str, seeds: int) -> tuple[CampaignResult, str]:
    """Run `seeds` seeds of `scenario`; the outcome and the printed summary."""
    output = io.StringIO()
    campaign = Campaign(
        get_scenario(scenario), console=Console(file=output, width=200, force_terminal=False)
    )
    outcome = campaign.run(seed_count=seeds)
    campaign.print_summary(outcome)
    return outcome, output.getvalue()


LEAVE_FAULTS_SEEDS = 12
"""Seeds of `leave-faults` the suite runs (300 ran from 19,907,400 when it was added: none
failed)."""


def test_a_server_leaving_among_faults_passes_every_checker() -> None:
    """Every kind of fault, and a server stopping the planned way (drained at its own request,
    it exits when told it holds nothing) at a drawn time among them: every checker holds on
    every seed, and the leaves do finish."""
    outcome, output = _campaign(LEAVE_FAULTS_SCENARIO, LEAVE_FAULTS_SEEDS)
    assert outcome.ok, output
    assert outcome.counters["manager/drain-finished"][1] >= LEAVE_FAULTS_SEEDS // 2


def test_a_failover_kept_primary_learns_its_map_from_the_peer_that_fenced_it() -> None:
    """Seed 17,600,251 of `drain-one-way`: the failover of the cut-off server's drain keeps it
    primary, but the manager's map saying so cannot reach it. Fenced by a replica's refusal, it
    asks that replica for the map and settles its parts from it, so no request fails (before,
    its parts refused every request until the cut healed: 8 timed out and 3 found no placement,
    after 420 TRY_AGAINs from it). The peer also sends it the manager's next deltas as they
    come (`map-sent-to-follower`): with other drain targets, the failover's map was not
    committed yet when it asked, and waiting for its next ask a write outlived its client's
    deadline."""
    result = run_scenario(get_scenario(ONE_WAY_SCENARIO), 17_600_251)
    assert result.failure is None
    counters = result.counters
    assert counters.get("server/map-learned-from-peer", 0) >= 1
    assert counters.get("server/map-sent-to-follower", 0) >= 1
    failed = {name: n for name, n in counters.items() if name.startswith("client/request-failed")}
    assert failed == {}
    assert counters.get("client/try-again-primary-behind", 0) < 100


@pytest.mark.parametrize("seed", [232, 388])
def test_a_server_dead_while_it_left_is_not_readmitted_after_its_exit(seed: int) -> None:
    """`leave-faults` seeds 232 and 388: the leaving server is cut off past the failure timeout
    and failed over; its late leaving heartbeats tell it to stop, and the process that exits is
    not readmitted. Before, they readmitted it, the gone process joined the map as ACTIVE, and
    its silence was failed over a second time."""
    result = run_scenario(get_scenario(LEAVE_FAULTS_SCENARIO), seed)
    assert result.failure is None
    counters = result.counters
    assert counters.get("manager/server-declared-dead-silence", 0) == 1
    assert counters.get("manager/failover-started", 0) == 1
