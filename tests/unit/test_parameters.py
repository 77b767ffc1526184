"""Step parameters from TOML: overrides apply, unknown names are one clear error, provenance changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from seechange.parameters import PipelineParameters, load_parameters
from seechange.provenance import provenance_id


def test_defaults_without_a_file() -> None:
    assert load_parameters(None) == PipelineParameters()


def test_overrides_apply_and_change_the_provenance(tmp_path: Path) -> None:
    path = tmp_path / "params.toml"
    path.write_text('[detect]\nthreshold = 5.5\naper_radii_fwhm = [1.0, 2.5]\n[subtract]\nresample_order = 3\n')
    params = load_parameters(path)
    assert params.detect.threshold == 5.5
    assert params.detect.aper_radii_fwhm == (1.0, 2.5)
    assert params.subtract.resample_order == 3
    assert params.reduce == PipelineParameters().reduce
    default = PipelineParameters().detect
    assert provenance_id("detect", "0.1", params.detect.critical(), ["u"]) != \
        provenance_id("detect", "0.1", default.critical(), ["u"])


@pytest.mark.parametrize("text, words", [
    ("[detect]\nthreshhold = 5\n", "unknown detect parameter(s): threshhold"),
    ("[detekt]\nthreshold = 5\n", "unknown step table(s): detekt"),
])
def test_unknown_names_are_one_clear_error(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "params.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")) as info:
        load_parameters(path)
    assert "\n" not in str(info.value)
