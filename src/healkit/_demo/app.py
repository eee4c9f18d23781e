"""``healkit demo``: live traffic through healkit while a local upstream misbehaves.

Nothing to set up: the demo starts two :class:`healkit.testing.FaultServer`
on loopback, a primary and a fallback, configures a :class:`healkit.Client`
(with every installed plugin) for them as service ``demo`` (the fallback as its
fallback group, with health probes: :data:`~healkit._demo.scenes.ROUTING`), and runs ``concurrency``
callers that each loop on ``await client.get("/api", service="demo")`` until
the time is up. Meanwhile the upstreams play a script of
:data:`~healkit._demo.scenes.SCENES`:
healthy, latency spikes, 503 bursts, a 503 storm (failover to the fallback),
healed (probes switch traffic back), an outage, a total outage (degraded
responses), recovery, a slow tail (then hedged: p99 before and after, hedges
sent and won), an overload (the adaptive concurrency limit finding the
upstream's capacity; refusals answered by the degraded response), a client
certificate rotation. The terminal shows the traffic live with rich, where it
goes now included; the end is a summary (a table, or one JSON object with
``--json``) that counts failovers, switch-backs and degraded responses.

The plugins found installed get short settings fit for a demo that lasts
seconds (see :mod:`healkit._demo.scenes`); the others keep their defaults.
During the outage the operator changes the policy live (a degraded response is
added); the hedged slow tail and the overload turn hedging and the adaptive
concurrency limit on for their scene only (``Scene.settings``), when a plugin
claims the section, and say so when none does. By default the policy is a
document in Python, changed with ``runtime.apply``; with ``etcd`` endpoints it lives in etcd
(namespace :data:`ETCD_NAMESPACE`, removed at the end) and the change is one
etcd write that the client applies through its watch.

Every call ends as a response (counted by ``response.outcome.path`` and status)
or as a :class:`healkit.HealkitError` (counted by type). Anything else is
*lost*, which is a bug in healkit: the demo shows it and exits with status 1.
At the end the demo stops issuing calls and awaits those in flight, so no call
is cut short. Ctrl-C ends it early the same way (exit status 130); a second
Ctrl-C cancels the calls still in flight (reported as ``cancelled``).

With the tls plugin (healkit-tls) installed, the upstream speaks HTTPS and
requires a client certificate: the demo makes a CA, a server certificate and two
client certificates (A and B) with ``cryptography`` in a temporary directory
(removed at the end) and gives the service a ``tls`` section pointing at the
files. In the scene "certificate rotation" the client certificate files are
replaced, A by B, in one atomic rename, while the callers keep calling; the
upstream records which certificate each request's connection presented, and the
summary shows the rotation, the certificates presented and the failures during
the rotation (none). Without the plugin the upstream is plain HTTP, and the demo
says so.

With ``trace`` (``healkit demo --trace``; needs healkit-tracing and the
OpenTelemetry SDK), the tracing plugin gets SDK providers with an in-memory span
exporter and metric reader, each call runs in a span of the demo's own, and the
end adds a trace summary: spans counted by name, path and ``error.type``, the
attempt spans of one retried call, and the ``http.client.request.duration``
percentiles from the metrics.

Scenes are a table: a later scene is one more
:class:`~healkit._demo.scenes.Scene` row, and :func:`run_demo` accepts another
table. What the upstreams do in a scene is a phase of the scenario model of
``healkit config simulate``; the demo scripts its fault servers with it.
This module wires the parts (see the package's docstring): what the demo
observes comes from healkit's typed events
(:class:`~healkit._demo.telemetry.Observer`, a plugin of the demo's runtime).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import ssl
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO, final

from healkit._cli.entry_logs import routed_logs
from healkit._client import Client
from healkit._demo import MAX_CONCURRENCY, MAX_DURATION, DemoError, Stopwatch
from healkit._demo.pki import Pki
from healkit._demo.scenes import (
    HEALTH_PATH,
    NOT_INSTALLED,
    SCENES,
    SEED,
    SERVICE,
    Scene,
    check_scenes,
    plugin_settings,
    scene_ends,
    scene_settings,
    service_document,
)
from healkit._demo.telemetry import LoadWatch, Observer, TlsTally, Tracing
from healkit._demo.traffic import Traffic
from healkit._demo.view import REFRESH_PER_SECOND, Events, Facts, View
from healkit._plugins import create_plugin_manager, describe_plugins
from healkit._runtime import Runtime, config_sections
from healkit.etcd import EtcdClient
from healkit.etcd._source import DEFAULT_PREFIX, EtcdSource
from healkit.testing import FaultServer

if TYPE_CHECKING:
    from healkit_limit import LimitPlugin

__all__ = ["DemoError", "run_demo"]

ETCD_NAMESPACE: Final = "healkit-demo"
"""The etcd namespace of ``healkit demo --etcd``; its key is deleted at the end."""
ETCD_KEY: Final = f"{DEFAULT_PREFIX}{ETCD_NAMESPACE}/services/{SERVICE}"

RECORDED: Final = 4096
"""The requests the primary upstream remembers, with the tls plugin (none without it).

The demo counts the certificates they presented every frame, before the
upstream forgets them: up to this many requests per frame are counted.
"""

EXIT_OK: Final = 0
EXIT_LOST: Final = 1
EXIT_INTERRUPTED: Final = 130


def run_demo(  # noqa: PLR0913 - keyword-only options of the command
    *,
    duration: float,
    concurrency: int,
    as_json: bool,
    out: TextIO,
    scenes: Sequence[Scene] = SCENES,
    etcd: Sequence[str] = (),
    trace: bool = False,
    fallback: bool = True,
    plugins: Sequence[object] = (),
) -> int:
    """Run the demo and return the exit status (the ``healkit demo`` command).

    Args:
        duration: seconds to run; the scenes share it in proportion to
            their phases' durations.
        concurrency: how many callers loop concurrently.
        as_json: show nothing live; write only the summary, as one JSON object.
        out: where to write. A terminal gets the live view; anything else a
            line per scene change and the summary table.
        scenes: the script (by default :data:`~healkit._demo.scenes.SCENES`).
        etcd: etcd endpoints: keep the demo's policy in etcd, and change it
            there (empty: the embedded default, no etcd).
        trace: trace the run with the OpenTelemetry SDK (in memory) and add a
            trace summary at the end (needs healkit-tracing and the SDK).
        fallback: run a fallback upstream, the service's fallback group, which
            answers as each scene's ``phase.fallback`` says (``False``: the
            service has only the primary upstream).
        plugins: more plugins for the demo's runtime, besides the installed
            ones (one named as an installed plugin takes its place; the demo
            runs its own instance of the limit plugin, so do not pass one).

    Returns:
        0, or 1 if any call was lost (ended other than in a response or a
        HealkitError), or 130 if interrupted with Ctrl-C.

    Raises:
        DemoError: ``trace`` without healkit-tracing or the OpenTelemetry SDK
            (or with the tracing plugin blocked); nothing was run.
        PluginError: an installed plugin failed to load.
        ValueError: an invalid duration or concurrency (beyond
            :data:`~healkit._demo.MAX_DURATION`, :data:`~healkit._demo.MAX_CONCURRENCY`
            included), or scene table.

    """
    if not (math.isfinite(duration) and 0 < duration <= MAX_DURATION):
        raise ValueError(
            f"duration must be a number of seconds > 0 and <= {MAX_DURATION:g}, got {duration!r}"
        )
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"concurrency must be >= 1 and <= {MAX_CONCURRENCY}, got {concurrency}")
    check_scenes(scenes)
    manager = create_plugin_manager(plugins=plugins)
    sections = frozenset(section.name for section in config_sections(manager))
    demo = _Demo(
        duration=duration,
        concurrency=concurrency,
        as_json=as_json,
        out=out,
        scenes=tuple(scenes),
        etcd=tuple(etcd),
        sections=sections,
        tracing=_tracing(sections) if trace else None,
        fallback=fallback,
        plugins=tuple(plugins),
    )
    try:
        with routed_logs(demo.observer.on_log):
            asyncio.run(demo.run())
    except KeyboardInterrupt:  # a second Ctrl-C: asyncio.run cancelled the calls in flight
        demo.facts.interrupted = True
    demo.view.report()
    if demo.facts.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_LOST if demo.traffic.total.lost else EXIT_OK


def _limit_plugin(sections: frozenset[str]) -> LimitPlugin | None:
    """Return the demo's own instance of the limit plugin, whose limits it reads, if installed."""
    if "limit" not in sections:
        return None
    from healkit_limit import LimitPlugin  # noqa: PLC0415 - an optional plugin, not the core

    return LimitPlugin()


def _tracing(sections: frozenset[str]) -> Tracing:
    """Return the OpenTelemetry SDK set up for ``--trace``.

    Args:
        sections: the configuration sections of the installed plugins.

    Raises:
        DemoError: the tracing plugin is missing or blocked, or the SDK is missing.

    """
    tracing = Tracing()
    if "tracing" not in sections:
        tracing.shutdown()
        raise DemoError("--trace: the tracing plugin is blocked (HEALKIT_BLOCK_PLUGINS)")
    return tracing


@final
class _Demo:
    """One run: the upstreams, the client, the scenes played on schedule."""

    def __init__(  # noqa: PLR0913 - keyword-only parts of one run
        self,
        *,
        duration: float,
        concurrency: int,
        as_json: bool,
        out: TextIO,
        scenes: tuple[Scene, ...],
        etcd: tuple[str, ...],
        sections: frozenset[str],
        tracing: Tracing | None,
        fallback: bool,
        plugins: tuple[object, ...],
    ) -> None:
        self.facts = Facts(
            duration=duration,
            concurrency=concurrency,
            scenes=scenes,
            descriptions=[],
            etcd=etcd,
            sections=sections,
        )
        self.facts.descriptions = [self._describe(scene) for scene in scenes]
        self.stopwatch = Stopwatch()
        self.events = Events(out, self.stopwatch, as_json=as_json)
        self.tracing = tracing
        self.traffic = Traffic(
            scenes=len(scenes),
            say=self.events.say,
            keep_recent=self.events.live,
            tracing=tracing,
            answered=frozenset(
                index for index, scene in enumerate(scenes) if "limit" in (scene.settings or {})
            ),
        )
        self.limit = _limit_plugin(sections)
        self.load = LoadWatch(self.limit, len(scenes))
        self.observer = Observer(
            scenes=[scene.name for scene in scenes],
            traffic=self.traffic,
            say=self.events.say,
            stopwatch=self.stopwatch,
            tls=TlsTally(len(scenes)) if self.tls_installed else None,
            fallback=fallback,
        )
        self.view = View(
            out=out,
            as_json=as_json,
            facts=self.facts,
            stopwatch=self.stopwatch,
            traffic=self.traffic,
            observer=self.observer,
            tracing=tracing,
            events=self.events,
            load=self.load,
        )
        self.etcd: EtcdClient | None = None
        self.runtime: Runtime | None = None
        self.policy: dict[str, Any] = dict(scenes[0].policy or {})
        """The sections the operator added so far (the first scene's from the start)."""
        self.scene_settings: dict[str, dict[str, Any]] = scene_settings(scenes[0], sections)
        """The sections of the scene playing (``Scene.settings``, those a plugin claims)."""
        self._plugins = plugins
        self.pki: Pki | None = None
        self._with_fallback = fallback
        self._fallback: FaultServer | None = None
        self._scene_starts: list[float] = []
        self._rotations: deque[float] = deque()
        """When (``time.monotonic()``) the client certificate is to be rotated, in order."""

    @property
    def tls_installed(self) -> bool:
        """Whether the tls plugin is installed (and not blocked): then the upstream is HTTPS."""
        return "tls" in self.facts.sections

    def _describe(self, scene: Scene) -> str:
        description = scene.describe(timeouts=self.facts.timeouts)
        if scene.rotate_client_certificate and not self.tls_installed:
            return (
                "the upstream answers 200 (healkit-tls is not installed: plain HTTP,"
                " no client certificate to rotate)"
            )
        missing = [
            NOT_INSTALLED.get(name, f"no installed plugin claims the {name} section")
            for name in scene.settings or {}
            if name not in self.facts.sections
        ]
        return "; ".join([description, *missing])

    # -- the run ---------------------------------------------------------------

    async def run(self) -> None:
        """Start the upstreams and the client, play the scenes, await every call."""
        with contextlib.ExitStack() as files:
            context = None
            if self.tls_installed:
                directory = files.enter_context(tempfile.TemporaryDirectory(prefix="healkit-demo-"))
                self.pki = self.view.pki = Pki(Path(directory))
                context = self.pki.server_context()
            try:
                await self._serve(context)
            finally:
                if self.tracing is not None:
                    self.tracing.close()

    async def _serve(self, context: ssl.SSLContext | None) -> None:
        facts = self.facts
        # The requests are remembered only to count the client certificates they presented.
        recorded = RECORDED if self.observer.tls is not None else 0
        primary = FaultServer(ssl_context=context, max_recorded=recorded)
        async with primary as server, contextlib.AsyncExitStack() as stack:
            facts.upstream = server.url
            if self._with_fallback:
                self._fallback = await stack.enter_async_context(
                    FaultServer(ssl_context=context, max_recorded=0)
                )
                facts.fallback_upstream = self._fallback.url
            if self.pki is None:
                self.events.say("healkit-tls is not installed: the upstream speaks plain HTTP")
            else:
                self.events.say(
                    "upstream over HTTPS, client certificate required; certificates made in"
                    f" {self.pki.directory} (removed at the end)"
                )
            facts.settings = plugin_settings(
                facts.sections, None if self.pki is None else self.pki.section()
            )
            # A plugin passed explicitly takes the place of the entry-point one of its name.
            plugins: list[object] = [self.observer, *self._plugins]
            if self.tracing is not None:
                plugins.append(self.tracing.plugin)
            if self.limit is not None:
                plugins.append(self.limit)
            if facts.etcd:
                self.etcd = await stack.enter_async_context(EtcdClient(facts.etcd))
                await self.etcd.put(ETCD_KEY, self._service_json())
                stack.push_async_callback(self.etcd.delete, ETCD_KEY)
                source = EtcdSource(self.etcd, namespace=ETCD_NAMESPACE)
                # Every installed plugin: the demo blocks none.
                runtime = Runtime(config=source, plugins=plugins)
            else:
                runtime = Runtime(config={"services": {SERVICE: self._service()}}, plugins=plugins)
            self.runtime = runtime
            facts.plugins = [
                info.name
                for info in describe_plugins(runtime.plugin_manager)
                if info.name != self.observer.healkit_name
            ]
            async with Client(runtime=runtime) as client:
                with self.view.live():
                    await self._play(server, client)

    def _service(self) -> dict[str, Any]:
        facts = self.facts
        return service_document(
            facts.upstream,
            facts.fallback_upstream,
            facts.settings,
            {**self.policy, **self.scene_settings},
        )

    def _service_json(self) -> bytes:
        return json.dumps(self._service()).encode()

    async def _change_policy(self, scene: Scene) -> None:
        """Add the scene's sections to the demo service's document, live.

        The previous scene's own settings (``Scene.settings``) are taken out,
        this one's put in.
        """
        before = {**self.policy, **self.scene_settings}
        self.policy.update(scene.policy or {})
        self.scene_settings = scene_settings(scene, self.facts.sections)
        after = {**self.policy, **self.scene_settings}
        if after == before:
            return
        changes = [f"{name} on" for name in sorted(after) if name not in before]
        changes += [f"{name} off" for name in sorted(before) if name not in after]
        changes += [
            f"{name} changed"
            for name in sorted(after)
            if before.get(name, after[name]) != after[name]
        ]
        what = ", ".join(changes)
        if self.etcd is not None:
            result = await self.etcd.put(ETCD_KEY, self._service_json())
            self.events.say(
                f"operator: {what}, written to etcd ({ETCD_KEY}, revision {result.revision})",
                "bold blue",
            )
        elif self.runtime is not None:
            self.events.say(f"operator: {what}, with runtime.apply", "bold blue")
            self.runtime.apply({"services": {SERVICE: self._service()}}, origin="demo operator")

    async def _play(self, server: FaultServer, client: Client) -> None:
        facts, traffic = self.facts, self.traffic
        self.stopwatch.start()
        started = self.stopwatch.started
        ends = [started + end for end in scene_ends(facts.scenes, facts.duration)]
        self._scene_starts = [started, *ends[:-1]]
        if self.pki is not None:
            # Halfway through each rotation scene.
            self._rotations.extend(
                (start + end) / 2
                for start, end, scene in zip(self._scene_starts, ends, facts.scenes, strict=True)
                if scene.rotate_client_certificate
            )
        self._start_scene(server, 0)
        callers = traffic.start(
            client, concurrency=facts.concurrency, until=started + facts.duration
        )
        try:
            await self._direct(server)
        except asyncio.CancelledError:
            self._interrupt()
        finally:
            traffic.stopping = True
        # Stop issuing calls, but let every call in flight end as it will.
        everyone = asyncio.gather(*callers)
        # Cancelled by asyncio.run after a second Ctrl-C: nobody awaits it any more.
        everyone.add_done_callback(_retrieve)
        while not everyone.done():
            try:
                await asyncio.shield(everyone)
            except asyncio.CancelledError:
                self._interrupt()
        facts.elapsed = self.stopwatch.elapsed()
        self._harvest(server)
        self.view.refresh()

    def _interrupt(self) -> None:
        """Take the cancellation of Ctrl-C as the end of the demo, or re-raise it.

        On Ctrl-C, ``asyncio.run`` cancels the main task once (a second Ctrl-C
        raises KeyboardInterrupt instead): the demo then ends as at its
        deadline. Any other cancellation propagates.
        """
        task = asyncio.current_task()
        if self.facts.interrupted or task is None or task.uncancel() > 0:
            raise asyncio.CancelledError
        self.facts.interrupted = True
        self.events.say("interrupted: awaiting the calls in flight (Ctrl-C again to cancel them)")

    async def _direct(self, server: FaultServer) -> None:
        """Switch scenes on schedule and refresh the view, until the end."""
        scenes, started = self.facts.scenes, self.stopwatch.started
        boundaries = scene_ends(scenes, self.facts.duration)
        end = started + self.facts.duration
        tick = 1 / REFRESH_PER_SECOND
        next_tick = started + tick
        while (now := time.monotonic()) < end:
            index = self.traffic.scene
            while index + 1 < len(scenes) and now >= started + boundaries[index]:
                index += 1
            if index != self.traffic.scene:
                for following in range(self.traffic.scene + 1, index + 1):
                    self._start_scene(server, following)
                    await self._change_policy(scenes[following])
            self._harvest(server)
            next_rotation = self._rotate_when_due(server, now)
            if now >= next_tick:
                self._frame(server)
                next_tick += tick
                if next_tick <= now:  # fell behind: skip the missed frames
                    next_tick = now + tick
            wake = min(next_tick, end, next_rotation)
            if index + 1 < len(scenes):
                wake = min(wake, started + boundaries[index])
            await asyncio.sleep(max(0.0, wake - time.monotonic()))
        self.traffic.stopping = True

    def _rotate_when_due(self, server: FaultServer, now: float) -> float:
        """Rotate the client certificate if its time came; return when the next one is due."""
        if self._rotations and now >= self._rotations[0]:
            self._rotations.popleft()
            self._rotate(server)
        return self._rotations[0] if self._rotations else math.inf

    def _frame(self, server: FaultServer) -> None:
        """Count spans (``trace``), see where traffic goes and the load now, refresh the view."""
        if self.tracing is not None:
            self.tracing.drain()
        self.observer.watch_traffic()
        self.load.sample(self.traffic.scene, server)
        self.view.refresh()

    def _start_scene(self, server: FaultServer, index: int) -> None:
        self.traffic.scene = index
        self.facts.scene_started.append(self.stopwatch.elapsed())
        self._script(server, index)
        scenes = self.facts.scenes
        self.events.say(
            f"scene {index + 1}/{len(scenes)} {scenes[index].name}:"
            f" {self.facts.descriptions[index]}",
            "bold cyan",
        )

    def _script(self, server: FaultServer, index: int) -> None:
        """Make the upstreams do what the scene's phase says, from the start of their cycle."""
        scene = self.facts.scenes[index]
        primary = scene.primary(timeouts=self.facts.timeouts)
        primary.apply(server, seed=SEED, probe_path=HEALTH_PATH)
        if self._fallback is not None:
            scene.phase.fallback.apply(self._fallback, seed=SEED, probe_path=HEALTH_PATH)

    def _harvest(self, server: FaultServer) -> None:
        """Count the client certificates the upstream saw since the last harvest.

        Called at every turn of the director's loop (at least every frame),
        before the upstream forgets them (:data:`RECORDED`).
        """
        if self.observer.tls is not None and self.pki is not None:
            self.observer.tls.harvest(server, self.pki, self._scene_starts)

    def _rotate(self, server: FaultServer) -> None:
        """Replace the client certificate files with the next certificate (A -> B)."""
        tls, pki = self.observer.tls, self.pki
        if pki is None or tls is None:
            return
        self._harvest(server)
        was, now = pki.rotate()
        tls.swaps.append(
            {
                "at_s": round(self.stopwatch.elapsed(), 3),
                "scene": self.facts.scenes[self.traffic.scene].name,
                "from": pki.subjects[was],
                "to": pki.subjects[now],
                "applied_at_s": None,
                "trigger": None,
                "calls_in_flight": None,
            }
        )
        self.events.say(
            f"operator: client certificate files replaced {was} -> {now} (one atomic rename)",
            "bold blue",
        )


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
