"""``--set step.key=value``: parsing, merging over a parameters file, TOML that loads back, bad names."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from seechange.commands.stream import kafka_options
from seechange.pipeline.overrides import changed_steps, merge_sets, parse_set, to_toml, write_params_file
from seechange.pipeline.parameters import load_parameters


def test_parse_set_reads_toml_values() -> None:
    assert parse_set("detect.threshold=4.5") == (["detect", "threshold"], 4.5)
    assert parse_set("subtract.zogy.flux_error_fraction = 0.01") == (
        ["subtract", "zogy", "flux_error_fraction"],
        0.01,
    )
    assert parse_set("detect.negative=false") == (["detect", "negative"], False)
    assert parse_set("detect.measure.aper_radii_fwhm=[1.0, 2.5]")[1] == [1.0, 2.5]
    assert parse_set("reduce.name=abc") == (["reduce", "name"], "abc")
    for bad in ("threshold=4", "detect.threshold", "detect..x=1"):
        with pytest.raises(ValueError, match="step.key=value"):
            parse_set(bad)


def test_merge_and_toml_round_trip() -> None:
    base = {
        "detect": {"threshold": 5.5, "measure": {"aper_radii_fwhm": [1.0]}},
        "subtract": {"resample_order": 3},
    }
    merged = merge_sets(base, ["detect.threshold=4.0", "detect.measure.aper_radii_fwhm=[1.0, 2.5]"])
    assert merged == {
        "detect": {"threshold": 4.0, "measure": {"aper_radii_fwhm": [1.0, 2.5]}},
        "subtract": {"resample_order": 3},
    }
    assert base["detect"]["threshold"] == 5.5  # not modified
    assert tomllib.loads(to_toml(merged)) == merged


def test_write_params_file(tmp_path: Path) -> None:
    base = tmp_path / "base.toml"
    base.write_text("[subtract]\nresample_order = 1\n")
    path = write_params_file(base, ["detect.threshold=4.0"], tmp_path)
    assert path == write_params_file(base, ["detect.threshold=4.0"], tmp_path)  # same changes, same file
    params = load_parameters(path)
    assert params.detect.threshold == 4.0 and params.subtract.resample_order == 1
    assert changed_steps(load_parameters(base), params) == {"detect": True}
    with pytest.raises(ValueError, match="thresold"):
        write_params_file(None, ["detect.thresold=4.0"], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["base.toml", path.name])


def test_kafka_options_file_then_command_line(tmp_path: Path) -> None:
    props = tmp_path / "client.properties"
    props.write_text(
        "# broker\nsecurity.protocol=SASL_SSL\nsasl.mechanism = SCRAM-SHA-512\nsasl.password=s3=cret\n"
    )
    got = kafka_options(("sasl.mechanism=PLAIN",), props)
    assert got == {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "sasl.password": "s3=cret"}


def test_connection_never_shows_its_secrets() -> None:
    from seechange.client import Connection

    conn = Connection("broker:9093", {"sasl.username": "alice", "sasl.password": "hunter2"})
    assert "hunter2" not in repr(conn) and "alice" not in repr(conn) and "sasl.password" in repr(conn)
    assert conn.consumer_config("g")["sasl.password"] == "hunter2"
