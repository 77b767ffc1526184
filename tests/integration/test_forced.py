"""Forced photometry and non-detection limits on a simulated night (in process through pipeline/chain.py,
real PostgreSQL): before a transient's rise its forced flux is consistent with zero, after it agrees with
the truth; the errors are calibrated on blank sky; the alert packets carry the forced points and limits as
of their sighting; ``seechange lightcurve`` prints, writes and plots them.

The night has transient-free epochs of which only the first 2 build the reference (``n_ref_images=2``), so
the next ones are subtracted before any transient rises; the transients' Objects are made at the first
epoch with flux, and ``seechange forced --all`` measures them backwards on the earlier difference images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.table import Table
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session

from seechange.commands.forced import forced_cmd
from seechange.commands.stream import lightcurve_cmd
from seechange.config import Settings
from seechange.improc.forced import ForcedParams, forced_psf_photometry
from seechange.models import Exposure, ForcedPhotometry, Image, Object, Sighting, SubtractionImage
from seechange.models.session import make_engine, make_session_factory
from seechange.pipeline.alert import build_alert
from seechange.pipeline.chain import InProcessChain
from seechange.pipeline.parameters import PipelineParameters
from seechange.pipeline.subtract import ReferenceParams, read_zogy
from seechange.sim.night import NightSummary, simulate_night
from seechange.sim.truth import read_truth
from seechange.sphere import angular_sep_arcsec
from tests.integration._night import isolated_run

SEED, N_FIELDS, N_EPOCHS, N_CLEAN, SIZE = 5, 2, 8, 5, (1024, 2048)
MATCH_ARCSEC = 1.0


def _truth_by_subtraction(session: Session, root: Path, night: NightSummary) -> dict[int, tuple[Any, Table]]:
    """Subtraction id -> (exposure record, truth table of its new exposure)."""
    out = {}
    for e in night.exposures:
        exp = session.scalars(select(Exposure).where(Exposure.filepath == str(e.raw_path))).one()
        img = session.scalars(select(Image).where(Image.exposure_id == exp.id)).one()
        sub = session.scalars(select(SubtractionImage).where(SubtractionImage.new_image_id == img.id)).first()
        if sub is not None:
            out[sub.id] = (e, read_truth(root, e.expname, e.ccdnum))
    return out


def _points(session: Session, truth: dict[int, tuple[Any, Table]]) -> list[dict[str, Any]]:
    """Every forced point of a transient's Object, with the transient's true flux on that image."""
    objects = list(session.scalars(select(Object)))
    forced = {(r.subtraction_id, r.object_id): r for r in session.scalars(select(ForcedPhotometry))}
    out = []
    for sub_id, (e, t) in truth.items():
        for row in t[t["kind"] == "transient"]:
            near = [
                o
                for o in objects
                if angular_sep_arcsec(o.ra, o.dec, float(row["ra"]), float(row["dec"])) < MATCH_ARCSEC
            ]
            if len(near) != 1 or (sub_id, near[0].id) not in forced:
                continue
            f = forced[(sub_id, near[0].id)]
            out.append({"epoch": e.epoch, "true": float(row["flux_e"]), "row": f, "name": near[0].name})
    return out


@pytest.mark.timeout(900)
def test_forced_photometry_before_and_after_the_rise(test_settings: Settings, tmp_path: Path) -> None:
    with isolated_run(test_settings, "fp") as settings:
        root = settings.data_dir
        night = simulate_night(
            root, seed=SEED, n_fields=N_FIELDS, n_epochs=N_EPOCHS, size=SIZE, n_ref_epochs=N_CLEAN
        )
        engine = make_engine(settings.database_url)
        sessions = make_session_factory(engine)
        params = PipelineParameters(reference=ReferenceParams(n_ref_images=2))
        chain = InProcessChain(sessions, root, params, radius_arcsec=1.5, threads=1)
        subs = chain.night([str(e.raw_path) for e in night.exposures], alert=True)
        assert len(subs) == N_FIELDS * (N_EPOCHS - 2)
        with sessions() as s:
            forward = s.query(ForcedPhotometry).count()
            n_objects = s.query(Object).count()
        assert forward > 0

        runner = CliRunner()
        out = runner.invoke(forced_cmd, ["--all"], obj=settings)
        assert out.exit_code == 0, out.output
        backward = int(out.output.split()[0])
        assert backward > 0
        again = runner.invoke(forced_cmd, ["--all"], obj=settings)  # idempotent: nothing new
        assert again.exit_code == 0 and again.output.startswith("0 new forced point(s)"), again.output

        with sessions() as s:
            truth = _truth_by_subtraction(s, root, night)
            points = _points(s, truth)
            pre = [p for p in points if p["true"] == 0.0]
            post = [p for p in points if p["true"] > 0.0]
            assert all(p["epoch"] < N_CLEAN for p in pre) and all(p["epoch"] >= N_CLEAN for p in post)
            assert len(pre) >= 30 and len(post) >= 30, (len(pre), len(post))

            # before the rise: consistent with zero
            f = np.array([p["row"].flux for p in pre])
            e = np.array([p["row"].flux_err for p in pre])
            w = 1.0 / e**2
            mean, mean_err = float(np.sum(w * f) / np.sum(w)), float(1.0 / np.sqrt(np.sum(w)))
            pulls = f / e
            print(
                f"pre-rise: n={len(pre)} weighted mean {mean:.1f} +- {mean_err:.1f} e-, pulls std {pulls.std(ddof=1):.3f}"
            )
            assert abs(mean) < 2.0 * mean_err
            assert 0.8 <= pulls.std(ddof=1) <= 1.25
            assert not any(p["row"].detected for p in pre)

            # after the rise: the truth
            f = np.array([p["row"].flux for p in post])
            e = np.array([p["row"].flux_err for p in post])
            t = np.array([p["true"] for p in post])
            pulls = (f - t) / e
            ratio = np.median(f / t)
            print(
                f"post-rise: n={len(post)} pulls mean {pulls.mean():.3f} std {pulls.std(ddof=1):.3f}, "
                f"median flux/true {ratio:.4f}"
            )
            assert abs(pulls.mean()) < 3.0 / np.sqrt(len(post))
            assert 0.8 <= pulls.std(ddof=1) <= 1.25
            assert abs(ratio - 1.0) < 0.01

            # limits from the local noise, their non-detections
            for p in pre:
                r = p["row"]
                assert r.lim_mag == pytest.approx(r.zero_point - 2.5 * np.log10(5.0 * r.flux_err), abs=1e-9)
            lims = np.array([p["row"].lim_mag for p in pre])
            print(f"pre-rise 5-sigma limits: {np.min(lims):.2f} to {np.max(lims):.2f} mag")
            assert np.ptp(lims) > 0.01  # local: not one number per image

            # blank sky: the errors are calibrated (pulls of forced fluxes far from every true source)
            rng = np.random.default_rng(1)
            blank = []
            for sub_id, (_, tt) in truth.items():
                sub = s.get(SubtractionImage, sub_id)
                assert sub is not None
                res, _ = read_zogy(root, sub.filepath)
                ny, nx = res.diff.shape
                b = res.border_px + 20
                xs, ys = rng.uniform(b, nx - b, 2000), rng.uniform(b, ny - b, 2000)
                src = tt[tt["flux_e"] > 0]
                d = np.min(
                    np.hypot(xs[:, None] - np.asarray(src["x"]), ys[:, None] - np.asarray(src["y"])), axis=1
                )
                keep = d > 4 * res.fwhm_px
                fr = forced_psf_photometry(
                    res.diff,
                    res.diff_variance,
                    res.flags,
                    res.psf_d,
                    xs[keep],
                    ys[keep],
                    fwhm_px=res.fwhm_px,
                    renorm=res.renorm_factor,
                    score_var=res.score_var,
                    f_s=res.f_s,
                    params=ForcedParams(),
                )
                ok = np.isfinite(fr.flux)
                blank.append(fr.flux[ok] / fr.flux_err[ok])
            bp = np.concatenate(blank)
            print(f"blank sky: n={bp.size} pulls mean {bp.mean():.3f} std {bp.std():.3f}")
            assert bp.size > 3000
            assert 0.9 <= bp.std() <= 1.1 and abs(bp.mean()) < 0.1

            # the alert of a detection carries the earlier forced points and the limits, as of the sighting
            p = max(post, key=lambda q: q["row"].mjd)
            sighting = s.get(Sighting, p["row"].sighting_id)
            assert sighting is not None and sighting.object is not None
            packet = build_alert(s, root, sighting)
            fp, nd = packet["prvForcedPhotometry"], packet["prvNonDetections"]
            mine = sorted(
                (
                    r
                    for r in s.scalars(
                        select(ForcedPhotometry).where(ForcedPhotometry.object_id == sighting.object_id)
                    )
                ),
                key=lambda r: r.mjd,
            )
            assert [q["subtractionId"] for q in fp] == [
                r.subtraction_id for r in mine if r.mjd <= sighting.mjd
            ]
            assert [q["subtractionId"] for q in nd] == [
                r.subtraction_id for r in mine if not r.detected and r.mjd < sighting.mjd
            ]
            assert len(nd) >= 1 and all(q["mjd"] < sighting.mjd for q in nd)
            first = build_alert(s, root, min(sighting.object.sightings, key=lambda q: q.mjd))
            assert all(q["mjd"] <= first["sighting"]["mjd"] for q in first["prvForcedPhotometry"])
            narrow = build_alert(s, root, sighting, history_days=1e-6)
            assert [q["subtractionId"] for q in narrow["prvForcedPhotometry"]] == [sighting.subtraction_id]
            assert narrow["prvNonDetections"] is None
            name = p["name"]

        ecsv, csv, png = tmp_path / "lc.ecsv", tmp_path / "lc.csv", tmp_path / "lc.png"
        out = runner.invoke(
            lightcurve_cmd, [name, "--ecsv", str(ecsv), "--csv", str(csv), "--plot", str(png)], obj=settings
        )
        assert out.exit_code == 0, out.output
        table = Table.read(ecsv, format="ascii.ecsv")
        kinds = set(table["kind"])
        assert kinds == {"detection", "forced", "limit"}, kinds
        assert len(Table.read(csv, format="ascii.csv")) == len(table)
        assert png.stat().st_size > 10_000
        print(
            f"lightcurve of {name}: {len(table)} rows ({n_objects} objects, {forward} forward + {backward} backward forced points); {png}"
        )
        print(out.output)
        engine.dispose()
