"""The tunable trigger policy and the structured logs (no cluster)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from forehand.core import ManagerConfig
from forehand.core._manager_risk import ThresholdRiskPolicy
from forehand.core.messages import LoadReport
from forehand.errors import ConfigError
from forehand.ops import TunableRiskPolicy, configure_logging


def load(cpu: float) -> LoadReport:
    """A load report with this CPU use."""
    return LoadReport(
        cpu_utilization=cpu,
        queue_depth=0,
        latency_us_p99=0,
        error_ratio=0.0,
        requests_per_second=0.0,
    )


def policy() -> TunableRiskPolicy:
    """The threshold policy behind the tunable wrapper."""
    config = ManagerConfig(node_id="manager", overload_threshold=0.9)
    return TunableRiskPolicy(config, build=lambda c: ThresholdRiskPolicy(config=c))


def test_an_update_changes_the_decisions() -> None:
    """Lowering the threshold makes a load the policy ignored trigger a move; the settings
    read back as set (an int for a float field is taken)."""
    tunable = policy()
    assert tunable.assess(server_id="s1", load=load(0.7), now_us=1) is None
    settings = tunable.update({"overload_threshold": 0.5, "overload_cooldown_ms": 10})
    assert settings["overload_threshold"] == 0.5 and settings["overload_cooldown_ms"] == 10
    decision = tunable.assess(server_id="s1", load=load(0.7), now_us=2)
    assert decision is not None and "0.5" in decision.detail
    assert tunable.update({"overload_threshold": 1})["overload_threshold"] == 1.0


@pytest.mark.parametrize(
    "changes",
    [
        {"no_such_field": 1},
        {"node_id": "other"},
        {"overload_parts_fraction": 3.0},
        {"overload_cooldown_ms": "soon"},
        {"overload_threshold": True},
        {"overload_threshold": 10**400},
        {"overload_cooldown_ms": 2**64},
    ],
)
def test_a_bad_update_changes_nothing(changes: dict[str, object]) -> None:
    """Unknown or unsettable fields, values out of range or of the wrong type raise ConfigError
    and leave the settings and the decisions as they were."""
    tunable = policy()
    before = tunable.settings()
    with pytest.raises(ConfigError):
        tunable.update(changes)
    assert tunable.settings() == before
    assert tunable.assess(server_id="s1", load=load(0.7), now_us=1) is None


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """Put the root logger and structlog back as they were after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quic, access = logging.getLogger("quic").level, logging.getLogger("uvicorn.access").level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.getLogger("quic").setLevel(quic)
        logging.getLogger("uvicorn.access").setLevel(access)
        structlog.reset_defaults()


@pytest.mark.usefixtures("restored_logging")
def test_json_logs_carry_the_event_fields(capsys: pytest.CaptureFixture[str]) -> None:
    """With the json format every line is one JSON object with level, logger, timestamp and
    the record's fields as keys; the console format is one readable line."""
    configure_logging("info", "json")
    logging.getLogger("forehand.events.s1").info(
        "HandoffStarted x=1", extra={"fields": {"core_event": "HandoffStarted", "x": 1}}
    )
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["event"] == "HandoffStarted x=1" and record["level"] == "info"
    assert record["logger"] == "forehand.events.s1" and record["core_event"] == "HandoffStarted"
    assert record["x"] == 1 and record["timestamp"].endswith("Z")
    configure_logging("warning", "console")
    logging.getLogger("forehand.test").warning("readable")
    text = capsys.readouterr().err
    assert "readable" in text and not text.lstrip().startswith("{")
    with pytest.raises(ValueError):
        configure_logging("info", "xml")


SECRET = "-".join(("hunter2", "in", "a", "local"))
"""A value only a local variable holds (built, so no source line a traceback quotes shows it)."""


def _failing_handler(state: dict[str, str]) -> None:
    secret = SECRET.upper().lower()
    raise ValueError(f"handler failed after reading {len(secret)} characters")


@pytest.mark.usefixtures("restored_logging")
@pytest.mark.parametrize("log_format", ["console", "json"])
def test_tracebacks_are_plain_and_show_no_local_variables(
    capsys: pytest.CaptureFixture[str], log_format: str
) -> None:
    """A logged exception carries its traceback (plain text after the console line, the JSON
    record's `exception` key) but never the frames' local variables, which hold a part's state
    and a request's payload (the console renderer printed them all, boxed)."""
    configure_logging("info", log_format)
    state = {"card": SECRET[::-1]}
    try:
        _failing_handler(state)
    except ValueError:
        logging.getLogger("forehand.app").exception("handler failed")
    text = capsys.readouterr().err
    if log_format == "json":
        record = json.loads(text.strip().splitlines()[-1])
        text = record["exception"]
    assert "Traceback (most recent call last)" in text and "in _failing_handler" in text
    assert "ValueError: handler failed" in text
    assert SECRET not in text and SECRET[::-1] not in text
