"""The study's report: a Markdown file of tables and four PNG plots (matplotlib, Agg)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from forehand.sim.study._config import FaultKind, Policy
from forehand.sim.study._run import NO_FAULT, PolicyResult
from forehand.sim.study._study import StudyResult

__all__ = ["REPORT_FILES", "Targets", "targets", "write_report"]

REPORT_FILES = (
    "study.md",
    "study.json",
    "disruptions.png",
    "lead_times.png",
    "handoff_rate.png",
    "scaling.png",
)
"""What `write_report` writes into its folder."""
GIB = 1 << 30
MOVE_CAUSES = (*(kind.label for kind in FaultKind), NO_FAULT)
"""The causes `PolicyResult.handoff_moves_by_cause` uses, in report order."""


def per_thousand_hours(result: PolicyResult) -> float:
    """Disrupted sessions per 1,000 session-hours."""
    return 1000.0 * result.disruptions / result.session_hours if result.session_hours else 0.0


def ping_pong_rate(result: PolicyResult) -> float:
    """Ping-pongs over primary moves."""
    return result.ping_pongs / result.part_moves if result.part_moves else 0.0


def per_100_hours(count: float, result: PolicyResult) -> float:
    """`count` per 100 of `result`'s session-hours."""
    return 100.0 * count / result.session_hours if result.session_hours else 0.0


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


class Targets:
    """The issue's targets, measured."""

    def __init__(self, study: StudyResult) -> None:
        results = study.results
        reactive = results.get(Policy.REACTIVE)
        predictive = results.get(Policy.PREDICTIVE)
        self.reduction: float | None = None
        self.extra_handoffs_per_100h: float | None = None
        self.part_moves_added_per_100h: float | None = None
        """Context, not a target: every primary part move (handoffs, failovers, readmissions,
        rebalancing), predictive minus reactive, per 100 predictive session-hours."""
        self.handoff_moves_by_cause_per_100h: dict[str, float] | None = None
        """Context, not a target: the predictive policy's handoff part moves by the fault on
        the source when the move was decided (`NO_FAULT`: unneeded), per 100 session-hours."""
        self._moves: list[tuple[Policy, PolicyResult]] = [
            (policy, result)
            for policy, result in results.items()
            if policy in (Policy.REACTIVE, Policy.PREDICTIVE)
        ]
        if reactive is not None and predictive is not None:
            base = per_thousand_hours(reactive)
            if base:
                self.reduction = 1.0 - per_thousand_hours(predictive) / base
            extra = predictive.handoff_part_moves - reactive.handoff_part_moves
            self.extra_handoffs_per_100h = per_100_hours(extra, predictive)
            added = predictive.part_moves - reactive.part_moves
            self.part_moves_added_per_100h = per_100_hours(added, predictive)
        if predictive is not None:
            self.handoff_moves_by_cause_per_100h = {
                cause: per_100_hours(predictive.handoff_moves_by_cause.get(cause, 0), predictive)
                for cause in MOVE_CAUSES
            }
        self.ping_pong = None if predictive is None else ping_pong_rate(predictive)
        self.map_rss_bytes = max(result.manager_rss_bytes for result in results.values())

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(target, goal, measured, met) rows."""

        def verdict(ok: bool | None) -> str:
            return "n/a" if ok is None else ("yes" if ok else "NO")

        rows = []
        if self.reduction is not None:
            rows.append(
                (
                    "disrupted sessions, predictive vs reactive",
                    ">= 50% fewer",
                    f"{100 * self.reduction:.1f}% fewer",
                    verdict(self.reduction >= 0.5),
                )
            )
        if self.ping_pong is not None:
            rows.append(
                (
                    "ping-pong rate (predictive)",
                    "<= 5%",
                    f"{100 * self.ping_pong:.2f}%",
                    verdict(self.ping_pong <= 0.05),
                )
            )
        if self.extra_handoffs_per_100h is not None:
            rows.append(
                (
                    "extra handoffs per 100 session-hours",
                    "<= 1",
                    f"{self.extra_handoffs_per_100h:.3f}",
                    verdict(self.extra_handoffs_per_100h <= 1.0),
                )
            )
        rows.append(
            (
                "manager memory for the map (RSS gained loading it)",
                "< 1 GiB at 1,000,000 sessions",
                f"{self.map_rss_bytes / GIB:.3f} GiB",
                "n/a",
            )
        )
        return rows

    def context_rows(self) -> list[tuple[str, str]]:
        """(measure, measured) rows reported beside the targets as context; no target is
        judged on them (the extra-handoffs target stays on handoff part moves alone)."""
        rows = []
        if self.part_moves_added_per_100h is not None:
            rows.append(
                (
                    "part moves added by prediction (all primary moves: handoffs, failovers, "
                    "other; predictive - reactive) per 100 session-hours",
                    f"{self.part_moves_added_per_100h:.3f}",
                )
            )
        if self.handoff_moves_by_cause_per_100h is not None:
            by_cause = self.handoff_moves_by_cause_per_100h
            rows.append(
                (
                    "predictive handoff part moves per 100 session-hours by the fault on the "
                    "source when decided (none: unneeded)",
                    ", ".join(f"{cause} {by_cause[cause]:.3f}" for cause in MOVE_CAUSES),
                )
            )
        return rows

    def move_rows(self) -> list[tuple[str, ...]]:
        """Per policy (reactive, predictive): primary part moves in the map, of them handoffs,
        failovers and the rest (readmissions, rebalancing), as counts and per 100 session-hours."""
        rows: list[tuple[str, ...]] = []
        for policy, result in self._moves:
            other = result.part_moves - result.handoff_part_moves - result.failover_part_moves
            rows.append(
                (
                    policy.value,
                    *(
                        f"{count:,} ({per_100_hours(count, result):.3f})"
                        for count in (
                            result.part_moves,
                            result.handoff_part_moves,
                            result.failover_part_moves,
                            other,
                        )
                    ),
                )
            )
        return rows

    def cause_rows(self, study: StudyResult) -> list[tuple[str, ...]]:
        """The predictive policy's handoff part moves by cause: count and per 100
        session-hours."""
        predictive = study.results.get(Policy.PREDICTIVE)
        if predictive is None or self.handoff_moves_by_cause_per_100h is None:
            return []
        by_cause = self.handoff_moves_by_cause_per_100h
        return [
            (
                cause,
                f"{predictive.handoff_moves_by_cause.get(cause, 0):,}",
                f"{by_cause[cause]:.3f}",
            )
            for cause in MOVE_CAUSES
        ]

    def jsonable(self) -> dict[str, object]:
        """The measured targets and the context beside them, for `study.json`."""
        return {
            "disruption_reduction": self.reduction,
            "ping_pong": self.ping_pong,
            "extra_handoffs_per_100h": self.extra_handoffs_per_100h,
            "map_rss_bytes": self.map_rss_bytes,
            "context": {
                "part_moves_added_per_100h": self.part_moves_added_per_100h,
                "predictive_handoff_moves_by_cause_per_100h": (
                    self.handoff_moves_by_cause_per_100h
                ),
            },
        }


def targets(study: StudyResult) -> Targets:
    """The targets measured on `study`."""
    return Targets(study)


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return lines


def _policy_rows(study: StudyResult) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    minutes = study.config.duration_s / 60.0
    for policy, result in study.results.items():
        rows.append(
            (
                policy.value,
                f"{result.session_hours:,.0f}",
                f"{result.disruptions:,}",
                f"{per_thousand_hours(result):.2f}",
                f"{result.sessions_lost:,}",
                f"{result.handoff_part_moves / result.session_hours:.5f}",
                f"{result.failover_part_moves:,}",
                f"{100 * ping_pong_rate(result):.2f}%",
                f"{result.commits / minutes:.1f}",
                f"{result.delta_bytes / study.config.duration_s:,.0f}",
            )
        )
    return rows


def _cost_rows(study: StudyResult) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for policy, result in study.results.items():
        breakdown = ", ".join(f"{k} {v:.1f}" for k, v in result.manager_cpu_breakdown_s.items())
        rows.append(
            (
                policy.value,
                f"{result.manager_cpu_s:.1f}",
                breakdown,
                f"{result.map_load_s:.1f}",
                f"{result.manager_rss_bytes / 2**20:,.0f}",
                f"{result.map_bytes:,}",
                f"{result.map_bytes_end:,}",
                f"{result.wall_s:.0f}",
                f"{result.cpu_s:.0f}",
                f"{result.rss_end_bytes / 2**20:,.0f}",
            )
        )
    return rows


def _markdown(study: StudyResult, command: str) -> str:
    config = study.config
    lines = [
        "# Forehand scale study",
        "",
        f"Command: `{command}`",
        "",
        f"{config.servers:,} servers in {config.zones} zones, {config.sessions:,} sessions of "
        f"{config.parts_per_session} parts, {config.duration_s:,} s simulated in {config.tick_s} s "
        f"ticks, fault mix `{config.mix.name}`, seed {config.seed}. Study wall time "
        f"{study.wall_s:.0f} s (predictor training {study.training_s:.0f} s). Digest "
        f"`{study.digest[:16]}`.",
        "",
        "## Policies",
        "",
        *_table(
            (
                "policy",
                "session-hours",
                "disruptions",
                "per 1,000 session-hours",
                "sessions lost",
                "handoffs per session-hour",
                "failover moves",
                "ping-pong",
                "map commits/min",
                "delta bytes/s",
            ),
            _policy_rows(study),
        ),
        "",
        "## Disruptions by fault type",
        "",
    ]
    kinds = [kind for kind in FaultKind]
    lines.extend(
        _table(
            ("policy", *[kind.label for kind in kinds]),
            [
                (policy.value, *[str(result.disruptions_by_cause.get(k.label, 0)) for k in kinds])
                for policy, result in study.results.items()
            ],
        )
    )
    lines += ["", "## Targets", ""]
    measured = targets(study)
    lines.extend(_table(("target", "goal", "measured", "met"), measured.rows()))
    if measured.context_rows():
        lines += [
            "",
            "Additional context, not targets: the extra-handoffs target above stays judged on "
            "handoff part moves alone. A move the predictor makes can replace one the reactive "
            "policy makes anyway (a flapping link's sessions are failed over by both), so the "
            "first row counts every primary move; the second splits the predictive handoffs by "
            "the fault on their source server when the move was decided (under way, or starting "
            "within the predictor's horizon after the decision; none: no fault, unneeded).",
            "",
        ]
        lines.extend(_table(("context", "measured"), measured.context_rows()))
    if measured.move_rows():
        lines += ["", "Primary part moves (count, per 100 session-hours):", ""]
        lines.extend(
            _table(
                ("policy", "all (map)", "handoffs", "failovers", "other"),
                measured.move_rows(),
            )
        )
    if measured.cause_rows(study):
        lines += ["", "Predictive handoff part moves by cause of the decision:", ""]
        lines.extend(
            _table(
                ("fault on the source", "parts", "per 100 session-hours"),
                measured.cause_rows(study),
            )
        )
    lines += ["", "## Prediction", ""]
    for policy, result in study.results.items():
        if policy is not Policy.PREDICTIVE:
            continue
        leads = result.lead_times_s
        lines.append(
            f"{result.gradual_faults_flagged} of {result.gradual_faults} gradual faults flagged "
            f"before their onset; lead time median {_percentile(leads, 0.5):.0f} s, p10 "
            f"{_percentile(leads, 0.1):.0f} s, p90 {_percentile(leads, 0.9):.0f} s. "
            f"{result.risk_flags} risk decisions acted on, {result.risk_flags_on_faults} of them "
            f"on a server with a fault; {result.predictor_assessments:,} assessments "
            f"({result.predictor_skipped_quiet:,} due heartbeats of quiet servers skipped)."
        )
    lines += ["", "## Manager cost", ""]
    lines.extend(
        _table(
            (
                "policy",
                "manager CPU s",
                "by input (s)",
                "map load s",
                "map RSS MiB",
                "map bytes start",
                "map bytes end",
                "run wall s",
                "run CPU s",
                "RSS end MiB",
            ),
            _cost_rows(study),
        )
    )
    if study.sweep:
        lines += ["", "## Scaling sweep (reactive, costs per simulated hour)", ""]
        lines.extend(
            _table(
                (
                    "servers",
                    "sessions",
                    "manager CPU s/h",
                    "map load s",
                    "map RSS MiB",
                    "map bytes",
                ),
                [
                    (
                        f"{point.servers:,}",
                        f"{point.sessions:,}",
                        f"{point.manager_cpu_s_per_hour:.1f}",
                        f"{point.map_load_s:.1f}",
                        f"{point.manager_rss_bytes / 2**20:,.0f}",
                        f"{point.map_bytes:,}",
                    )
                    for point in study.sweep
                ],
            )
        )
    lines += [
        "",
        "Plots: `disruptions.png`, `lead_times.png`, `handoff_rate.png`, `scaling.png`.",
        "",
    ]
    return "\n".join(lines)


def write_report(study: StudyResult, out: Path, *, command: str) -> list[Path]:
    """Write the Markdown, the JSON and the plots into `out`; the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "study.md", out / "study.json"]
    written[0].write_text(_markdown(study, command), encoding="utf-8")
    written[1].write_text(json.dumps(_jsonable(study), indent=2, sort_keys=True), encoding="utf-8")
    written.append(_plot_disruptions(study, out))
    written.append(_plot_lead_times(study, out))
    written.append(_plot_handoffs(study, out))
    written.append(_plot_scaling(study, out))
    return written


def _jsonable(study: StudyResult) -> dict[str, object]:
    config = asdict(study.config)
    config["policies"] = [policy.value for policy in study.config.policies]
    return {
        "config": config,
        "digest": study.digest,
        "wall_s": study.wall_s,
        "training_s": study.training_s,
        "results": {
            policy.value: {**asdict(result), "policy": policy.value}
            for policy, result in study.results.items()
        },
        "sweep": [asdict(point) for point in study.sweep],
        "targets": targets(study).jsonable(),
    }


def _plot_disruptions(study: StudyResult, out: Path) -> Path:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5))
    kinds = [kind for kind in FaultKind]
    policies = list(study.results)
    width = 0.8 / max(1, len(policies))
    for offset, policy in enumerate(policies):
        result = study.results[policy]
        hours = result.session_hours or 1.0
        values = [1000.0 * result.disruptions_by_cause.get(k.label, 0) / hours for k in kinds]
        axes.bar([i + offset * width for i in range(len(kinds))], values, width, label=policy.value)
    axes.set_xticks([i + width * (len(policies) - 1) / 2 for i in range(len(kinds))])
    axes.set_xticklabels([kind.label for kind in kinds], rotation=15)
    axes.set_ylabel("disrupted sessions per 1,000 session-hours")
    axes.set_title("Disruptions by policy and fault type")
    axes.legend()
    figure.tight_layout()
    path = out / "disruptions.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _plot_lead_times(study: StudyResult, out: Path) -> Path:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    predictive = study.results.get(Policy.PREDICTIVE)
    leads = [] if predictive is None else predictive.lead_times_s
    if leads:
        axes.hist(leads, bins=20)
    else:
        axes.text(0.5, 0.5, "no gradual fault flagged", ha="center", transform=axes.transAxes)
    axes.set_xlabel("lead time: onset minus first risk decision (s)")
    axes.set_ylabel("gradual faults")
    axes.set_title("Lead time of the predictive policy")
    figure.tight_layout()
    path = out / "lead_times.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _plot_handoffs(study: StudyResult, out: Path) -> Path:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4))
    for policy, result in study.results.items():
        axes.plot(
            range(len(result.handoffs_per_minute)), result.handoffs_per_minute, label=policy.value
        )
    axes.set_xlabel("simulated minute")
    axes.set_ylabel("parts handed off per minute")
    axes.set_title("Handoff rate over time")
    axes.legend()
    figure.tight_layout()
    path = out / "handoff_rate.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _plot_scaling(study: StudyResult, out: Path) -> Path:
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    points = [
        (p.servers, p.sessions, p.manager_cpu_s_per_hour, p.manager_rss_bytes) for p in study.sweep
    ]
    if not points:
        config = study.config
        points = [
            (
                config.servers,
                config.sessions,
                r.manager_cpu_s * 3600 / config.duration_s,
                r.manager_rss_bytes,
            )
            for r in study.results.values()
        ]
    for servers in sorted({p[0] for p in points}):
        mine = sorted((p for p in points if p[0] == servers), key=lambda p: p[1])
        left.plot([p[1] for p in mine], [p[2] for p in mine], "o-", label=f"{servers} servers")
        right.plot(
            [p[1] for p in mine], [p[3] / 2**20 for p in mine], "o-", label=f"{servers} servers"
        )
    left.set_xlabel("sessions")
    left.set_ylabel("manager CPU s per simulated hour")
    right.set_xlabel("sessions")
    right.set_ylabel("map RSS (MiB)")
    left.legend()
    figure.suptitle("Manager cost against servers and sessions")
    figure.tight_layout()
    path = out / "scaling.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
