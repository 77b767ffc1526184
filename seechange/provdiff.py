"""Compare two provenances of one step: what a reprocessing changed.

For provenances ``A`` (before) and ``B`` (after) of one process:

- the parameters that differ;
- products on each side: rows of every table with a ``provenance_id`` column, per table;
- sightings: those of the detect provenances concerned (A and B themselves for ``detect``; for an earlier
  step, the detect provenances downstream of each), matched by position: a sighting of A and one of B on
  the same new image within ``match_radius_arcsec`` are the same (nearest pairs first, one to one);
  sightings of B left over are *gained*, those of A *lost*;
- objects gained and lost: objects with sightings on one side only;
- for matched sightings, the photometry difference B - A (magnitude, mag; PSF flux, nJy): median and
  robust spread (1.4826 times the median absolute deviation);
- alerts sent (``alert_log`` rows) for the sightings of each side.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from seechange.models import Photometry, Provenance, Sighting, SubtractionImage
from seechange.models.alert import AlertLog
from seechange.models.base import Base
from seechange.sphere import angular_sep_arcsec

__all__ = ["ProvenanceDiff", "diff_provenances", "latest_two"]

MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class _S:
    """One sighting as the diff needs it."""

    id: int
    image_id: int
    ra: float
    dec: float
    object_id: int | None
    mag: float | None
    flux_njy: float | None


@dataclass
class ProvenanceDiff:
    """The comparison of provenances ``a`` and ``b`` (see the module docstring); counts are ``(a, b)``."""

    process: str
    a: str
    b: str
    parameters: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    products: dict[str, tuple[int, int]] = field(default_factory=dict)
    sightings: tuple[int, int] = (0, 0)
    matched: int = 0
    gained: int = 0
    lost: int = 0
    objects: tuple[int, int] = (0, 0)
    objects_gained: int = 0
    objects_lost: int = 0
    mag_diffs: list[float] = field(default_factory=list)
    flux_diffs: list[float] = field(default_factory=list)
    alerts: tuple[int, int] = (0, 0)

    @staticmethod
    def _stats(values: list[float]) -> tuple[float | None, float | None]:
        if not values:
            return None, None
        med = statistics.median(values)
        return med, MAD_TO_SIGMA * statistics.median(abs(v - med) for v in values)

    @property
    def mag_median_spread(self) -> tuple[float | None, float | None]:
        """Median and robust spread of mag(B) - mag(A) over matched sightings with both magnitudes, mag."""
        return self._stats(self.mag_diffs)

    @property
    def flux_median_spread(self) -> tuple[float | None, float | None]:
        """Median and robust spread of flux(B) - flux(A) over matched sightings, nJy."""
        return self._stats(self.flux_diffs)

    def lines(self) -> list[str]:
        """The diff as text, one fact a line."""

        def num(v: float | None, fmt: str) -> str:
            return "-" if v is None else format(v, fmt)

        out = [f"{self.process}: A {self.a}  ->  B {self.b}"]
        for key, (va, vb) in sorted(self.parameters.items()):
            out.append(f"  parameter {key}: {va!r} -> {vb!r}")
        for table, (na, nb) in sorted(self.products.items()):
            out.append(f"  rows of {table:<11} A {na:>6}  B {nb:>6}  ({nb - na:+d})")
        out.append(
            f"  sightings           A {self.sightings[0]:>6}  B {self.sightings[1]:>6}  "
            f"matched {self.matched}, gained {self.gained}, lost {self.lost}"
        )
        out.append(
            f"  objects             A {self.objects[0]:>6}  B {self.objects[1]:>6}  "
            f"gained {self.objects_gained}, lost {self.objects_lost}"
        )
        mm, ms = self.mag_median_spread
        fm, fs = self.flux_median_spread
        out.append(
            f"  photometry B-A      mag median {num(mm, '+.4f')} spread {num(ms, '.4f')} ({len(self.mag_diffs)}); "
            f"flux median {num(fm, '+.2f')} nJy spread {num(fs, '.2f')} nJy ({len(self.flux_diffs)})"
        )
        out.append(f"  alerts              A {self.alerts[0]:>6}  B {self.alerts[1]:>6}")
        return out


def _flat(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in params.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _detect_provenances(session: Session, prov: Provenance) -> list[str]:
    """``prov`` itself when it is a detect provenance, else every detect provenance downstream of it."""
    if prov.process == "detect":
        return [prov.id]
    found, todo, seen = [], list(prov.downstreams), {prov.id}
    while todo:
        p = todo.pop()
        if p.id in seen:
            continue
        seen.add(p.id)
        if p.process == "detect":
            found.append(p.id)
        todo.extend(p.downstreams)
    return sorted(found)


def _sightings(session: Session, prov_ids: list[str]) -> list[_S]:
    if not prov_ids:
        return []
    rows = session.execute(
        select(Sighting, SubtractionImage.new_image_id)
        .join(SubtractionImage, SubtractionImage.id == Sighting.subtraction_id)
        .where(Sighting.provenance_id.in_(prov_ids))
    ).all()
    phot: dict[int, Photometry] = {}
    ids = [s.id for s, _ in rows]
    for m in session.scalars(
        select(Photometry).where(Photometry.sighting_id.in_(ids)).order_by(Photometry.id)
    ):
        phot.setdefault(m.sighting_id, m)
    out = []
    for s, image_id in rows:
        p = phot.get(s.id)
        out.append(
            _S(s.id, image_id, s.ra, s.dec, s.object_id, p.mag if p else None, p.flux_njy if p else None)
        )
    return out


def _match(a: list[_S], b: list[_S], radius_arcsec: float) -> list[tuple[_S, _S]]:
    """One-to-one pairs on the same new image within the radius, nearest first."""
    by_image: dict[int, list[_S]] = defaultdict(list)
    for s in b:
        by_image[s.image_id].append(s)
    candidates: list[tuple[float, int, int, _S, _S]] = []
    dec_window = radius_arcsec / 3600.0
    for sa in a:
        for sb in by_image.get(sa.image_id, ()):
            if abs(sb.dec - sa.dec) > dec_window:
                continue
            d = angular_sep_arcsec(sa.ra, sa.dec, sb.ra, sb.dec)
            if d <= radius_arcsec:
                candidates.append((d, sa.id, sb.id, sa, sb))
    candidates.sort(key=lambda c: (c[0], c[1], c[2]))
    used_a: set[int] = set()
    used_b: set[int] = set()
    pairs = []
    for _d, ia, ib, sa, sb in candidates:
        if ia in used_a or ib in used_b:
            continue
        used_a.add(ia)
        used_b.add(ib)
        pairs.append((sa, sb))
    return pairs


def _alerts(session: Session, prov_ids: list[str]) -> int:
    if not prov_ids:
        return 0
    return int(
        session.scalar(
            select(func.count())
            .select_from(AlertLog)
            .join(Sighting, Sighting.id == AlertLog.sighting_id)
            .where(Sighting.provenance_id.in_(prov_ids))
        )
        or 0
    )


def diff_provenances(session: Session, a: str, b: str, *, match_radius_arcsec: float = 1.0) -> ProvenanceDiff:
    """Compare provenance ``a`` (before) with ``b`` (after); see the module docstring.

    Parameters
    ----------
    session : Session
        Read-only use.
    a, b : str
        Provenance ids (or unique prefixes) of one process.
    match_radius_arcsec : float
        Two sightings on the same new image closer than this are the same, arcsec.

    Raises
    ------
    seechange.errors.MissingRow
        An id that names no provenance (or a prefix that names several).
    ValueError
        Provenances of two different processes.
    """
    pa, pb = _provenance(session, a), _provenance(session, b)
    if pa.process != pb.process:
        raise ValueError(
            f"{pa.id} is a {pa.process} provenance, {pb.id} a {pb.process} one: compare one step"
        )
    out = ProvenanceDiff(pa.process, pa.id, pb.id)
    fa, fb = _flat(pa.parameters or {}), _flat(pb.parameters or {})
    out.parameters = {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}
    upstream_a = sorted(p.id for p in pa.upstreams)
    upstream_b = sorted(p.id for p in pb.upstreams)
    if upstream_a != upstream_b:
        out.parameters["upstreams"] = (upstream_a, upstream_b)
    for table in Base.metadata.sorted_tables:
        if "provenance_id" not in table.c or table.name.startswith("provenance"):
            continue  # the provenance graph's own tables are not products
        counts = tuple(
            int(
                session.scalar(select(func.count()).select_from(table).where(table.c.provenance_id == p)) or 0
            )
            for p in (pa.id, pb.id)
        )
        if any(counts):
            out.products[table.name] = (counts[0], counts[1])
    da, db = _detect_provenances(session, pa), _detect_provenances(session, pb)
    sa, sb = _sightings(session, da), _sightings(session, db)
    pairs = _match(sa, sb, match_radius_arcsec)
    out.sightings, out.matched = (len(sa), len(sb)), len(pairs)
    out.gained, out.lost = len(sb) - len(pairs), len(sa) - len(pairs)
    objs_a = {s.object_id for s in sa if s.object_id is not None}
    objs_b = {s.object_id for s in sb if s.object_id is not None}
    out.objects = (len(objs_a), len(objs_b))
    out.objects_gained, out.objects_lost = len(objs_b - objs_a), len(objs_a - objs_b)
    for x, y in pairs:
        if x.mag is not None and y.mag is not None and math.isfinite(x.mag) and math.isfinite(y.mag):
            out.mag_diffs.append(y.mag - x.mag)
        if x.flux_njy is not None and y.flux_njy is not None:
            out.flux_diffs.append(y.flux_njy - x.flux_njy)
    out.alerts = (_alerts(session, da), _alerts(session, db))
    return out


def _provenance(session: Session, key: str) -> Provenance:
    from seechange.errors import MissingRow

    found = list(session.scalars(select(Provenance).where(Provenance.id.startswith(key)).limit(2)))
    if len(found) != 1:
        raise MissingRow(f"{'no' if not found else 'more than one'} provenance with id {key!r}")
    return found[0]


def latest_two(session: Session, process: str) -> tuple[str, str]:
    """The ids of the two most recently created provenances of ``process`` (older first).

    Raises
    ------
    seechange.errors.MissingRow
        When the process has fewer than two provenances.
    """
    from seechange.errors import MissingRow

    ids = list(
        session.scalars(
            select(Provenance.id)
            .where(Provenance.process == process)
            .order_by(Provenance.created_at.desc(), Provenance.id)
            .limit(2)
        )
    )
    if len(ids) < 2:
        raise MissingRow(f"process {process!r} has {len(ids)} provenance(s); a diff needs two")
    return ids[1], ids[0]
