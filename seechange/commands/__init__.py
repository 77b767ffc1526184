"""Subcommands of the ``seechange`` CLI, one module per family; shared option parsing here."""

from __future__ import annotations

import click


def parse_size(text: str) -> tuple[int, int]:
    """``"2048x4096"`` -> ``(2048, 4096)`` (NX x NY pixels); a clear usage error otherwise."""
    try:
        nx, ny = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise click.BadParameter(f"expected NXxNY such as 2048x4096, got {text!r}") from exc
    return nx, ny
