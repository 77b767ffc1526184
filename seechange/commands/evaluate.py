"""``seechange evaluate sim|real``: the quality figures, with their targets (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import click

from seechange.commands import parse_size
from seechange.config import PROJECT_ROOT, Settings

DEFAULT_REAL_DATA = PROJECT_ROOT.parent / "shared" / "data" / "decam-sfft"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


def _pair(res: dict[str, Any], name: str) -> str:
    """``"<blank> / <noisy>"`` of a limit-check figure."""
    return f"{_fmt(res[f'{name}_blank'])} / {_fmt(res[f'{name}_noisy'])}"


def print_table(title: str, rows: list[tuple[str, Any, str, Any]]) -> bool:
    """Print ``(figure, value, target, check)`` rows with PASS/FAIL; True when every checked row passes."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("figure", "value", "target", "result"):
        table.add_column(col)
    ok = True
    for name, value, target, check in rows:
        if check is None:
            verdict = ""
        else:
            passed = isinstance(value, (int, float)) and math.isfinite(float(value)) and bool(check(value))
            ok &= passed
            verdict = "[green]PASS[/green]" if passed else "[red]FAIL[/red]"
        table.add_row(name, _fmt(value), target, verdict)
    Console().print(table)
    return ok


@click.group("evaluate")
def evaluate() -> None:
    """Measure the pipeline's quality against truth (simulated nights) or injections (real DECam data)."""


@evaluate.command("sim")
@click.option("--size", default="512x1024", show_default=True, help="CCD size NXxNY, pixels.")
@click.option("--fields", default=1, show_default=True, help="Simulated fields.")
@click.option(
    "--epochs", default=5, show_default=True, help="Epochs per field (the first 3 build references)."
)
@click.option("--seed", default=42, show_default=True)
@click.option(
    "--instrument",
    type=click.Choice(["decam", "ls4"], case_sensitive=False),
    default="decam",
    show_default=True,
    help="Simulated camera.",
)
@click.option(
    "--ccds",
    default=1,
    show_default=True,
    help="CCDs per exposure (LS4: spread over its quadrants, so several bands); figures also per CCD.",
)
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Data root for the night (default: a temporary folder).",
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(path_type=Path),
    default=None,
    help="Write every figure (and per-transient / per-false-positive details) here.",
)
@click.option(
    "--limit-rounds",
    default=4,
    show_default=True,
    help="Injection rounds (40 sources each, on up to 2 difference images) checking the non-detection "
    "limits against recovery; 0 skips the check.",
)
@click.pass_obj
def evaluate_sim(
    settings: Settings,
    size: str,
    fields: int,
    epochs: int,
    seed: int,
    instrument: str,
    ccds: int,
    data_dir: Path | None,
    json_out: Path | None,
    limit_rounds: int,
) -> None:
    """Simulate a night, run reduce/subtract/detect in-process into a fresh database, compare with truth."""
    from seechange.evaluation.simulated import TARGETS, evaluate_night_inprocess
    from seechange.localservices import endpoints
    from seechange.sim.instrument import sim_camera

    ep = endpoints(settings, kafka_needed=False)
    assert ep.database_url
    nx, ny = parse_size(size)
    camera = sim_camera(instrument)
    try:
        ccdnums = camera.pick_ccds(ccds)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ccds") from exc
    with tempfile.TemporaryDirectory(prefix="seechange-eval-") as tmp:
        root = data_dir if data_dir is not None else Path(tmp)
        res = evaluate_night_inprocess(
            root,
            ep.database_url,
            seed=seed,
            n_fields=fields,
            n_epochs=epochs,
            size=(nx, ny),
            association_radius_arcsec=ep.association_radius_arcsec,
            limit_rounds=limit_rounds,
            instrument=camera.name,
            ccdnums=ccdnums,
        )
    if json_out is not None:
        json_out.write_text(json.dumps(res, indent=1, default=float) + "\n")
    rows = [
        (name, res.get(name, float("nan")), target, check)
        for name, (target, check) in TARGETS.items()
        if name in res or not name.startswith("limit_")
    ]
    if "limit_dm50" in res:
        rows += [
            ("limit_dm50_blank (mag)", res["limit_dm50_blank"], "report", None),
            ("limit_dm50_noisy (mag)", res["limit_dm50_noisy"], "report", None),
            ("limit_dm50_noisy_vs_median (mag)", res["limit_dm50_noisy_vs_median"], "report", None),
            ("limit_noise_ratio_noisy_median", res["limit_noise_ratio_noisy_median"], "", None),
            ("limit_score_spread blank / noisy", _pair(res, "limit_score_spread"), "~1 (report)", None),
            ("limit_peak_minus_expected blank / noisy", _pair(res, "limit_peak_minus_expected"), "", None),
            ("limit_n_injected (noisy)", f"{res['limit_n_injected']} ({res['limit_n_noisy']})", "", None),
        ]
    rows += [
        ("n_subtractions", res["n_subtractions"], "", None),
        ("n_transient_epochs_snr10", res["n_transient_epochs_snr10"], "", None),
        ("false_positives (total)", res["false_positives"], "", None),
        ("n_pulls", res["n_pulls"], "", None),
    ]
    ok = print_table(
        f"simulated {camera.name} night {nx}x{ny}, {len(ccdnums)} CCD(s), {fields} field(s) x {epochs} epochs, "
        f"seed {seed}",
        rows,
    )
    per_ccd = [
        (
            f"CCD {ccd}",
            (
                f"completeness {_fmt(c['completeness_snr10'])} "
                f"({c['n_transient_epochs_snr10']} epochs at S/N >= 10), "
                f"false positives {c['false_positives']} in {c['n_subtractions']} subtraction(s) = "
                f"{_fmt(c['false_positives_per_ccd'])} per full CCD"
            ),
            "",
            None,
        )
        for ccd, c in res["per_ccd"].items()
    ]
    per_ccd.append(
        (
            "time per CCD image (s)",
            ", ".join(f"{k} {v:.2f}" for k, v in res["timings_per_ccd"].items()),
            "",
            None,
        )
    )
    print_table(f"{camera.name} per CCD", per_ccd)
    click.echo("all targets met" if ok else "some targets missed")


@evaluate.command("real")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path),
    default=None,
    help=f"Folder of real reduced images, searched recursively (default {DEFAULT_REAL_DATA}).",
)
@click.option(
    "--layout",
    type=click.Choice(["folder", "decam-sfft"]),
    default="folder",
    show_default=True,
    help="folder: any reduced images, references found on the sky; decam-sfft: the fixed pairs of that set.",
)
@click.option("--n-ref", default=3, show_default=True, help="Members of each reference (folder layout).")
@click.option(
    "--known",
    multiple=True,
    help="A real transient RA,DEC (deg) not to count as a false positive (folder layout; repeatable).",
)
@click.option(
    "--psfex/--no-psfex",
    default=True,
    show_default=True,
    help="PSFs from the PSFEx models beside the images (folder layout), as the pipeline's ingest does.",
)
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None)
def evaluate_real(
    data_dir: Path | None,
    layout: str,
    n_ref: int,
    known: tuple[str, ...],
    psfex: bool,
    json_out: Path | None,
) -> None:
    """Injection completeness, pulls, S_corr noise and good sightings on real reduced images."""
    folder = data_dir if data_dir is not None else DEFAULT_REAL_DATA
    if not folder.is_dir():
        raise click.ClickException(f"no real data folder {folder} (pass --data DIR)")
    if layout == "decam-sfft":
        _evaluate_decam_sfft(folder, json_out)
        return
    from seechange.evaluation.real_folder import evaluate_real_folder

    try:
        sky = [(float(k.split(",")[0]), float(k.split(",")[1])) for k in known]
    except (ValueError, IndexError) as exc:
        raise click.ClickException(f"--known wants RA,DEC in degrees: {exc}") from exc
    res = evaluate_real_folder(folder, n_ref=n_ref, known_sky=sky, psfex=psfex)
    if json_out is not None:
        json_out.write_text(json.dumps(res, indent=1, default=float) + "\n")
    per = [
        (
            f"{Path(f['file']).name[:34]}{'' if f['independent'] else ' (shares exposures: not pooled)'}",
            (
                f"S_corr {_fmt(f['scorr_mad_std'])}, good {f['other_good_sightings']} "
                f"({_fmt(f['good_sightings_per_ccd'])}/CCD), c10 {_fmt(f['completeness_snr_ge_10'])}, "
                f"snr50 {_fmt(f['snr50'])}, pulls {_fmt(f['pull_std'])}, ratio {_fmt(f['flux_ratio_median'])}, "
                f"psf {f['psf_source']}, {f['area_px']} px searched"
            ),
            "",
            None,
        )
        for f in res["per_image"]
    ]
    rows = [
        *per,
        ("scorr_std (empty pixels)", res["scorr_std_mean"], "1.00 +/- 0.05", lambda v: abs(v - 1.0) <= 0.05),
        ("completeness_snr_ge_10", res["completeness_snr_ge_10"], ">= 0.95", lambda v: v >= 0.95),
        ("snr50", res["snr50"], "<= 6", lambda v: v <= 6.0),
        ("pull_std", res["pull_std"], "0.8 - 1.25", lambda v: 0.8 <= v <= 1.25),
        ("flux_ratio_median", res["flux_ratio_median"], "report", None),
        ("good sightings per full CCD", res["good_sightings_per_ccd"], "<= 2", lambda v: v <= 2.0),
        ("good sightings / area (px)", f"{res['good_sightings']} / {res['area_px']}", "", None),
        ("images left out", len(res["skipped"]), "report", None),
    ]
    for name, why in res["skipped"]:
        click.echo(f"left out {name}: {why}")
    ok = print_table(f"real reduced images in {folder} (references by sky)", rows)
    click.echo("all targets met" if ok else "some targets missed")


def _evaluate_decam_sfft(folder: Path, json_out: Path | None) -> None:
    """The fixed pairs of decam-sfft (new: each OBS04 frame and stack, reference: the OBS18 stack)."""
    from seechange.evaluation.real import evaluate_real_decam

    res = evaluate_real_decam(folder)
    if json_out is not None:
        json_out.write_text(json.dumps(res, indent=1, default=float) + "\n")
    fps = res["false_positives_per_frame"]
    rows = [
        ("completeness_snr_ge_10", res["completeness_snr_ge_10"], ">= 0.90", lambda v: v >= 0.90),
        ("snr50", res["snr50"], "~5 (report)", None),
        ("scorr_std_mean", res["scorr_std_mean"], "1.00 +/- 0.05", lambda v: abs(v - 1.0) <= 0.05),
        ("pull_std", res["pull_std"], "0.8 - 1.25", lambda v: 0.8 <= v <= 1.25),
        ("false_positives_per_frame (max)", max(fps) if fps else float("nan"), "report", None),
        ("transient_found_all", int(res["transient_found_all"]), "== 1", lambda v: v == 1),
    ]
    ok = print_table(f"real DECam pairs in {folder}", rows)
    click.echo("all targets met" if ok else "some targets missed")
