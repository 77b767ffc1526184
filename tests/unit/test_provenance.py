"""Provenance id hashing and the StepParameters helper (no database)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from seechange.parameters import StepParameters, canonical_json, noncritical, normalize_parameters
from seechange.provenance import provenance_id


@dataclass(frozen=True)
class DetectParams(StepParameters):
    threshold_sigma: float = 5.0
    radius_arcsec: float = 1.5
    bands: tuple[str, ...] = ("g", "r")
    n_threads: int = noncritical(default=1)
    verbose: bool = field(default=False, metadata={"critical": False})


@dataclass(frozen=True)
class TypoParams(StepParameters):
    n_threads: int = field(default=1, metadata={"critcal": False})


@dataclass(frozen=True)
class OuterParams(StepParameters):
    inner: DetectParams = field(default_factory=DetectParams)


BASE_PARAMS = {"threshold": 5.0, "method": "zogy", "radii": [2.0, 4.0]}
UP = ["a" * 20, "b" * 20]


def base_id(**changes: object) -> str:
    args: dict[str, object] = {
        "process": "subtract",
        "code_version": "0.1",
        "parameters": BASE_PARAMS,
        "upstream_ids": UP,
    }
    args.update(changes)
    return provenance_id(**args)  # type: ignore[arg-type]


def test_id_is_20_hex_of_sha256_of_canonical_json() -> None:
    pid = provenance_id("reduce", "0.1", {"b": 1, "a": 2.5}, ["y", "x"])
    expected_text = (
        '{"code_version":"0.1","parameters":{"a":2.5,"b":1},"process":"reduce","upstreams":["x","y"]}'
    )
    assert pid == hashlib.sha256(expected_text.encode()).hexdigest()[:20]
    assert len(pid) == 20
    assert all(c in "0123456789abcdef" for c in pid)


def test_same_inputs_same_id() -> None:
    assert base_id() == base_id()
    # a fresh but equal dict with keys in another order
    assert base_id(parameters={"radii": [2.0, 4.0], "method": "zogy", "threshold": 5.0}) == base_id()


def test_upstream_order_and_duplicates_irrelevant() -> None:
    assert base_id(upstream_ids=list(reversed(UP))) == base_id()
    assert base_id(upstream_ids=[UP[1], UP[0], UP[1]]) == base_id()
    assert base_id(upstream_ids=iter(UP)) == base_id()


@pytest.mark.parametrize(
    "changes",
    [
        {"process": "detect"},
        {"code_version": "0.2"},
        {"parameters": {**BASE_PARAMS, "threshold": 5.000001}},
        {"parameters": {**BASE_PARAMS, "method": "alard-lupton"}},
        {"parameters": {**BASE_PARAMS, "radii": [4.0, 2.0]}},
        {"parameters": {**BASE_PARAMS, "extra": None}},
        {"upstream_ids": [UP[0], "c" * 20]},
        {"upstream_ids": [UP[0]]},
        {"upstream_ids": []},
    ],
)
def test_any_change_changes_id(changes: dict[str, object]) -> None:
    assert base_id(**changes) != base_id()


def test_numpy_scalars_hash_like_python_numbers() -> None:
    assert provenance_id("p", "0.1", {"t": np.float64(5.0), "n": np.int32(3)}, []) == provenance_id(
        "p", "0.1", {"t": 5.0, "n": 3}, []
    )
    assert normalize_parameters({"a": np.array([1.5, 2.5]), "p": Path("x/y.fits")}) == {
        "a": [1.5, 2.5],
        "p": "x/y.fits",
    }


def test_canonical_json_floats_repr_stable_and_no_nan() -> None:
    assert canonical_json({"x": 0.1, "y": 1e-30, "z": -0.0, "s": frozenset({"b", "a"})}) == (
        '{"s":["a","b"],"x":0.1,"y":1e-30,"z":0.0}'
    )
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})
    with pytest.raises(TypeError):
        canonical_json({1: "non-string key"})
    with pytest.raises(TypeError):
        canonical_json({"x": object()})


def test_step_parameters_critical_excludes_non_critical() -> None:
    p = DetectParams(threshold_sigma=4.5, n_threads=8, verbose=True)
    assert p.critical() == {"threshold_sigma": 4.5, "radius_arcsec": 1.5, "bands": ["g", "r"]}
    with pytest.raises(AttributeError):  # frozen
        p.threshold_sigma = 6.0  # type: ignore[misc]


def test_non_critical_parameter_does_not_change_id() -> None:
    a = provenance_id("detect", "0.1", DetectParams(n_threads=1), UP)
    b = provenance_id("detect", "0.1", DetectParams(n_threads=16, verbose=True), UP)
    assert a == b
    assert a == provenance_id("detect", "0.1", DetectParams().critical(), UP)


def test_critical_parameter_changes_id() -> None:
    a = provenance_id("detect", "0.1", DetectParams(), UP)
    assert provenance_id("detect", "0.1", DetectParams(threshold_sigma=5.5), UP) != a
    assert provenance_id("detect", "0.1", DetectParams(bands=("g",)), UP) != a


def test_nested_step_parameters_use_their_critical_part() -> None:
    a = OuterParams(inner=DetectParams(n_threads=1))
    b = OuterParams(inner=DetectParams(n_threads=4))
    assert a.critical() == b.critical() == {"inner": DetectParams().critical()}
    assert provenance_id("x", "0.1", a, []) == provenance_id("x", "0.1", b, [])


def test_non_critical_typo_is_an_error() -> None:
    with pytest.raises(TypeError, match="n_threads.*critcal"):
        TypoParams().critical()
    with pytest.raises(TypeError, match="NON_CRITICAL"):  # the old class-level list is refused, not ignored

        @dataclass(frozen=True)
        class OldStyle(StepParameters):
            NON_CRITICAL = frozenset({"n_threads"})
            n_threads: int = 1


def test_empty_process_rejected() -> None:
    with pytest.raises(ValueError):
        provenance_id("", "0.1", {}, [])
