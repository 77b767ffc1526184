"""One-off parameter changes (``--set step.key=value``) turned into a parameters file the stages read.

``detect.threshold=4.5`` or ``subtract.zogy.flux_error_fraction=0.01`` name a field of a step's parameters
(see :mod:`seechange.pipeline.parameters`); the value is read as a TOML value (``4.5``, ``true``,
``[1.0, 2.5]``, ``"text"``), and as a plain string when it is not one. The changes are merged over the
current parameters file, checked by loading the result, and written as TOML, so every service started with
``SEECHANGE_PARAMS_FILE`` pointing at it runs with them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any

from seechange.imageio import write_bytes_atomic
from seechange.pipeline.parameters import PipelineParameters, load_parameters

__all__ = ["changed_steps", "merge_sets", "parse_set", "to_toml", "write_params_file"]


def parse_set(item: str) -> tuple[list[str], Any]:
    """``"detect.threshold=4.5"`` -> ``(["detect", "threshold"], 4.5)``.

    Raises
    ------
    ValueError
        Without ``=`` or without a ``step.key`` name (one line).
    """
    name, sep, text = item.partition("=")
    keys = [k.strip() for k in name.split(".")]
    if not sep or len(keys) < 2 or not all(keys):
        raise ValueError(f"--set {item!r}: expected step.key=value, e.g. detect.threshold=4.5")
    text = text.strip()
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return keys, value


def merge_sets(base: dict[str, Any], items: list[str]) -> dict[str, Any]:
    """``base`` (the tables of a parameters file) with every ``step.key=value`` of ``items`` applied."""
    out = json.loads(json.dumps(base))  # a deep copy of plain TOML data
    for item in items:
        keys, value = parse_set(item)
        table = out
        for key in keys[:-1]:
            table = table.setdefault(key, {})
            if not isinstance(table, dict):
                raise ValueError(f"--set {item!r}: {key} is a value, not a table")  # noqa: TRY004 - a user mistake
        table[keys[-1]] = value
    return out


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise ValueError(f"cannot write {v!r} as a TOML value")


def to_toml(tables: dict[str, Any], prefix: str = "") -> str:
    """Nested tables of scalars and lists as TOML text (sorted keys: the same tables give the same text)."""
    lines: list[str] = []
    scalars = {k: v for k, v in sorted(tables.items()) if not isinstance(v, dict)}
    if prefix and scalars:
        lines.append(f"[{prefix}]")
    lines += [f"{k} = {_value(v)}" for k, v in scalars.items()]
    for k, v in sorted(tables.items()):
        if isinstance(v, dict):
            sub = to_toml(v, f"{prefix}.{k}" if prefix else k)
            if sub:
                lines += ["", sub] if lines else [sub]
    return "\n".join(lines)


def write_params_file(base_file: Path | None, items: list[str], directory: Path) -> Path:
    """Write ``base_file`` with ``items`` applied as ``directory/params-<hash>.toml``; its path.

    The name hashes the content, so the same changes give the same file. The result is loaded before it is
    kept: an unknown step or parameter name is a ``ValueError`` naming it.
    """
    base: dict[str, Any] = {}
    if base_file is not None:
        with open(base_file, "rb") as fh:
            base = tomllib.load(fh)
    text = to_toml(merge_sets(base, items)) + "\n"
    path = Path(directory) / f"params-{hashlib.sha256(text.encode()).hexdigest()[:10]}.toml"
    tmp = Path(directory) / f".{path.name}.check"
    write_bytes_atomic(tmp, text.encode())
    try:
        load_parameters(tmp)  # raises on an unknown name
    finally:
        tmp.unlink()
    write_bytes_atomic(path, text.encode())
    return path


def changed_steps(old: PipelineParameters, new: PipelineParameters) -> dict[str, bool]:
    """For each step whose parameters differ: True when a critical one changed (a new provenance)."""
    out: dict[str, bool] = {}
    for f in dataclasses.fields(old):
        a, b = getattr(old, f.name), getattr(new, f.name)
        if a != b:
            out[f.name] = a.critical() != b.critical()
    return out
