"""The arrows go one way: ``consumers/`` and ``producers/`` import ``seechange``, never the other way."""

from __future__ import annotations

import ast
import itertools

from seechange.config import PROJECT_ROOT
from seechange.streaming.stages import INPUT_TOPICS, STAGES, TOPICS, get_stage, stage_names

SERVICE_PACKAGES = {"consumers", "producers"}


def _imported_top_levels(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_the_library_never_imports_the_service_packages() -> None:
    offenders = []
    for path in sorted((PROJECT_ROOT / "seechange").rglob("*.py")):
        imported = _imported_top_levels(ast.parse(path.read_text(), filename=str(path)))
        if imported & SERVICE_PACKAGES:
            offenders.append(f"{path.relative_to(PROJECT_ROOT)}: {sorted(imported & SERVICE_PACKAGES)}")
    assert offenders == []


def test_service_modules_are_thin() -> None:
    for package in SERVICE_PACKAGES:
        for path in (PROJECT_ROOT / package).glob("*.py"):
            assert len(path.read_text().splitlines()) <= 150, path


def test_the_stage_table_chains_the_topics_and_resolves_its_handlers() -> None:
    assert stage_names() == ("reduce", "subtract", "detect", "alert")
    assert TOPICS == ("exposure-ready", "image-reduced", "subtraction-done", "sighting-found", "alerts")
    assert INPUT_TOPICS == TOPICS[:-1]
    for upstream, downstream in itertools.pairwise(STAGES):
        assert upstream.output_topic == downstream.input_topic
        assert upstream.output_schema == downstream.input_schema
    for stage in STAGES:
        assert callable(stage.load_handler_factory())
    assert get_stage("detect").handler_factory == "consumers.detect:make_handler"
