"""What an installed (non-editable) package needs beside its modules is declared as package data."""

from __future__ import annotations

import tomllib
from pathlib import Path

import seechange
from seechange.config import PROJECT_ROOT
from seechange.streaming.registry import DEFAULT_SCHEMAS_DIR

PACKAGE_DIR = Path(seechange.__file__).resolve().parent


def _package_data_files() -> set[Path]:
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["seechange"]
    return {p.relative_to(PACKAGE_DIR) for pattern in patterns for p in PACKAGE_DIR.glob(pattern)}


def test_schemas_are_found_inside_the_package() -> None:
    assert DEFAULT_SCHEMAS_DIR.parent == PACKAGE_DIR
    assert (DEFAULT_SCHEMAS_DIR / "ids.json").is_file()
    # the package's schemas are the repository's top-level schemas/, not a copy that could drift
    assert DEFAULT_SCHEMAS_DIR.resolve() == (PROJECT_ROOT / "schemas").resolve()


def test_every_schema_file_is_package_data() -> None:
    declared = _package_data_files()
    schema_files = {
        Path("schemas") / p.relative_to(PROJECT_ROOT / "schemas")
        for p in (PROJECT_ROOT / "schemas").rglob("*")
        if p.is_file()
    }
    assert schema_files, "no schema files found"
    assert schema_files <= declared, f"not shipped in a wheel: {sorted(map(str, schema_files - declared))}"


def test_migrations_and_service_configs_are_package_data() -> None:
    declared = _package_data_files()
    needed = {
        p.relative_to(PACKAGE_DIR)
        for sub in ("models/migrations", "localservices")
        for p in (PACKAGE_DIR / sub).rglob("*")
        if p.is_file()
        and p.suffix in {".py", ".ini", ".xml", ".properties"}
        and "__pycache__" not in p.parts
        and not (sub == "localservices" and p.suffix == ".py")
    }
    needed.add(Path("models/alembic.ini"))
    assert needed <= declared, f"not shipped in a wheel: {sorted(map(str, needed - declared))}"
