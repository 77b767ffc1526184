"""Step parameters from TOML: overrides apply, unknown names are one clear error, provenance changes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from seechange.config import Settings, load_settings
from seechange.pipeline.parameters import PipelineParameters, load_parameters
from seechange.provenance import provenance_id


def test_defaults_without_a_file() -> None:
    assert load_parameters(None) == PipelineParameters()


def test_overrides_apply_and_change_the_provenance(tmp_path: Path) -> None:
    path = tmp_path / "params.toml"
    path.write_text(
        "[detect]\nthreshold = 5.5\n[detect.measure]\naper_radii_fwhm = [1.0, 2.5]\n"
        "[subtract]\nresample_order = 3\n[subtract.zogy]\nflux_error_fraction = 0.01\n"
    )
    params = load_parameters(path)
    assert params.detect.threshold == 5.5
    assert params.detect.measure.aper_radii_fwhm == (1.0, 2.5)
    assert params.subtract.resample_order == 3
    assert params.subtract.zogy.flux_error_fraction == 0.01
    assert params.reduce == PipelineParameters().reduce
    default = PipelineParameters().detect
    assert provenance_id("detect", "0.1", params.detect.critical(), ["u"]) != provenance_id(
        "detect", "0.1", default.critical(), ["u"]
    )


@pytest.mark.parametrize(
    "text, words",
    [
        ("[detect]\nthreshhold = 5\n", "unknown detect parameter(s): threshhold"),
        ("[detekt]\nthreshold = 5\n", "unknown step table(s): detekt"),
        ("[subtract.zogy]\nflux_err = 0.01\n", "unknown subtract.zogy parameter(s): flux_err"),
        ("[subtract]\nzogy = 0.01\n", "subtract.zogy is a table of parameters"),
    ],
)
def test_unknown_names_are_one_clear_error(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "params.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")) as info:
        load_parameters(path)
    assert "\n" not in str(info.value)


def test_threads_setting_reaches_every_step_without_changing_provenance() -> None:
    params = load_parameters(None, threads=3)
    assert params.subtract.threads == 3
    assert params.subtract.critical() == PipelineParameters().subtract.critical()


def test_threads_setting_defaults_to_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEECHANGE_THREADS", raising=False)
    assert Settings().threads == (os.cpu_count() or 1)
    monkeypatch.setenv("SEECHANGE_THREADS", "3")
    assert load_settings().threads == 3
