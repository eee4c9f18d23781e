"""``healkit status``: etcd, every document of a namespace checked, and fleet health.

::

    healkit status [--json] [--block NAME ...]

The command reads etcd once (at one revision) into a :class:`StatusReport`,
then renders that one model: as text, or as JSON with ``--json``. The fleet
part is built from the configuration instances apply (the valid documents,
validated with the installed plugins' sections, defaults merged in: the
``routing`` section as the router reads it), and the group that serves each
service is chosen by the router's own rule (:func:`serving_group`) over the
health records of the namespace.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final, TextIO, final

import msgspec

from healkit._cli.args import (
    EXIT_FAILED,
    EXIT_OK,
    BlockOption,
    Commands,
    json_option,
    write_json,
)
from healkit._cli.connection import Connection, etcd_command
from healkit._cli.documents import (
    NamespaceState,
    check_namespace,
    plugin_sections,
    read_namespace,
)
from healkit._config.models import ConfigSection, HealkitConfig, ServicePolicy
from healkit._errors import ConfigIssue
from healkit._routing.fleet import (
    HEALTH,
    INSTANCES,
    EndpointView,
    InstanceView,
    parse_record_key,
)
from healkit._routing.settings import SECTION as ROUTING
from healkit._routing.settings import endpoint_groups, serving_group
from healkit.etcd import EtcdStatus, KeyValue
from healkit.etcd._source import key_role

__all__ = [
    "DocumentStatus",
    "EndpointReports",
    "EtcdMember",
    "InstanceSeen",
    "Issue",
    "ServiceHealth",
    "StatusReport",
    "Traffic",
    "UnreadableRecord",
    "add_parser",
    "build_report",
    "write_text",
]


@final
class Issue(msgspec.Struct, frozen=True, kw_only=True):
    """A problem of a document: where (a path in the whole document) and why."""

    path: str
    reason: str


@final
class EtcdMember(msgspec.Struct, frozen=True, kw_only=True):
    """The etcd member that answered (its IDs in hex, as etcdctl shows them)."""

    endpoint: str
    version: str
    revision: int
    leader: str
    """The leader's ID; ``"0"``: no leader."""
    member: str
    raft_term: int
    db_size: int


@final
class DocumentStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One configuration key of the namespace, checked as instances check it."""

    key: str
    kind: str
    """``defaults``, ``service`` or ``overlay`` (a channel's service document)."""
    service: str | None
    channel: str | None
    mod_revision: int
    version: int
    valid: bool
    issues: tuple[Issue, ...]


@final
class EndpointReports(msgspec.Struct, frozen=True, kw_only=True):
    """An endpoint of a service, and the instances whose health records report it out."""

    endpoint: str
    group: int
    reported_out_by: tuple[str, ...]


@final
class Traffic(msgspec.Struct, frozen=True, kw_only=True):
    """The group the fleet's traffic goes to, and its endpoints not reported out."""

    group: int
    endpoints: tuple[str, ...]


@final
class InstanceSeen(msgspec.Struct, frozen=True, kw_only=True):
    """A service as one instance sees it (its ``instances/<instance>`` record)."""

    instance: str
    updated: float
    """When the instance wrote it (Unix time)."""
    endpoints: tuple[EndpointView, ...]
    traffic_group: int | None
    """``None``: nothing usable there (the primary group is tried anyway)."""
    traffic: tuple[str, ...]


@final
class ServiceHealth(msgspec.Struct, frozen=True, kw_only=True):
    """A service's endpoint groups, the fleet's reports, and where traffic goes."""

    quorum: int | None
    """``routing.fleet.quorum`` (defaults merged); ``None``: the service shares no health."""
    endpoints: tuple[EndpointReports, ...]
    traffic: Traffic | None
    """``None``: every endpoint is reported out (the primary group is tried anyway)."""
    instances: tuple[InstanceSeen, ...]


@final
class UnreadableRecord(msgspec.Struct, frozen=True, kw_only=True):
    """An ``instances/`` record that is not an instance's view."""

    key: str
    reason: str


@final
class StatusReport(msgspec.Struct, frozen=True, kw_only=True):
    """What ``healkit status`` shows; ``--json`` prints it as it is."""

    etcd: EtcdMember
    namespace: str
    prefix: str
    revision: int
    """The revision the namespace was read at."""
    valid: bool
    issues: tuple[Issue, ...]
    """Problems of the namespace that no single key explains."""
    documents: tuple[DocumentStatus, ...]
    fleet: dict[str, ServiceHealth]
    """Per service with a valid document, by name."""
    unreadable_instance_records: tuple[UnreadableRecord, ...]


def add_parser(commands: Commands, block_option: BlockOption) -> None:
    """Add ``status`` to the top-level commands."""
    status = commands.add_parser(
        "status",
        help="etcd's status and every document of the namespace, checked",
        description=(
            "Show the etcd member that answers, every document of the namespace checked as"
            " instances check it, and fleet health per service. Exit status 1 when a"
            " document is invalid."
        ),
    )
    json_option(status, "print one JSON object")
    block_option(status)
    etcd_command(status, _status)


async def _status(args: argparse.Namespace, connection: Connection, out: TextIO) -> int:
    sections = plugin_sections(args.block)
    async with connection.client() as client:
        etcd = await client.status()
        state = await read_namespace(client, connection.root)
        health = await client.range_all(
            connection.root + HEALTH, prefix=True, revision=state.revision
        )
        instances = await client.range_all(
            connection.root + INSTANCES, prefix=True, revision=state.revision
        )
    report = build_report(
        etcd,
        connection.namespace,
        state,
        sections,
        health=health.kvs,
        instances=instances.kvs,
    )
    if args.json:
        write_json(out, report)
    else:
        write_text(out, report, time.time())
    invalid = [d.key.removeprefix(report.prefix) for d in report.documents if not d.valid]
    if report.issues:
        invalid.append("(the namespace as a whole)")
    if invalid:
        sys.stderr.write(f"healkit: {report.prefix}: invalid: {', '.join(invalid)}\n")
    return EXIT_OK if report.valid else EXIT_FAILED


def build_report(  # noqa: PLR0913 - the parts of one read of etcd
    etcd: EtcdStatus,
    namespace: str,
    state: NamespaceState,
    sections: Sequence[ConfigSection[Any]],
    *,
    health: Sequence[KeyValue],
    instances: Sequence[KeyValue],
) -> StatusReport:
    """Check the namespace read at one revision and say where each service's traffic goes."""
    checked = check_namespace(state, sections)
    problems = checked.problems
    documents = tuple(
        DocumentStatus(
            key=state.root + key,
            kind=key_role(key)[0],
            service=key_role(key)[1] or None,
            channel=key_role(key)[2] or None,
            mod_revision=kv.mod_revision,
            version=kv.version,
            valid=not problems.get(key),
            issues=_issues(problems.get(key, ())),
        )
        for key, kv in state.keys.items()
    )
    whole = _issues(problems.get("", ()))
    views, unreadable = _instance_views(state.root, instances)
    return StatusReport(
        etcd=EtcdMember(
            endpoint=etcd.endpoint,
            version=etcd.version,
            revision=etcd.revision,
            leader=f"{etcd.leader:x}",
            member=f"{etcd.member_id:x}",
            raft_term=etcd.raft_term,
            db_size=etcd.db_size,
        ),
        namespace=namespace,
        prefix=state.root,
        revision=state.revision,
        valid=not whole and all(d.valid for d in documents),
        issues=whole,
        documents=documents,
        fleet=_fleet(checked.in_force(sections), _reports(state.root, health), views),
        unreadable_instance_records=unreadable,
    )


def _issues(issues: Sequence[ConfigIssue]) -> tuple[Issue, ...]:
    return tuple(Issue(path=i.path, reason=i.reason) for i in issues)


def _reports(root: str, kvs: Sequence[KeyValue]) -> dict[tuple[str, str], list[str]]:
    """Return the instances that report each (service, endpoint) out, from the health records."""
    reports: dict[tuple[str, str], list[str]] = {}
    for kv in kvs:
        record = parse_record_key(kv.key.decode("utf-8", "replace")[len(root) :])
        if record is not None:
            service, endpoint, instance = record
            reports.setdefault((service, endpoint), []).append(instance)
    return reports


def _instance_views(
    root: str, kvs: Sequence[KeyValue]
) -> tuple[list[InstanceView], tuple[UnreadableRecord, ...]]:
    """Decode the instances' own views; list the records that are not one (key, reason)."""
    views: list[InstanceView] = []
    unreadable: list[UnreadableRecord] = []
    for kv in kvs:
        key = kv.key.decode("utf-8", "replace")
        try:
            views.append(msgspec.json.decode(kv.value, type=InstanceView))
        except msgspec.DecodeError as error:  # written by something else than healkit
            unreadable.append(UnreadableRecord(key=key[len(root) :], reason=str(error)))
    return views, tuple(unreadable)


def _fleet(
    config: HealkitConfig | None,
    reports: Mapping[tuple[str, str], Sequence[str]],
    views: Sequence[InstanceView],
) -> dict[str, ServiceHealth]:
    """Return the fleet's view of each service of ``config`` (none without a configuration)."""
    if config is None:
        return {}
    return {
        name: _service_health(name, policy, reports, views)
        for name, policy in config.services.items()
    }


def _service_health(
    name: str,
    policy: ServicePolicy,
    reports: Mapping[tuple[str, str], Sequence[str]],
    views: Sequence[InstanceView],
) -> ServiceHealth:
    """Return a service's endpoint groups, who reports each endpoint out, where traffic goes.

    The groups and the quorum are the validated policy's (defaults merged,
    endpoints normalized as the router keeps them); the group is the router's
    choice when the endpoints reported out by ``quorum`` instances or more
    are avoided.
    """
    try:
        settings = policy.section(ROUTING)
    except KeyError:  # the routing plugin is blocked: its defaults
        settings = ROUTING.default()
    groups = endpoint_groups(policy, settings)
    quorum = None if settings.fleet is None else settings.fleet.quorum

    def usable(endpoint: str) -> bool:
        return quorum is None or len(reports.get((name, endpoint), ())) < quorum

    served = serving_group(groups, usable)
    seen = (
        InstanceSeen(
            instance=view.instance,
            updated=view.updated,
            endpoints=mine.endpoints,
            traffic_group=mine.traffic_group,
            traffic=mine.traffic,
        )
        for view in views
        if (mine := view.services.get(name)) is not None
    )
    return ServiceHealth(
        quorum=quorum,
        endpoints=tuple(
            EndpointReports(
                endpoint=endpoint,
                group=index,
                reported_out_by=tuple(sorted(reports.get((name, endpoint), ()))),
            )
            for index, group in enumerate(groups)
            for endpoint in group
        ),
        traffic=None if served is None else Traffic(group=served[0], endpoints=tuple(served[1])),
        instances=tuple(sorted(seen, key=lambda entry: entry.instance)),
    )


# -- text ----------------------------------------------------------------------------------

# Whatever can write under the namespace writes what this text shows: its
# strings are shown escaped and cut short, and its lists cut, so that a record
# neither drives the operator's terminal nor floods it (--json keeps all of it).
_UNSAFE: Final = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_LONGEST: Final = 256
_INSTANCES_SHOWN: Final = 20
_NAMES_SHOWN: Final = 10
_ENDPOINTS_SHOWN: Final = 32
_RECORDS_SHOWN: Final = 20


def _shown(text: str) -> str:
    """Return ``text`` with control and bidi characters escaped, cut to a line's worth."""
    if len(text) > _LONGEST:
        text = text[:_LONGEST] + "..."
    return _UNSAFE.sub(lambda match: ascii(match[0])[1:-1], text)


def _names(names: Sequence[str]) -> str:
    """Return the first names, shown safely, and how many more there are."""
    shown = ", ".join(_shown(name) for name in names[:_NAMES_SHOWN])
    hidden = len(names) - _NAMES_SHOWN
    return f"{shown} and {hidden} more" if hidden > 0 else shown


def _more(out: TextIO, hidden: int, what: str, indent: str) -> None:
    if hidden > 0:
        out.write(f"{indent}... {hidden} more {what} (--json lists them all)\n")


def write_text(out: TextIO, report: StatusReport, now: float) -> None:
    """Write ``report`` for a person; ``now`` (Unix time) turns moments into ages."""
    etcd = report.etcd
    leader = "no leader" if etcd.leader == "0" else f"leader {etcd.leader}"
    if etcd.leader != "0" and etcd.leader == etcd.member:
        leader += " (this member)"
    out.write(
        f"etcd {_shown(etcd.endpoint)}: version {_shown(etcd.version)},"
        f" revision {etcd.revision}, {leader}\n"
    )
    out.write(
        f"namespace {report.namespace} ({report.prefix}), read at revision {report.revision}\n"
    )
    if not report.documents:
        out.write("  no documents\n")
    relatives = [_shown(d.key.removeprefix(report.prefix)) for d in report.documents]
    width = max(map(len, relatives), default=0)
    for relative, document in zip(relatives, report.documents, strict=True):
        verdict = "valid" if document.valid else "INVALID"
        out.write(f"  {relative:<{width}}  revision {document.mod_revision:<6} {verdict}\n")
        out.writelines(f"      {_shown(i.path)}: {_shown(i.reason)}\n" for i in document.issues)
    out.writelines(
        f"  namespace INVALID: {_shown(i.path)}: {_shown(i.reason)}\n" for i in report.issues
    )
    for service, health in report.fleet.items():
        _write_service(out, service, health, now)
    unreadable = report.unreadable_instance_records
    out.writelines(
        f"  instance record {_shown(r.key)} unreadable: {_shown(r.reason)}\n"
        for r in unreadable[:_RECORDS_SHOWN]
    )
    _more(out, len(unreadable) - _RECORDS_SHOWN, "unreadable instance records", "  ")


def _write_service(out: TextIO, service: str, health: ServiceHealth, now: float) -> None:
    if not health.endpoints:
        return
    shared = "fleet health off" if health.quorum is None else f"quorum {health.quorum}"
    out.write(f"service {service} ({shared}):\n")
    for entry in health.endpoints:
        reporters = entry.reported_out_by
        seen = f"reported out by {_names(reporters)}" if reporters else "no report"
        out.write(f"  group {entry.group}  {entry.endpoint}  {seen}\n")
    traffic = health.traffic
    where = (
        "nowhere healthy (the primary group is tried anyway)"
        if traffic is None
        else f"group {traffic.group}: {', '.join(traffic.endpoints)}"
    )
    out.write(f"  traffic now: {where}\n")
    for seen_by in health.instances[:_INSTANCES_SHOWN]:
        _write_instance(out, seen_by, now)
    _more(out, len(health.instances) - _INSTANCES_SHOWN, "instances", "  ")


def _write_instance(out: TextIO, seen: InstanceSeen, now: float) -> None:
    """Write one instance's own view of a service: its traffic, then each endpoint."""
    where = (
        "nowhere usable (the primary group is tried anyway)"
        if seen.traffic_group is None
        else f"group {seen.traffic_group}: {_names(seen.traffic)}"
    )
    age = max(now - seen.updated, 0.0)
    out.write(f"  instance {_shown(seen.instance)} (as of {age:.0f} s ago): traffic to {where}\n")
    out.writelines(
        f"    group {entry.group}  {_shown(entry.endpoint)}  {_local_health(entry, now)}\n"
        for entry in seen.endpoints[:_ENDPOINTS_SHOWN]
    )
    _more(out, len(seen.endpoints) - _ENDPOINTS_SHOWN, "endpoints", "    ")


def _local_health(entry: EndpointView, now: float) -> str:
    """Describe an endpoint as one instance sees it: usable or why not, and its breaker."""
    ejected_until, retry_at = entry.ejected_until, entry.breaker_retry_at
    if entry.down:
        health = "down (probes)"
    elif ejected_until is not None and ejected_until > now:
        health = f"ejected ({ejected_until - now:.0f} s left)"
    elif entry.usable:
        health = "usable"
    elif entry.fleet_reports:
        health = f"avoided (reported out by {entry.fleet_reports} instances)"
    else:
        health = "unusable"
    if entry.breaker is None:
        return health
    health += f", breaker {_shown(entry.breaker)}"
    if retry_at is not None and retry_at > now:
        health += f" (admits calls again in {retry_at - now:.0f} s)"
    return health
