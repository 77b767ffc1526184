"""``seechange instruments`` and ``seechange simulate --instrument/--ccds/--format`` (no services)."""

from __future__ import annotations

from pathlib import Path

from astropy.io import fits
from click.testing import CliRunner

from seechange.cli import main
from seechange.pipeline.ingest import scan_raw_file


def test_instruments_lists_both_cameras() -> None:
    result = CliRunner().invoke(main, ["instruments", "--ccds"])
    assert result.exit_code == 0, result.output
    assert "DECam" in result.output and "62 science CCDs" in result.output and '0.263"/px' in result.output
    assert "LS4" in result.output and "32 science CCDs" in result.output and '1"/px' in result.output
    assert "37:N6" in result.output and "17:Q3C1" in result.output


def test_simulate_ls4_multi_extension_compressed(tmp_path: Path) -> None:
    args = ["simulate", "--out", str(tmp_path), "--instrument", "ls4", "--ccds", "4", "--format", "mef-fz"]
    args += ["--fields", "1", "--epochs", "1", "--ref-epochs", "0", "--size", "128x256"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    files = sorted((tmp_path / "raw").rglob("*.fits.fz"))
    assert len(files) == 1 and files[0].name.startswith("ls4_") and files[0].name.endswith("_ori.fits.fz")
    with fits.open(files[0]) as hdul:
        assert len(hdul) == 5 and hdul[0].header["INSTRUME"] == "LS4" and hdul[0].header["EXPTIME"] == 45.0
        assert [h.name for h in hdul[1:]] == ["Q1C1", "Q2C1", "Q3C1", "Q4C1"]
    outcomes = scan_raw_file(files[0])
    assert [(o.info.section_id, o.info.band) for o in outcomes if o.info] == [
        ("1", "i"),
        ("9", "i"),
        ("17", "g"),
        ("25", "z"),
    ]
    assert all((tmp_path / "calib" / "LS4" / n / "flat.fits").is_file() for n in ("1", "9", "17", "25"))


def test_simulate_refuses_too_many_ccds(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["simulate", "--out", str(tmp_path), "--instrument", "ls4", "--ccds", "40"]
    )
    assert result.exit_code == 2 and "--ccds must be 1..32" in result.output
