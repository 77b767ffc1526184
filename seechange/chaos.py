"""Fault harness: a night through the services as processes while they are killed, restarted and doubled.

:func:`run_disturbed` ingests a night and, while the services work, carries out a shuffled plan:
``kill -9`` of each stage service at random moments (restarted at once), the alert service started with the
test-only fault point ``alert:after-delivery`` (it kills itself between a delivery and marking its
``alert_log`` outbox row sent, once; it is restarted unarmed), and a second instance of some stages joining
the group and leaving it (SIGTERM) mid-night, and, when the plan asks for them, the Kafka broker stopped for a while and restarted
and the PostgreSQL server stopped and restarted (services of ``settings.cache_dir`` only: start private
ones with :func:`seechange.localservices.private.private_services`). It waits until every exposure is through and every consumer group has committed all of
its input, stops the services cleanly and reports what happened: the faults, table counts, natural keys,
the alerts received, the packets stored in the outbox and the dead letters. :func:`undisturbed` gives the
same for the in-process chain into another database, and :func:`compare` lists every difference: rows,
natural keys (Objects, names, memberships and forced points included), and the packets field by field.
Nothing is tolerated: the epochs of one sky tile are handled in ingestion order whatever is killed
(:mod:`seechange.streaming.keys`), and a re-send repeats the stored bytes (:mod:`seechange.pipeline.outbox`).

``tests/integration/test_faults.py`` runs the short plan in ``make test``; ``seechange chaos`` the long one.
"""

from __future__ import annotations

import logging
import random
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from seechange.config import Settings
from seechange.models import Sighting, SubtractionImage
from seechange.natural_keys import natural_keys, normalise_packets, packet_differences, stored_packets
from seechange.orchestrate import AlertCollector, ServiceProcesses, table_counts, wait_for_night
from seechange.streaming.groups import group_lag, message_count, stage_group
from seechange.streaming.stages import INPUT_TOPICS, STAGES, stage_names
from seechange.streaming.topics import dlq_name

log = logging.getLogger(__name__)

__all__ = [
    "ChaosPlan",
    "ChaosReport",
    "compare",
    "detected_in_time_order",
    "natural_keys",
    "packet_differences",
    "run_disturbed",
    "undisturbed",
]


@dataclass(frozen=True)
class ChaosPlan:
    """What to do to the services during the night.

    Attributes
    ----------
    kills_per_service : int
        ``kill -9`` of each stage service this many times (each restarted at once).
    resend_fault : bool
        Start the alert service with the ``alert:after-delivery`` fault point (it dies once mid-alert).
    extra_instances : tuple of str
        Stages of which a second instance joins mid-plan and leaves (SIGTERM) later (each at its own
        moment); empty for none.
    gap_s : tuple of float
        Range of the random pause between two actions, seconds.
    cadence_s : float
        Seconds between ingested exposures (spreads the night over the plan).
    seed : int
        Seeds the order and the timing of the actions.
    timeout_s : float
        Give up waiting for the night after this long, seconds.
    broker_outage_s : float
        Stop the local Kafka broker mid-night for this long, then restart it; 0 for none.
    database_outage_s : float
        Stop the local PostgreSQL mid-night for this long, then restart it; 0 for none.
    """

    kills_per_service: int = 1
    resend_fault: bool = True
    extra_instances: tuple[str, ...] = ("subtract", "detect", "alert")
    gap_s: tuple[float, float] = (1.0, 4.0)
    cadence_s: float = 1.0
    seed: int = 0
    timeout_s: float = 600.0
    broker_outage_s: float = 0.0
    database_outage_s: float = 0.0


@dataclass
class ChaosReport:
    """What :func:`run_disturbed` did and found."""

    actions: list[tuple[float, str]] = field(default_factory=list)  #: (seconds since start, what)
    kills: int = 0  #: external SIGKILLs
    fault_crashes: int = 0  #: services that killed themselves at their fault point
    restarts: int = 0
    #: service -> seconds from its stop completing until it answered again
    outages: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    keys: dict[str, list[Any]] = field(default_factory=dict)
    alerts: list[dict[str, Any]] = field(default_factory=list)  #: every alert received, in order
    #: every alert received, normalised (natural keys for ids, see seechange.natural_keys), in order
    received: list[dict[str, Any]] = field(default_factory=list)
    #: the outbox's packets, normalised, by sighting key
    packets: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)  #: dead-letter topic -> messages
    exit_codes: dict[str, int | None] = field(default_factory=dict)  #: of the final clean stop
    seconds: float = 0.0
    #: every sky tile's subtractions reached detect in time order (see :func:`detected_in_time_order`)
    in_time_order: bool = True


def detected_in_time_order(session: Session) -> bool:
    """True when, per field and band, the subtractions with sightings were detected in MJD order.

    Association is order dependent (an Object's position is the mean of the sightings it has so far), so a
    disturbed run equals an in-order one Object for Object only when each field's epochs reach detect in
    time order, as the sky-tile partition keys make them (:mod:`seechange.streaming.keys`); this checks
    that they did. Sighting ids are assigned at detection.
    """
    rows = session.execute(
        select(SubtractionImage.field, SubtractionImage.band, SubtractionImage.mjd, func.min(Sighting.id))
        .join(Sighting, Sighting.subtraction_id == SubtractionImage.id)
        .group_by(SubtractionImage.id)
    ).all()
    per_field: dict[tuple[Any, Any], list[tuple[int, float]]] = {}
    for fld, band, mjd, first_id in rows:
        per_field.setdefault((fld, band), []).append((int(first_id), float(mjd)))
    for runs in per_field.values():
        mjds = [m for _, m in sorted(runs)]
        if mjds != sorted(mjds):
            return False
    return True


class _Fleet:
    """The service processes of the harness: started, killed, restarted, and one extra instance."""

    def __init__(self, settings: Settings, log_dir: Path, plan: ChaosPlan, report: ChaosReport) -> None:
        self.settings, self.plan, self.report = settings, plan, report
        self.launcher = ServiceProcesses(settings, log_dir)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.armed: set[str] = set()  #: processes whose fault point has not fired yet
        self.t0 = time.monotonic()

    def note(self, what: str) -> None:
        self.report.actions.append((round(time.monotonic() - self.t0, 1), what))
        log.info("chaos: %s", what)

    def start(self, stage: str, index: int = 0, armed: bool = False) -> None:
        settings, name = self.settings, f"{stage}-{index}"
        armed = armed or name in self.armed  # killed from outside before its fault fired: re-armed
        if armed:
            self.armed.add(name)
            settings = settings.model_copy(
                update={"fault_point": f"{stage}:after-delivery", "fault_after": 1}
            )
        self.procs[name] = self.launcher.start_one(stage, index, settings)

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            self.report.kills += 1
            self.note(f"kill -9 {name}")
        stage, _, index = name.rpartition("-")
        self.start(stage, int(index))
        self.report.restarts += 1

    def leave(self, name: str, timeout: float = 120.0) -> None:
        """SIGTERM ``name`` once it is consuming (before that, SIGTERM would kill it, not stop it)."""
        log_file = self.launcher.log_dir / f"{name}.log"
        deadline = time.monotonic() + timeout
        while "consuming" not in (log_file.read_text(errors="replace") if log_file.exists() else ""):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not consuming after {timeout:.0f} s (see its log)")
            time.sleep(0.2)
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        if code != 0:
            raise RuntimeError(f"{name} left with exit code {code} (see its log)")
        self.note(f"{name} left the group (SIGTERM, exit 0)")

    def outage(self, service: str, seconds: float) -> None:
        """Stop the local ``service`` ("kafka" or "postgres"), wait ``seconds`` watching the fleet, restart it.

        No service may exit meanwhile (:meth:`check` raises): infrastructure trouble is retried.
        """
        from seechange.localservices import kafka, postgres

        if service == "kafka":
            if not kafka.stop_kafka(self.settings):
                raise RuntimeError(f"no local Kafka broker of {self.settings.cache_dir} to stop")
        elif not postgres.stop_postgres(self.settings):
            raise RuntimeError(f"no local PostgreSQL of {self.settings.cache_dir} to stop")
        t_down = time.monotonic()  # down from here: the stop itself (graceful) may take seconds
        self.note(f"{service} stopped")
        while time.monotonic() - t_down < seconds:
            self.check()
            time.sleep(0.5)
        if service == "kafka":
            kafka.start_kafka(self.settings, timeout=180.0)
        else:
            postgres.start_postgres(self.settings)
        down_s = time.monotonic() - t_down
        self.report.outages[service] = round(down_s, 1)
        self.note(f"{service} restarted after {down_s:.1f} s down")
        self.check()

    def check(self) -> None:
        """Restart a service that killed itself at its fault point; raise for any other exit."""
        for name, proc in list(self.procs.items()):
            code = proc.poll()
            if code is None:
                continue
            if code != -signal.SIGKILL:
                raise RuntimeError(f"{name} exited with code {code} (see its log)")
            if name not in self.armed:
                raise RuntimeError(f"{name} was killed by SIGKILL from outside the harness")
            self.armed.discard(name)
            self.report.fault_crashes += 1
            self.note(f"{name} died at its fault point; restarted unarmed")
            stage, _, index = name.rpartition("-")
            self.start(stage, int(index))
            self.report.restarts += 1

    def stop(self) -> dict[str, int | None]:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = None
        return codes


def _plan_actions(plan: ChaosPlan, rng: random.Random) -> list[tuple[str, str]]:
    actions = [("kill", f"{s}-0") for s in stage_names() for _ in range(plan.kills_per_service)]
    rng.shuffle(actions)
    for stage in plan.extra_instances:
        extra = f"{stage}-1"
        i = rng.randint(0, len(actions) // 2)
        j = rng.randint(i + 1, len(actions) + 1)
        actions.insert(i, ("join", extra))
        actions.insert(j, ("leave", extra))
    for service, seconds in (("kafka", plan.broker_outage_s), ("postgres", plan.database_outage_s)):
        if seconds > 0:  # mid-night: never first nor last
            actions.insert(rng.randint(1, max(1, len(actions) - 1)), ("outage", service))
    return actions


def _drained(settings: Settings) -> bool:
    """Every stage's group has committed all of its input, checked in pipeline order (see wait_drained)."""
    for stage in STAGES:
        if any(
            group_lag(settings, stage_group(settings, stage.name), settings.topic(stage.input_topic)).values()
        ):
            return False
    return True


def run_disturbed(
    settings: Settings,
    raw_paths: Sequence[str | Path],
    sessions: sessionmaker[Session],
    log_dir: Path,
    plan: ChaosPlan,
) -> ChaosReport:
    """The night through the services while ``plan`` is carried out; what happened and what came out.

    Parameters
    ----------
    settings : Settings
        Broker, database, topics (created) and data root of this run only.
    raw_paths : sequence of str or Path
        Raw files relative to the data root, in time order.
    sessions : sessionmaker
        Sessions on ``settings.database_url``.
    log_dir : Path
        Where the services' logs go (``<stage>-<i>.log``, appended across restarts).
    plan : ChaosPlan
        The faults.
    """
    from seechange.streaming.ingestor import Ingestor

    rng = random.Random(plan.seed)
    report = ChaosReport()
    fleet = _Fleet(settings, log_dir, plan, report)
    collector = AlertCollector(settings)
    collector.start()
    if not collector.ready.wait(15):
        raise RuntimeError("alert collector did not get its partitions")
    t0 = time.monotonic()
    ingestor = Ingestor(settings, sessions)
    try:
        for stage in stage_names():
            fleet.start(stage, 0, armed=plan.resend_fault and stage == "alert")
        actions = _plan_actions(plan, rng)
        exposure_ids: list[int] = []
        todo = [Path(settings.data_dir) / p for p in raw_paths]
        next_ingest = next_action = time.monotonic()
        while todo or actions:
            fleet.check()
            now = time.monotonic()
            if todo and now >= next_ingest:
                path = todo.pop(0)
                got = ingestor.ingest([path])
                if got.failed:
                    raise RuntimeError(f"ingest of {path} failed: {got.failed}")
                exposure_ids.extend(got.registered)
                next_ingest = now + plan.cadence_s
            if actions and now >= next_action:
                what, name = actions.pop(0)
                if what == "kill":
                    fleet.kill(name)
                elif what == "outage":
                    fleet.outage(name, plan.broker_outage_s if name == "kafka" else plan.database_outage_s)
                elif what == "join":
                    stage, _, index = name.rpartition("-")
                    fleet.start(stage, int(index))
                    fleet.note(f"{name} joined the group")
                else:
                    fleet.leave(name)
                next_action = now + rng.uniform(*plan.gap_s)
            time.sleep(0.1)
        deadline = time.monotonic() + plan.timeout_s
        while True:
            fleet.check()
            try:
                wait_for_night(sessions, exposure_ids, collector, timeout=2.0)
                if _drained(settings):
                    break
            except TimeoutError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"night not through {plan.timeout_s:.0f} s after the last fault")
        time.sleep(1.0)  # the collector reads the last alerts
    finally:
        ingestor.close()
        report.exit_codes = fleet.stop()
        collector.stop()
    report.seconds = time.monotonic() - t0
    with sessions() as s:
        report.counts = table_counts(s)
        report.keys = natural_keys(s)
        report.in_time_order = detected_in_time_order(s)
        report.packets = stored_packets(s)
        report.alerts = [record for record, _ in collector.snapshot()]
        report.received = normalise_packets(s, report.alerts)
    report.dead_letters = {
        dlq_name(settings.topic(t)): message_count(settings, dlq_name(settings.topic(t)))
        for t in INPUT_TOPICS
    }
    return report


def undisturbed(
    sessions: sessionmaker[Session], data_root: Path, raw_paths: Sequence[str | Path], settings: Settings
) -> tuple[dict[str, int], dict[str, list[Any]], dict[tuple[str, int], dict[str, Any]]]:
    """Table counts, natural keys and stored packets of the night through the in-process chain.

    ``sessions`` on a fresh migrated database, ``data_root`` a copy of the night's files of its own.
    """
    from seechange.pipeline.chain import InProcessChain
    from seechange.pipeline.parameters import load_parameters

    params = load_parameters(settings.params_file, threads=settings.threads)
    chain = InProcessChain(sessions, data_root, params, radius_arcsec=settings.association_radius_arcsec)
    chain.night(raw_paths, alert=True)
    with sessions() as s:
        return table_counts(s), natural_keys(s), stored_packets(s)


def compare(
    report: ChaosReport,
    counts: dict[str, int],
    keys: dict[str, list[Any]],
    packets: dict[tuple[str, int], dict[str, Any]],
) -> list[str]:
    """What the disturbed run got wrong against the undisturbed ``counts``, ``keys`` and ``packets``.

    Empty if nothing. Checks rows per table and every natural key (Objects, their names and rows,
    memberships and forced points included); each sky tile detected in time order; every stored packet
    equal, field by field, to the undisturbed run's (ids through natural keys); every alert received, each
    copy equal to its stored packet (so a re-send is the first copy), no alert received twice but the
    re-sends; no dead letter; a clean final stop.
    """
    problems = []
    if not report.in_time_order:
        problems.append("some sky tile's epochs reached detect out of time order")
    for table, n in counts.items():
        if report.counts.get(table) != n:
            problems.append(f"{table}: {report.counts.get(table)} rows, undisturbed {n}")
    for table, want in keys.items():
        got = report.keys.get(table, [])
        if got != want:
            missing = [k for k in want if k not in got]
            extra = [k for k in got if k not in want]
            problems.append(
                f"{table}: keys differ ({len(missing)} missing, e.g. {missing[:2]}; {len(extra)} extra, e.g. "
                f"{extra[:2]}; {len(got)} vs {len(want)})"
            )
    if sorted(report.packets) != sorted(packets):
        problems.append(f"{len(report.packets)} packets stored, undisturbed {len(packets)}")
    for key, want_packet in packets.items():
        if key in report.packets:
            differ = packet_differences(report.packets[key], want_packet)
            if differ:
                problems.append(f"packet of sighting {key} differs from the undisturbed run's in {differ}")
    seen: dict[tuple[str, int], int] = {}
    for copy in report.received:
        key = (copy["alertId"][0], int(copy["alertId"][1]))
        seen[key] = seen.get(key, 0) + 1
        if key not in report.packets:
            problems.append(f"alert of sighting {key} received but not in the outbox")
        elif differ := packet_differences(copy, report.packets[key]):
            problems.append(f"alert of sighting {key} received (copy {seen[key]}) differing in {differ}")
    if sorted(seen) != sorted(report.packets):
        problems.append(f"{len(seen)} distinct alerts received, {len(report.packets)} stored")
    problems += [f"{t}: {n} dead letters" for t, n in report.dead_letters.items() if n]
    problems += [
        f"{name}: exit code {code} at the final stop" for name, code in report.exit_codes.items() if code
    ]
    return problems
