"""Every stage's pipeline function called in-process, in stage order: what ``bench`` and ``evaluate`` run.

The services call the same functions from their handlers; here each step gets its own transaction (as
one message does in a service) and is timed, so the in-process figures are the services' stage times
without the hops.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from seechange.models import CoaddImage, Image, Sighting, SubtractionImage
from seechange.pipeline.alert import build_alerts
from seechange.pipeline.detect import detect_on_subtraction
from seechange.pipeline.ingest import input_file, register_exposure, scan_raw_file
from seechange.pipeline.outbox import alerts_to_send, mark_sent
from seechange.pipeline.parameters import PipelineParameters
from seechange.pipeline.reduce import ReduceResources, reduce_exposure_row
from seechange.pipeline.subtract import find_or_build_reference, subtract_image_row
from seechange.storage import md5sum

__all__ = ["InProcessChain"]

T = TypeVar("T")
log = logging.getLogger(__name__)


def _profiler() -> Any:
    """A ``pyinstrument`` profiler sampling every millisecond (a dev dependency: imported only here)."""
    try:
        from pyinstrument import Profiler
    except ImportError as exc:  # the dev extra is not installed
        raise RuntimeError("profiling needs pyinstrument: pip install -e '.[dev]'") from exc
    return Profiler(interval=0.001)


def _write_profile(profiler: Any, directory: Path, name: str) -> None:
    """Write one step's profile as a text call tree and an HTML page under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.txt").write_text(profiler.output_text(unicode=False, color=False, show_all=False))
    (directory / f"{name}.html").write_text(profiler.output_html())
    log.info("profile of %s written to %s", name, directory)


class InProcessChain:
    """The stages of one data root and database, called one step at a time.

    Parameters
    ----------
    sessions : sessionmaker
        Session factory of the database (sessions must not expire on commit, see
        :func:`seechange.models.session.make_session_factory`, so returned rows stay readable).
    data_root : Path
        Data root the raw paths are relative to and the products are written under.
    params : PipelineParameters
        Every step's parameters.
    radius_arcsec : float
        Sighting-to-object association radius, arcsec.
    threads : int, optional
        Threads of the threaded steps (default: the machine's cores).
    alerts_topic : str
        Topic name recorded in ``alert_log`` by :meth:`alerts`.
    profile_dir : Path, optional
        When given, every step runs under the ``pyinstrument`` statistical profiler and its profile is
        written there as ``<stage>-<n>.txt`` (call tree) and ``<stage>-<n>.html`` (``seechange bench
        --profile``). The profiler's own cost is about a millisecond per sample (1 ms interval).

    Attributes
    ----------
    times : dict of str to list of float
        Wall-clock seconds of every call, per stage name (``ingest``, ``reduce``, ``reference``,
        ``subtract``, ``detect``, ``alerts``).
    cpu_times : dict of str to list of float
        CPU seconds of this process (every thread) of every call, per stage name: on a shared machine the
        figure other work disturbs least.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        data_root: Path,
        params: PipelineParameters,
        *,
        radius_arcsec: float,
        threads: int | None = None,
        alerts_topic: str = "alerts",
        profile_dir: Path | None = None,
    ) -> None:
        self.sessions = sessions
        self.data_root = Path(data_root)
        self.params = params
        self.radius_arcsec = radius_arcsec
        self.threads = threads
        self.alerts_topic = alerts_topic
        self.resources = ReduceResources(self.data_root)
        self.times: dict[str, list[float]] = defaultdict(list)
        self.cpu_times: dict[str, list[float]] = defaultdict(list)
        self.profile_dir = Path(profile_dir) if profile_dir is not None else None

    def _step(self, stage: str, fn: Callable[[Session], T]) -> T:
        """Run ``fn(session)`` in one transaction and record its time under ``stage``."""
        profiler = _profiler() if self.profile_dir is not None else None
        with self.sessions() as session, session.begin():
            t0, c0 = time.perf_counter(), time.process_time()
            if profiler is not None:
                profiler.start()
            try:
                out = fn(session)
            finally:
                if profiler is not None:
                    profiler.stop()
            self.times[stage].append(time.perf_counter() - t0)
            self.cpu_times[stage].append(time.process_time() - c0)
        if profiler is not None and self.profile_dir is not None:
            _write_profile(profiler, self.profile_dir, f"{stage}-{len(self.times[stage])}")
        return out

    def ingest(self, raw_path: str | Path) -> int:
        """Register a raw CCD file; its Exposure id."""
        return self._step("ingest", lambda s: register_exposure(s, self.data_root, raw_path)[0].id)

    def ingest_file(self, raw_path: str | Path, *, skip: frozenset[str] | None = None) -> list[int]:
        """Register every science CCD of a raw file (multi-extension or ``.fits.fz`` too); their Exposure ids.

        Raises
        ------
        IngestError
            A CCD of the file was refused (the first refusal; nothing of the file is registered).
        """

        def register(s: Session) -> list[int]:
            full = input_file(self.data_root, raw_path)
            outcomes = scan_raw_file(full, skip=skip)
            refused = [o.error for o in outcomes if o.error is not None]
            if refused:
                raise refused[0]
            digest = md5sum(full)
            return [
                register_exposure(s, self.data_root, full, info=o.info, md5=digest)[0].id
                for o in outcomes
                if o.info is not None
            ]

        return self._step("ingest", register)

    def reduce(self, exposure_id: int) -> Image:
        """Reduce one Exposure (find before make)."""
        return self._step(
            "reduce",
            lambda s: reduce_exposure_row(s, self.resources, exposure_id, params=self.params.reduce)[0],
        )

    def reference(self, image_id: int) -> CoaddImage | None:
        """The reference of an Image, built now when its members are all reduced (None while it cannot be)."""

        def find(s: Session) -> CoaddImage | None:
            image = s.get(Image, image_id)
            assert image is not None, f"image {image_id} vanished"
            return find_or_build_reference(s, self.data_root, image, params=self.params.reference)

        return self._step("reference", find)

    def subtract(self, image_id: int) -> SubtractionImage | None:
        """Subtract an Image's reference (None for a member of its reference)."""
        return self._step(
            "subtract",
            lambda s: subtract_image_row(
                s, self.data_root, image_id, ref_params=self.params.reference, params=self.params.subtract
            ),
        )

    def detect(self, subtraction_id: int) -> list[Sighting]:
        """Detect, measure, cut out and associate on one subtraction."""
        return self._step(
            "detect",
            lambda s: detect_on_subtraction(
                s,
                self.data_root,
                subtraction_id,
                params=self.params.detect,
                radius_arcsec=self.radius_arcsec,
                threads=self.threads,
            ),
        )

    def alerts(self, sighting_ids: Iterable[int]) -> int:
        """Build, encode and store (``alert_log``) the packet of each good, not yet alerted sighting; how many.

        The outbox rows are marked sent at once: the in-process chain has no broker, the stored bytes are
        what the alert service would have delivered.
        """
        from seechange.streaming.framing import encode
        from seechange.streaming.registry import SchemaRegistry

        registry = SchemaRegistry.load()

        def build(s: Session) -> int:
            # the sightings, their packets and outbox rows in a few queries for the whole batch
            ids = list(dict.fromkeys(sighting_ids))
            by_id = {x.id: x for x in s.scalars(select(Sighting).where(Sighting.id.in_(ids)))}
            missing = [i for i in ids if i not in by_id]
            assert not missing, f"sightings {missing} vanished"
            good = [by_id[i] for i in ids if by_id[i].is_good]

            def packets(todo: list[Sighting]) -> list[bytes]:
                return [encode(registry, "alert", r) for r in build_alerts(s, self.data_root, todo)]

            rows = alerts_to_send(s, good, topic=self.alerts_topic, make_packets=packets)
            sent = [row.alert_id for row in rows]
            mark_sent(s, sent)
            return len(sent)

        return self._step("alerts", build)

    def night(
        self,
        raw_paths: Iterable[str | Path],
        *,
        alert: bool = True,
        on_detected: Callable[[list[Sighting]], None] | None = None,
    ) -> list[SubtractionImage]:
        """A whole night in time order, as the services would do it undisturbed; its subtractions.

        Every file is ingested and reduced first; then each image gets its reference (when it can be built)
        and is subtracted (members of their reference are not), detected and, with ``alert``, alerted.
        ``on_detected(sightings)`` is called after each detection.
        """
        image_ids = [self.reduce(self.ingest(p)).id for p in raw_paths]
        subs = []
        for image_id in image_ids:
            if self.reference(image_id) is None:
                continue
            sub = self.subtract(image_id)
            if sub is None:
                continue
            subs.append(sub)
            sightings = self.detect(sub.id)
            if on_detected is not None:
                on_detected(sightings)
            if alert:
                self.alerts([x.id for x in sightings if x.is_good])
        return subs

    def timings(self) -> dict[str, Any]:
        """Total seconds per stage."""
        return {stage: sum(values) for stage, values in self.times.items()}
