"""What the demo shows: the live view with rich, the events, the summary (a table or JSON).

A terminal gets the live view (refreshed from the event loop); anything else
gets a line per notable moment, then the summary table. With ``--json`` nothing
is shown live and the summary is one JSON object.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TextIO, final

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from healkit._demo.pki import CLIENT_CERTIFICATES, TLS_RELOAD_INTERVAL
from healkit._demo.scenes import NOT_INSTALLED, PATH, SERVICE, TIMEOUTS
from healkit._demo.telemetry import DURATION_METRIC
from healkit._demo.traffic import Recent, Tally, failures, percentile, to_ms

if TYPE_CHECKING:
    from healkit._demo import Stopwatch
    from healkit._demo.pki import Pki
    from healkit._demo.scenes import Scene
    from healkit._demo.telemetry import LoadWatch, Observer, Tracing
    from healkit._demo.traffic import Traffic

__all__ = ["Events", "Facts", "View"]

REFRESH_PER_SECOND: Final = 4
LIVE_EVENTS: Final = 8
LABEL_WIDTH: Final = 22
NUMBER_WIDTH: Final = 9
MAX_EVENTS: Final = 200


@final
@dataclass(frozen=True, slots=True)
class _Event:
    """A notable moment: a scene change, the first error of a type, a typed event."""

    at: float
    text: str
    style: str = ""


@final
class Events:
    """The notable moments of the run (the first :data:`MAX_EVENTS`), and the console.

    A terminal gets the live view (:attr:`live`); other output (no terminal, no
    ``--json``) gets each event as a line at once.
    """

    def __init__(self, out: TextIO, stopwatch: Stopwatch, *, as_json: bool) -> None:
        """Keep the events of a run writing to ``out``."""
        self.console = Console(file=out, highlight=False)
        self.live = not as_json and self.console.is_terminal
        """Whether the run is shown live."""
        self.kept: list[_Event] = []
        self._stopwatch = stopwatch
        self._print = not as_json and not self.live

    def say(self, text: str, style: str = "") -> None:
        """Record a notable moment (a :data:`healkit._demo.Say`)."""
        if len(self.kept) >= MAX_EVENTS:
            return
        event = _Event(self._stopwatch.elapsed(), text, style)
        self.kept.append(event)
        if self._print:
            self.console.print(Text(f"[{event.at:6.2f}s] {text}", style=style), soft_wrap=True)


@final
@dataclass(slots=True, kw_only=True)
class Facts:
    """What the run is: its options, the upstreams, the plugins, and how it ended."""

    duration: float
    concurrency: int
    scenes: tuple[Scene, ...]
    descriptions: list[str]
    etcd: tuple[str, ...]
    sections: frozenset[str]
    plugins: list[str] = field(default_factory=list)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    upstream: str = ""
    fallback_upstream: str = ""
    interrupted: bool = False
    elapsed: float = 0.0
    """Seconds the run lasted, once it ended (0 before)."""
    scene_started: list[float] = field(default_factory=list)
    """When each scene played so far started, in seconds since the run's start."""

    @property
    def timeouts(self) -> bool:
        """Whether a plugin (the timeout plugin) takes the demo's short time limits."""
        return "timeout" in self.sections


@final
class View:
    """Renders the run live and writes its summary.

    Args:
        out: where to write.
        as_json: show nothing live; write only the summary, as one JSON object.
        facts: what the run is.
        stopwatch: when the run started.
        traffic: the load generator's counts.
        observer: what the events said.
        tracing: with ``--trace``, the spans and metrics.
        events: the notable moments, and the console (live or not).
        load: the concurrency limit and the upstream's line, sampled.

    """

    def __init__(  # noqa: PLR0913 - keyword-only parts of one run
        self,
        *,
        out: TextIO,
        as_json: bool,
        facts: Facts,
        stopwatch: Stopwatch,
        traffic: Traffic,
        observer: Observer,
        tracing: Tracing | None,
        events: Events,
        load: LoadWatch,
    ) -> None:
        self.out = out
        self.as_json = as_json
        self.facts = facts
        self.pki: Pki | None = None
        """The demo's certificates, once made (with the tls plugin)."""
        self._stopwatch = stopwatch
        self._traffic = traffic
        self._observer = observer
        self._tracing = tracing
        self._events = events
        self._load = load
        self._live: Live | None = None

    # -- the live view ---------------------------------------------------------

    @contextlib.contextmanager
    def live(self) -> Iterator[None]:
        """Show the live view on a terminal while the block runs."""
        if not self._events.live:
            yield
            return
        with Live(
            self._render(),
            console=self._events.console,
            auto_refresh=False,  # refreshed from the event loop: no thread reads the counters
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        ) as live:
            self._live = live
            try:
                yield
            finally:
                self._live = None

    def refresh(self) -> None:
        """Draw the live view again (if shown)."""
        if self._live is not None:
            self._live.update(self._render(), refresh=True)

    def _render(self) -> RenderableType:
        facts = self.facts
        elapsed = facts.elapsed or min(self._stopwatch.elapsed(), facts.duration)
        recent, span = self._traffic.window(self._stopwatch.started)
        body = Table.grid(padding=(0, 4))
        body.add_row(self._rates(recent, span, elapsed), self._outcomes(recent))
        events = Table.grid(padding=(0, 1))
        events.add_column(justify="right", style="dim")
        events.add_column()
        for event in self._events.kept[-LIVE_EVENTS:]:
            events.add_row(f"{event.at:6.2f}s", Text(event.text, style=event.style))
        return Panel(
            Group(
                self._head(elapsed),
                body,
                Panel(events, title="events", title_align="left", box=box.ROUNDED),
            ),
            title="[bold]healkit demo",
            subtitle="Ctrl-C ends early",
        )

    def _head(self, elapsed: float) -> RenderableType:
        facts = self.facts
        head = Table.grid(padding=(0, 2))
        head.add_column(style="bold")
        head.add_column()
        if facts.scenes:
            index = self._traffic.scene
            head.add_row(
                "scene",
                Text.assemble(
                    (f"{index + 1}/{len(facts.scenes)} {facts.scenes[index].name}", "bold cyan"),
                    "  ",
                    facts.descriptions[index],
                ),
            )
            figures = self.figures(index)
            if "hedging" in figures:
                head.add_row("hedging", _hedging_text(figures["hedging"]))
            if "overload" in figures:
                head.add_row("overload", self._overload_now(figures["overload"]))
        progress = Table.grid(padding=(0, 1))
        progress.add_row(
            ProgressBar(total=facts.duration, completed=elapsed, width=30),
            f"{elapsed:5.1f} s / {facts.duration:g} s",
        )
        head.add_row("time", progress)
        head.add_row("upstream", f"{facts.upstream}{PATH}  (service {SERVICE!r})")
        if facts.fallback_upstream:
            head.add_row("fallback", f"{facts.fallback_upstream}{PATH}  (fallback group)")
            head.add_row("traffic now", self._traffic_now())
        head.add_row("plugins", ", ".join(facts.plugins) or "none (core only)")
        return head

    def _overload_now(self, overload: Mapping[str, Any]) -> Text:
        """Render the overload scene's figures, with the limit and the upstream's line now."""
        load = self._load
        now = load.now
        limit = "-" if now is None or now.limit is None else f"{now.limit}"
        in_flight = "-" if now is None else f"{now.in_flight}"
        return Text.assemble(
            f"limit now {limit} (upstream capacity {overload['capacity']}),"
            f" in flight {in_flight}; upstream serving {load.serving}, {load.queued} in line\n",
            _overload_text(overload),
        )

    # -- what the scenes with settings of their own show -------------------------

    def figures(self, index: int) -> dict[str, Any]:
        """Return the measured figures of scene ``index`` that its settings are about.

        A scene with ``hedge`` settings: its p99 and the previous scene's, the
        hedges sent and won. A scene with ``limit`` settings: the limit's
        samples, the upstream's capacity and line, the goodput (calls an
        upstream answered with a 2xx, a second), the p99 of those calls, and
        the refusals (answered degraded). Every count is of the calls made.
        """
        facts, traffic = self.facts, self._traffic
        scene, tally = facts.scenes[index], traffic.by_scene[index]
        settings = scene.settings or {}
        figures: dict[str, Any] = {}
        if "hedge" in settings:
            before = traffic.by_scene[index - 1] if index else None
            figures["hedging"] = {
                "installed": "hedge" in facts.sections,
                "before_scene": facts.scenes[index - 1].name if index else None,
                "p99_before_ms": (
                    None if before is None else to_ms(percentile(before.latencies(), 0.99))
                ),
                "p99_ms": to_ms(percentile(tally.latencies(), 0.99)),
                "hedges_sent": tally.hedges,
                "hedges_won": tally.hedges_won,
            }
        if "limit" in settings:
            seconds = self._scene_seconds(index)
            figures["overload"] = {
                "installed": "limit" in facts.sections,
                "capacity": scene.primary(timeouts=facts.timeouts).capacity,
                "limit": self._load.by_scene[index].as_dict(),
                "goodput_per_s": round(tally.answered_ok / seconds, 1) if seconds else None,
                "answered_p99_ms": to_ms(percentile(tally.answered(), 0.99)),
                "refused": tally.refused,
                "refused_degraded": tally.refused_degraded,
            }
        return figures

    def _scene_seconds(self, index: int) -> float:
        """How long scene ``index`` played (so far), in seconds."""
        starts = self.facts.scene_started
        if index >= len(starts):
            return 0.0
        end = (
            starts[index + 1]
            if index + 1 < len(starts)
            else self.facts.elapsed or self._stopwatch.elapsed()
        )
        return max(end - starts[index], 0.0)

    def _traffic_now(self) -> Text:
        group = self._observer.watch.group
        if group == 0:
            return Text(f"primary {self.facts.upstream}", style="green")
        if group is None:
            return Text("no upstream healthy: degraded responses", style="bold red")
        return Text(f"fallback {self.facts.fallback_upstream}", style="yellow")

    def _rates(self, recent: Sequence[Recent], span: float, elapsed: float) -> Table:
        total = self._traffic.total
        latencies = sorted(call.latency for call in recent)
        overall = total.latencies()
        table = _counter_table("traffic", LABEL_WIDTH - 10)
        table.add_row(
            "requests/s",
            f"{len(recent) / span:,.0f}",
            f"{total.requests / max(elapsed, 1e-9):,.0f}",
        )
        table.add_row("calls", f"{len(recent):,}", f"{total.requests:,}")
        for name, q in (("p50", 0.5), ("p99", 0.99)):
            table.add_row(
                f"latency {name}",
                _fmt_ms(percentile(latencies, q)),
                _fmt_ms(percentile(overall, q)),
            )
        lost = Text(str(total.lost), style="bold red" if total.lost else "green")
        table.add_row("lost", "", lost)
        return table

    def _outcomes(self, recent: Sequence[Recent]) -> Table:
        total = self._traffic.total
        table = _counter_table("outcomes", LABEL_WIDTH)
        labels = Counter(call.label for call in recent)
        statuses = Counter(call.status for call in recent)
        for path, count in sorted(total.by_path.items()):
            table.add_row(Text(f"path {path}", style="green"), f"{labels[path]:,}", f"{count:,}")
        for name, count in sorted(total.errors.items()):
            label = f"error: {name}"
            table.add_row(Text(label, style="red"), f"{labels[label]:,}", f"{count:,}")
        if total.lost:
            table.add_row(Text("LOST", style="bold red"), f"{labels['lost']:,}", f"{total.lost:,}")
        for code, count in sorted(total.statuses.items()):
            style = "green" if code.startswith("2") else "yellow"
            table.add_row(Text(f"HTTP {code}", style=style), f"{statuses[code]:,}", f"{count:,}")
        return table

    # -- the end ---------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Return the summary of the run as JSON-ready values."""
        facts, traffic, observer = self.facts, self._traffic, self._observer
        total = traffic.total.as_dict()
        duration = facts.elapsed or self._stopwatch.elapsed()
        return {
            "requests": total["requests"],
            "lost": total["lost"],
            "responses": sum(traffic.total.by_path.values()),
            "errors": sum(traffic.total.errors.values()),
            "by_path": total["by_path"],
            "errors_by_type": total["errors_by_type"],
            "statuses": total["statuses"],
            "p50_ms": total["p50_ms"],
            "p99_ms": total["p99_ms"],
            "retries": total["retries"],
            "rejected_by_breaker": total["rejected_by_breaker"],
            "breaker_transitions": observer.breaker_transitions,
            "failovers": observer.watch.failovers,
            "switch_backs": observer.watch.switch_backs,
            "degraded": total["by_path"].get("degraded", 0),
            "traffic_changes": observer.watch.changes,
            "upstream": facts.upstream,
            "fallback_upstream": facts.fallback_upstream or None,
            "config_changes": observer.config_changes,
            "etcd": list(facts.etcd) or None,
            "duration_s": round(duration, 3),
            "requests_per_s": round(traffic.total.requests / duration, 1) if duration else 0.0,
            "concurrency": facts.concurrency,
            "scenes": [scene.name for scene in facts.scenes],
            "by_scene": {
                scene.name: tally.as_dict()
                for scene, tally in zip(facts.scenes, traffic.by_scene, strict=True)
            },
            "plugins": facts.plugins,
            "timeouts": dict(TIMEOUTS) if facts.timeouts else None,
            "settings": facts.settings,
            "events": dict(sorted(observer.events.items())),
            "log_events": dict(sorted(observer.log_events.items())),
            "lost_examples": traffic.lost_examples,
            "interrupted": facts.interrupted,
            "cancelled": traffic.in_flight,
            "tls": self._tls_summary(),
            "trace": None if self._tracing is None else self._tracing.summary(),
            "hedges": total["hedges"],
            "hedges_won": total["hedges_won"],
            "refused": total["refused"],
            "refused_degraded": total["refused_degraded"],
            "scene_figures": {
                scene.name: figures
                for index, scene in enumerate(facts.scenes)
                if (figures := self.figures(index))
            },
        }

    def _tls_summary(self) -> dict[str, Any] | None:
        """Return what the TLS scene did, or ``None`` without the tls plugin."""
        tls, pki, scenes = self._observer.tls, self.pki, self.facts.scenes
        if tls is None or pki is None:
            return None
        rotating = [
            tally
            for scene, tally in zip(scenes, self._traffic.by_scene, strict=True)
            if scene.rotate_client_certificate
        ]
        return {
            "ca": pki.ca_subject,
            "certificates": {label: pki.subjects[label] for label in CLIENT_CERTIFICATES},
            "reload_interval_s": TLS_RELOAD_INTERVAL,
            "rotations": tls.rotations,
            "swaps": tls.swaps,
            "presented": dict(sorted(tls.presented.items())),
            "presented_by_scene": {
                scene.name: dict(sorted(counts.items()))
                for scene, counts in zip(scenes, tls.by_scene, strict=True)
            },
            "presented_after_rotation": (
                dict(sorted(tls.after_rotation.items())) if tls.rotations else None
            ),
            "calls_during_rotation": sum(tally.requests for tally in rotating),
            "failures_during_rotation": sum(failures(tally) for tally in rotating),
            "rejected_material": tls.rejected,
        }

    def report(self) -> None:
        """Write the summary: one JSON object, or a table."""
        summary = self.summary()
        if self.as_json:
            self.out.write(json.dumps(summary) + "\n")
            self.out.flush()
            return
        self._events.console.print(self._summary_table(summary))

    def _summary_table(self, summary: Mapping[str, Any]) -> RenderableType:
        facts, traffic = self.facts, self._traffic
        scenes = Table(
            title=f"healkit demo: {summary['duration_s']:.1f} s, {facts.concurrency} callers",
            box=box.SIMPLE_HEAVY,
            padding=(0, 1),
            pad_edge=False,
        )
        for name in ("scene", "calls", "2xx", "non-2xx", "errors", "lost", "p50", "p99"):
            scenes.add_column(name, justify="left" if name == "scene" else "right", no_wrap=True)
        rows: list[tuple[Scene | None, Tally]] = [
            *zip(facts.scenes, traffic.by_scene, strict=True),
            (None, traffic.total),
        ]
        for scene, tally in rows:
            ordered = tally.latencies()
            good = sum(n for code, n in tally.statuses.items() if code.startswith("2"))
            other = sum(tally.statuses.values()) - good
            scenes.add_row(
                Text(scene.name if scene else "total", style="" if scene else "bold"),
                f"{tally.requests:,}",
                f"{good:,}",
                f"{other:,}",
                Text(f"{sum(tally.errors.values()):,}", style="red" if tally.errors else ""),
                Text(str(tally.lost), style="bold red" if tally.lost else "green"),
                _fmt_ms(percentile(ordered, 0.5)),
                _fmt_ms(percentile(ordered, 0.99)),
                end_section=scene is facts.scenes[-1],
            )

        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        table.add_row("requests/s", f"{summary['requests_per_s']:,}")
        table.add_row("paths", _counts(summary["by_path"]))
        table.add_row("errors", _counts(summary["errors_by_type"]))
        table.add_row("statuses", _counts(summary["statuses"]))
        table.add_row("retries", f"{summary['retries']:,}")
        if facts.fallback_upstream:
            table.add_row(
                "traffic",
                f"{summary['failovers']} failovers, {summary['switch_backs']} switch-backs,"
                f" {summary['degraded']:,} degraded responses",
            )
        if "breaker" in facts.sections:
            moves = Counter(f"{m['from']} -> {m['to']}" for m in summary["breaker_transitions"])
            table.add_row("breaker", _counts(dict(moves)))
            table.add_row("refused by breaker", f"{summary['rejected_by_breaker']:,} attempts")
        for name, text in _figure_rows(summary["scene_figures"]):
            table.add_row(name, text)
        table.add_row("plugins", ", ".join(facts.plugins) or "none (core only)")
        table.add_row("tls", _tls_facts(summary["tls"]))
        lost = summary["lost"]
        verdict = (
            Text(f"{lost} calls lost: {'; '.join(summary['lost_examples'])}", style="bold red")
            if lost
            else Text("every call ended in a response or a typed healkit error", style="green")
        )
        table.add_row("lost", verdict)
        if facts.interrupted:
            note = "interrupted with Ctrl-C"
            if summary["cancelled"]:
                note += f"; {summary['cancelled']} calls in flight were cancelled (not counted)"
            table.add_row("note", Text(note, style="yellow"))
        if summary["trace"] is not None:
            return Group(scenes, table, _trace_table(summary["trace"]))
        return Group(scenes, table)


def _figure_rows(scene_figures: Mapping[str, Mapping[str, Any]]) -> Iterator[tuple[str, Text]]:
    """Yield a summary row for each figure of each scene that has some."""
    for name, figures in scene_figures.items():
        if "hedging" in figures:
            yield "hedging", Text(f"{name}: ").append_text(_hedging_text(figures["hedging"]))
        if "overload" in figures:
            yield "overload", Text(f"{name}: ").append_text(_overload_text(figures["overload"]))


def _hedging_text(hedging: Mapping[str, Any]) -> Text:
    """Render the p99 before (the previous scene) and now, and the hedges sent and won."""
    before = hedging["before_scene"]
    p99 = f"p99 {_fmt_ms(_seconds(hedging['p99_ms']))}"
    if before is not None:
        p99 += f" (before, in {before!r}: {_fmt_ms(_seconds(hedging['p99_before_ms']))})"
    if not hedging["installed"]:
        return Text(f"{NOT_INSTALLED['hedge']}; {p99}", style="yellow")
    return Text(
        f"{p99}; {hedging['hedges_sent']:,} hedges sent, {hedging['hedges_won']:,} won",
        style="green" if hedging["hedges_won"] else "",
    )


def _overload_text(overload: Mapping[str, Any]) -> Text:
    """Render the goodput, the p99 of admitted calls, the refusals, and how the limit moved."""
    goodput = overload["goodput_per_s"]
    parts = [
        f"goodput {goodput:,.0f}/s" if goodput is not None else "goodput -",
        f"p99 of admitted calls {_fmt_ms(_seconds(overload['answered_p99_ms']))}",
        (
            f"{overload['refused_degraded']:,} refusals answered degraded"
            f" (of {overload['refused']:,} refused)"
        ),
    ]
    limit = overload["limit"]
    if not overload["installed"]:
        return Text("; ".join([NOT_INSTALLED["limit"], *parts]), style="yellow")
    if limit["first"] is not None:
        parts.append(
            f"limit {limit['first']} -> {limit['last']} (between {limit['min']} and"
            f" {limit['max']}; upstream capacity {overload['capacity']})"
        )
    return Text("; ".join(parts))


def _tls_facts(tls: Mapping[str, Any] | None) -> Text:
    if tls is None:
        return Text("healkit-tls is not installed: plain HTTP, no certificate rotation")
    names = {subject: label for label, subject in tls["certificates"].items()}

    def presented(counts: Mapping[str, int]) -> str:
        return _counts({names.get(subject, subject): n for subject, n in counts.items()})

    parts = [f"mutual TLS; presented {presented(tls['presented'])}"]
    for swap in tls["swaps"]:
        applied = (
            f"applied at {swap['applied_at_s']:.2f} s ({swap['trigger']})"
            if swap["applied_at_s"] is not None
            else "not applied before the end"
        )
        moved = f"{names[swap['from']]} -> {names[swap['to']]}"
        parts.append(f"rotated {moved}: files replaced at {swap['at_s']:.2f} s, {applied}")
    if tls["presented_after_rotation"] is not None:
        in_flight = tls["swaps"][-1]["calls_in_flight"] if tls["swaps"] else None
        note = f" ({in_flight} calls were in flight at the swap)" if in_flight else ""
        parts.append(
            f"requests arriving after it: {presented(tls['presented_after_rotation'])}{note}"
        )
    failed = tls["failures_during_rotation"]
    if tls["swaps"]:
        parts.append(
            f"{failed} of {tls['calls_during_rotation']:,} calls failed during the rotation"
        )
    style = "red" if failed or tls["rejected_material"] else "green"
    return Text("; ".join(parts), style=style)


def _trace_table(trace: Mapping[str, Any]) -> RenderableType:
    """Render the trace summary: spans by name/path/error, a retried call, the durations."""
    spans = Table(
        title=f"trace: {trace['spans']:,} spans in {trace['calls']:,} calls",
        box=box.SIMPLE_HEAVY,
        padding=(0, 1),
        pad_edge=False,
    )
    for name in ("span", "healkit.path", "error.type", "count"):
        spans.add_column(name, justify="right" if name == "count" else "left", no_wrap=True)
    for row in trace["by_name_path_error"]:
        spans.add_row(row["name"], row["path"], row["error_type"], f"{row['count']:,}")
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    sample = trace["sample_retried_call"]
    if sample is None:
        facts.add_row("retried call", "none in this run")
    else:
        lines = [
            (
                f"trace {sample['trace_id']}: {sample['attempts']} attempts,"
                f" ended {sample['outcome']} after {sample['duration_ms']:.1f} ms"
            )
        ]
        for span in sample["spans"]:
            details = [f"path {span['path']}"]
            if span["attempt"] is not None:
                details.insert(0, f"attempt {span['attempt']}")
            if span["resend_count"] is not None:
                details.append(f"resend_count {span['resend_count']}")
            if span["status_code"] is not None:
                details.append(f"status {span['status_code']}")
            if span["error_type"] is not None:
                details.append(f"error.type {span['error_type']}")
            lines.append(
                f"  +{span['start_ms']:.1f} ms  {span['name']}  {', '.join(details)}"
                f"  ({span['duration_ms']:.1f} ms)"
            )
        facts.add_row("retried call", "\n".join(lines))
    duration = trace["http_client_request_duration"]
    facts.add_row(
        DURATION_METRIC,
        f"p50 {_fmt_ms(_seconds(duration['p50_ms']))}, p99 {_fmt_ms(_seconds(duration['p99_ms']))}"
        f" over {duration['requests']:,} requests (estimated from the histogram's buckets)",
    )
    facts.add_row("counters", _counts(trace["counters"]))
    return Group(spans, facts)


def _fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1000
    return f"{ms:.1f} ms" if ms < 1000 else f"{seconds:.2f} s"


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000


def _counter_table(title: str, label_width: int) -> Table:
    table = Table(box=box.SIMPLE_HEAD, title=title, title_style="bold")
    table.add_column("", min_width=label_width, no_wrap=True)
    table.add_column("last 1 s", justify="right", min_width=NUMBER_WIDTH)
    table.add_column("overall", justify="right", min_width=NUMBER_WIDTH)
    return table


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{key} {value:,}" for key, value in counts.items()) or "none"
