"""Bad input against the running services (four ``seechange serve`` processes) and the ingest producer.

Every bad message must land on ``<input topic>.dlq`` with its original key and bytes and the headers
``error_class``, ``error_message`` (one line, naming what was wrong), ``origin_topic``, ``origin_partition``
and ``origin_offset``; the service must keep running and handle the good messages that follow. Ingest
records a file it cannot take on ``exposure-ready.dlq`` and goes on with the next file.

The night: 2 fields x 4 epochs of 512x1024 CCDs. Field ``simfield01``'s first two raw files are corrupted
after registration; field ``simfield00``'s four files are the good messages (the fourth is subtracted,
detected and alerted, so every stage handles a good message after the bad ones).

The bad-input corpus (issue 10: at least 25 cases run in ``make test``), here and elsewhere:

Consumer side, against the running services (this module), each dead-lettered with its bytes:
 1-4.   bytes without the framing's magic byte, on each of the 4 stage inputs;
 5-8.   a one-byte message (too short), on each input;
 9-12.  a well-framed message with an unknown schema id (9999), on each input (a wrong schema id);
 13.    a well-framed event of another schema (``exposure_ready`` on ``image-reduced``);
 14.    a truncated Avro body of the right schema;
 15-18. events naming rows that are not in the database (exposure, image, subtraction, sighting);
 19.    a raw file overwritten with random bytes after registration (a corrupt FITS file);
 20.    a raw file truncated to a third after registration;
 21.    a raw file deleted after registration (an event naming a missing file).
Ingest side (this module; the file is recorded on ``exposure-ready.dlq``, the other files go on):
 22.    an absolute path outside the data root;  23. a relative path escaping it with ``..``;
 24.    a raw file without MJD-OBS.
Run loop (``tests/integration/test_runloop.py``):
 25.    a handler refusing an impossible value in an event (``ImpossibleValue``), between good events;
 26.    garbage bytes after good events on one partition.
Pre-reduced ingest (``tests/integration/test_ingest_reduced.py``):
 27.    not a FITS file;  28. no celestial WCS;  29. a path outside the data root (``/etc/hostname``).
Units: 30-34. malformed FITS sections (``tests/unit/test_sections.py``: no brackets, 0-based, not a number,
one axis, empty); 35-41. data-root escapes (``tests/unit/test_storage.py``: four ``..`` forms, an absolute
path outside, a symlink out, a garbage path); 42. a header without WCS and 43. a coadd input without zero
point (``tests/unit/test_never_silent.py``). A CP image without a zero point (``test_ingest_reduced.py``), and
one CCD of a multi-extension CP file without one (``test_ingest_cp_mef.py``); calibration frames missing or
without the CCD (``tests/unit/test_calibrate.py``). Ingest-side header validation (RA/Dec range, filter, EXPTIME,
sections, unparseable times, NaN/constant CCDs, multi-extension files) is covered with the ingest.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from astropy.io import fits
from confluent_kafka import Producer
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from seechange.config import Settings
from tests.integration._night import STAGE_INPUTS, headers_of, message_count, read_topic, wait_drained

SEED = 777
GOOD_FIELD, BAD_FIELD = "simfield00", "simfield01"
DLQ_TIMEOUT_S = 60.0


@dataclass
class Run:
    """The running services and what the tests sent to them."""

    settings: Settings
    night: Any
    services: Any
    sessions: sessionmaker[Session]
    ingestor: Any
    producer: Producer
    dlq_expected: dict[str, int] = field(default_factory=dict)  #: dead-letter topic -> messages expected

    def raw(self, field_name: str, epoch: int) -> Any:
        return next(e for e in self.night.exposures if e.field == field_name and e.epoch == epoch)

    def expect_dlq(self, input_topic: str, n: int = 1) -> None:
        name = f"{self.settings.topic(input_topic)}.dlq"
        self.dlq_expected[name] = self.dlq_expected.get(name, 0) + n

    def send(self, input_topic: str, key: bytes, value: bytes) -> tuple[int, int]:
        """Produce one message and wait for it; its (partition, offset)."""
        where: list[tuple[int, int]] = []

        def on_delivery(err: Any, msg: Any) -> None:
            assert err is None, err
            where.append((msg.partition(), msg.offset()))

        self.producer.produce(self.settings.topic(input_topic), key=key, value=value, on_delivery=on_delivery)
        assert self.producer.flush(15) == 0
        return where[0]


@pytest.fixture(scope="module")
def run(test_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    from producers.ingest import Ingestor
    from seechange.models.session import make_engine, make_session_factory
    from seechange.orchestrate import ServiceProcesses
    from seechange.sim.night import simulate_night
    from tests.integration._night import isolated_run

    with isolated_run(test_settings, "bad") as settings:
        night = simulate_night(settings.data_dir, seed=SEED, n_fields=2, n_epochs=4, size=(512, 1024))
        engine = make_engine(settings.database_url)
        services = ServiceProcesses(settings, settings.data_dir / "logs")
        services.start()
        ingestor = Ingestor(settings, make_session_factory(engine))
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
        try:
            yield Run(settings, night, services, make_session_factory(engine), ingestor, producer)
        finally:
            ingestor.close()
            services.stop()  # no-op when the last test stopped them
            engine.dispose()


def _dlq_message(run: Run, input_topic: str, partition: int, offset: int) -> Any:
    """The dead-letter copy of the message at (partition, offset) of ``input_topic`` (waits for it)."""
    topic = run.settings.topic(input_topic)
    deadline = time.monotonic() + DLQ_TIMEOUT_S
    while True:
        for msg in read_topic(run.settings.kafka_bootstrap, f"{topic}.dlq"):
            h = headers_of(msg)
            if (h.get("origin_topic"), h.get("origin_partition"), h.get("origin_offset")) == (
                topic,
                str(partition),
                str(offset),
            ):
                return msg
        assert all(run.services.alive().values()), f"a service died: {run.services.alive()}"
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no dead letter for {topic}[{partition}]@{offset} after {DLQ_TIMEOUT_S:.0f} s"
            )
        time.sleep(0.3)


def _check_dead_letter(
    run: Run, input_topic: str, key: bytes, value: bytes, error_class: str, *words: str
) -> str:
    """Send (key, value) to ``input_topic``; assert its dead letter: same bytes, headers, one-line error."""
    partition, offset = run.send(input_topic, key, value)
    run.expect_dlq(input_topic)
    msg = _dlq_message(run, input_topic, partition, offset)
    h = headers_of(msg)
    assert msg.key() == key and msg.value() == value
    assert h["error_class"] == error_class, h
    message = h["error_message"]
    assert message and "\n" not in message and len(message) <= 1000, message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    stage = {t: s for s, t in STAGE_INPUTS}[input_topic]
    assert h["service"] == stage
    return message


def _wait_for(what: str, check: Any, run: Run, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        with run.sessions() as s:
            value = check(s)
        if value:
            return value
        assert all(run.services.alive().values()), f"a service died: {run.services.alive()}"
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def _image_of(run: Run, exposure_id: int) -> Any:
    from seechange.models import Image

    return _wait_for(
        f"an Image of exposure {exposure_id}",
        lambda s: s.scalars(select(Image).where(Image.exposure_id == exposure_id)).one_or_none(),
        run,
    )


def _ingest_good(run: Run, epoch: int) -> int:
    e = run.raw(GOOD_FIELD, epoch)
    report = run.ingestor.ingest([run.settings.data_dir / e.raw_path])
    assert report.failed == [] and len(report.registered) == 1
    return report.registered[0]


def test_garbage_bytes_go_to_every_dead_letter_topic(run: Run) -> None:
    from seechange.streaming.framing import encode
    from seechange.streaming.registry import SchemaRegistry

    registry = SchemaRegistry.load()
    ready_body = encode(registry, "exposure_ready", {
        "exposure_id": 1, "instrument": "DECam", "section_id": "37", "field": "f", "band": "r",
        "mjd": 60000.0, "raw_path": "raw/x.fits", "provenance_id": "p", "produced_at": 0, "ingested_at": 0,
        "origin": None,
    })  # fmt: skip
    for _, input_topic in STAGE_INPUTS:
        _check_dead_letter(
            run, input_topic, b"junk", b"\xde\xad\xbe\xef not avro", "DecodeError", "magic byte"
        )
        _check_dead_letter(run, input_topic, b"junk", b"\x00", "DecodeError", "too short")
        _check_dead_letter(
            run,
            input_topic,
            b"junk",
            b"\x00\x00\x00\x27\x0f" + b"\x02" * 20,
            "DecodeError",
            "unknown schema id 9999",
        )
    # a well-framed event of another schema on image-reduced: the wrong kind of message
    _check_dead_letter(
        run, "image-reduced", b"wrong", ready_body, "DecodeError", "exposure_ready", "image_reduced"
    )
    # a truncated body of the right schema
    _check_dead_letter(run, "exposure-ready", b"short", ready_body[:12], "DecodeError", "exposure_ready")


def test_events_naming_unknown_rows_are_dead_lettered(run: Run) -> None:
    from seechange.streaming.framing import encode
    from seechange.streaming.registry import SchemaRegistry

    registry = SchemaRegistry.load()
    common = {"provenance_id": "0123456789abcdef", "produced_at": 0, "ingested_at": 0}
    records: dict[str, tuple[str, dict[str, Any]]] = {
        "exposure-ready": ("exposure_ready", {
            "exposure_id": 987654, "instrument": "DECam", "section_id": "37", "field": GOOD_FIELD,
            "band": "r", "mjd": 60000.0, "raw_path": "raw/nothing.fits", "origin": "test"}),
        "image-reduced": ("image_reduced", {
            "image_id": 987654, "exposure_id": 987654, "field": GOOD_FIELD, "band": "r",
            "section_id": "37", "mjd": 60000.0, "image_path": "reduced/nothing"}),
        "subtraction-done": ("subtraction_done", {
            "subtraction_id": 987654, "image_id": 987654, "reference_id": 987654, "field": GOOD_FIELD,
            "band": "r", "mjd": 60000.0, "path": "subtractions/nothing"}),
        "sighting-found": ("sighting_found", {
            "sighting_id": 987654, "object_id": 987654, "subtraction_id": 987654, "mjd": 60000.0,
            "is_good": True}),
    }  # fmt: skip
    for input_topic, (schema, record) in records.items():
        value = encode(registry, schema, {**record, **common})
        error_class = "MissingRow" if input_topic in ("image-reduced", "subtraction-done") else "BadMessage"
        message = _check_dead_letter(run, input_topic, b"987654", value, error_class, "987654")
        assert "not in the database" in message


def test_corrupt_raw_file_is_dead_lettered_and_the_next_exposure_reduced(run: Run) -> None:
    from seechange.models import Image
    from seechange.pipeline.ingest import exposure_event, register_exposure
    from seechange.streaming.framing import encode
    from seechange.streaming.registry import SchemaRegistry
    from seechange.timestamps import now_ms

    registry = SchemaRegistry.load()
    data_dir = run.settings.data_dir
    for epoch, how in ((0, "garbage"), (1, "truncated")):
        e = run.raw(BAD_FIELD, epoch)
        with run.sessions() as s, s.begin():  # registered while the file was good ...
            exposure, created = register_exposure(s, data_dir, e.raw_path)
            assert created
            value = encode(registry, "exposure_ready", exposure_event(exposure, produced_at_ms=now_ms()))
            exposure_id = exposure.id
        path = data_dir / e.raw_path  # ... then damaged
        size = path.stat().st_size
        if how == "garbage":
            path.write_bytes(os.urandom(size))
        else:
            with open(path, "r+b") as fh:
                fh.truncate(size // 3)
        message = _check_dead_letter(
            run, "exposure-ready", str(exposure_id).encode(), value, "BadMessage", e.raw_path, "unreadable"
        )
        print(f"\n{how}: {message}")
        with run.sessions() as s:
            assert s.scalars(select(Image).where(Image.exposure_id == exposure_id)).all() == []
    good = _ingest_good(run, 0)
    image = _image_of(run, good)
    assert image.field == GOOD_FIELD and image.zero_point is not None


def test_event_naming_a_deleted_raw_file_is_dead_lettered(run: Run) -> None:
    """Consumer side: the exposure row exists, its raw file is gone by the time reduce reads it."""
    from seechange.models import Image
    from seechange.pipeline.ingest import exposure_event, register_exposure
    from seechange.streaming.framing import encode
    from seechange.streaming.registry import SchemaRegistry
    from seechange.timestamps import now_ms

    registry = SchemaRegistry.load()
    e = run.raw(BAD_FIELD, 2)
    with run.sessions() as s, s.begin():
        exposure, created = register_exposure(s, run.settings.data_dir, e.raw_path)
        assert created
        value = encode(registry, "exposure_ready", exposure_event(exposure, produced_at_ms=now_ms()))
        exposure_id = exposure.id
    (run.settings.data_dir / e.raw_path).unlink()
    message = _check_dead_letter(run, "exposure-ready", str(exposure_id).encode(), value, "BadMessage")
    print(f"\nmissing raw file: {message}")
    assert Path(e.raw_path).name in message, message
    with run.sessions() as s:
        assert s.scalars(select(Image).where(Image.exposure_id == exposure_id)).all() == []


def test_ingest_of_a_path_outside_the_data_root(run: Run, tmp_path: Path) -> None:
    e = run.raw(GOOD_FIELD, 1)
    outside = tmp_path / "elsewhere.fits"  # a perfectly good raw file, but not under the data root
    shutil.copy(run.settings.data_dir / e.raw_path, outside)
    sneaky = f"raw/../../../{tmp_path.name}/elsewhere.fits"  # the same file, relative, escaping with ..
    before = message_count(run.settings.kafka_bootstrap, run.settings.topic("exposure-ready.dlq"))
    report = run.ingestor.ingest([outside, sneaky, run.settings.data_dir / e.raw_path])
    run.expect_dlq("exposure-ready", 2)
    assert [p for p, _ in report.failed] == [str(outside), sneaky]
    assert len(report.registered) == 1 and report.new == 1
    for path, message in report.failed:
        assert "outside the data root" in message and "\n" not in message, message
    _check_ingest_dead_letters(
        run, before, {str(outside): "outside the data root", sneaky: "outside the data root"}
    )
    _image_of(run, report.registered[0])


def test_ingest_of_a_file_without_mjd_obs(run: Run) -> None:
    e = run.raw(GOOD_FIELD, 2)
    bad = run.settings.data_dir / "raw" / "broken" / "no_mjd_37.fits"
    bad.parent.mkdir(parents=True, exist_ok=True)
    with fits.open(run.settings.data_dir / e.raw_path) as hdul:
        del hdul[0].header["MJD-OBS"]  # DATE-OBS alone would do (tests/integration/test_ingest_files.py)
        del hdul[0].header["DATE-OBS"]
        hdul.writeto(bad)
    before = message_count(run.settings.kafka_bootstrap, run.settings.topic("exposure-ready.dlq"))
    report = run.ingestor.ingest([bad, run.settings.data_dir / e.raw_path])
    run.expect_dlq("exposure-ready")
    assert [p for p, _ in report.failed] == [str(bad)]
    assert "MJD-OBS" in report.failed[0][1]
    assert len(report.registered) == 1 and report.new == 1
    _check_ingest_dead_letters(run, before, {str(bad): "MJD-OBS"})
    _image_of(run, report.registered[0])


def _check_ingest_dead_letters(run: Run, before: int, expected: dict[str, str]) -> None:
    topic = run.settings.topic("exposure-ready.dlq")
    from tests.integration._night import wait_for_messages

    msgs = wait_for_messages(
        run.settings.kafka_bootstrap, topic, before + len(expected), timeout=DLQ_TIMEOUT_S
    )
    found = {}
    for msg in msgs:
        h = headers_of(msg)
        if h.get("service") == "ingest" and h.get("origin_path") in expected:
            found[h["origin_path"]] = (msg, h)
    assert set(found) == set(expected)
    for path, word in expected.items():
        msg, h = found[path]
        assert msg.value() == path.encode() and msg.key() == path.encode()
        assert h["error_class"] == "IngestError" and h["origin_topic"] == "ingest"
        assert word in h["error_message"] and "\n" not in h["error_message"], h["error_message"]
        assert Path(path).name in h["error_message"], h["error_message"]


def test_every_stage_handles_good_messages_after_the_bad_ones_and_stops_cleanly(run: Run) -> None:
    from seechange.models import Image, SubtractionImage

    # the good field's four epochs (ingest is idempotent: epochs already ingested above are re-sent)
    ids = [_ingest_good(run, epoch) for epoch in range(4)]
    last = _image_of(run, ids[-1])
    sub = _wait_for(
        "the subtraction of the last good epoch, detected",
        lambda s: s.scalars(
            select(SubtractionImage).where(
                SubtractionImage.new_image_id == last.id, SubtractionImage.n_sightings.is_not(None)
            )
        ).one_or_none(),
        run,
    )
    wait_drained(run.settings, timeout=120, services=run.services)
    with run.sessions() as s:
        members = [s.scalars(select(Image).where(Image.exposure_id == i)).one() for i in ids[:3]]
        assert all((m.extra or {}).get("subtraction") == "member of its reference" for m in members)
    print(f"\nsubtraction {sub.id}: {sub.n_sightings} sightings; dead letters {run.dlq_expected}")
    # nothing dead-lettered twice or by mistake
    for stage_topic in [run.settings.topic(t) for _, t in STAGE_INPUTS]:
        dlq = f"{stage_topic}.dlq"
        assert message_count(run.settings.kafka_bootstrap, dlq) == run.dlq_expected.get(dlq, 0), dlq
    assert all(run.services.alive().values()), run.services.alive()
    codes = run.services.stop()
    assert codes == {f"{s}-0": 0 for s, _ in STAGE_INPUTS}, codes
