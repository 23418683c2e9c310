"""Helpers shared by the simulator tests: recorder nodes and scheduled sends."""

from __future__ import annotations

from collections.abc import Iterable

from forehand.core import CoreDriver, NodeId
from forehand.sim import (
    Link,
    NetworkConfig,
    ProcessModel,
    Simulator,
    SimulatorConfig,
    StoreExecutor,
)

from ._cores import Note, RecorderCore


def recorder_sim(
    *node_ids: NodeId,
    seed: int = 1,
    link: Link | None = None,
    connection_timeout_us: int = 1_000_000,
    duration_us: int = 10_000_000,
    process: ProcessModel | None = None,
    executor: StoreExecutor | None = None,
) -> Simulator:
    """A simulator whose nodes are all `RecorderCore`s over one default link."""
    network = NetworkConfig(
        default_link=link if link is not None else Link(),
        connection_timeout_us=connection_timeout_us,
        message_size=lambda message: len(message.padding) if isinstance(message, Note) else 100,
    )
    sim = Simulator(seed=seed, config=SimulatorConfig(duration_us=duration_us), network=network)
    for node_id in node_ids:
        sim.add_node(
            node_id, lambda start: RecorderCore(start.node_id), process=process, executor=executor
        )
    return sim


def recorder(sim: Simulator, node_id: NodeId) -> RecorderCore:
    """The node's current recorder core."""
    core = sim.core(node_id)
    assert isinstance(core, RecorderCore)
    return core


def send_at(
    sim: Simulator,
    source: NodeId,
    target: NodeId,
    numbers: Iterable[int],
    *,
    at_us: int,
    padding: str = "",
) -> None:
    """Make `source` send one `Note` per number to `target`, all at `at_us`."""
    batch = list(numbers)

    def send(core: CoreDriver, now_us: int) -> None:
        assert isinstance(core, RecorderCore)
        for number in batch:
            core.send(target, Note(number=number, padding=padding))

    sim.command(source, send, at_us=at_us, label=f"send {batch[:3]}...")
