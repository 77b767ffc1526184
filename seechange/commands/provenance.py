"""``seechange provenance list`` and ``seechange provenance diff``: what a reprocessing changed."""

from __future__ import annotations

import click

from seechange.config import Settings


@click.group("provenance")
def provenance() -> None:
    """Provenances of the pipeline's steps."""


@provenance.command("list")
@click.option("--step", default=None, help="Only this process (reduce, reference, subtract, detect, ...).")
@click.pass_obj
def list_cmd(settings: Settings, step: str | None) -> None:
    """Every provenance (oldest first): id, process, created, parameters."""
    import json

    from sqlalchemy import select

    from seechange.localservices import endpoints
    from seechange.models import Provenance
    from seechange.models.session import make_engine, make_session_factory

    engine = make_engine(endpoints(settings, kafka_needed=False).database_url)
    try:
        with make_session_factory(engine)() as session:
            query = select(Provenance).order_by(Provenance.created_at, Provenance.id)
            if step:
                query = query.where(Provenance.process == step)
            for p in session.scalars(query):
                click.echo(
                    f"{p.id}  {p.process:<10} {p.created_at:%Y-%m-%d %H:%M:%S}  "
                    f"{json.dumps(p.parameters, sort_keys=True)}"
                )
    finally:
        engine.dispose()


@provenance.command("diff")
@click.argument("a", required=False)
@click.argument("b", required=False)
@click.option("--step", default="detect", show_default=True, help="Without A B: the latest two of this step.")
@click.option("--radius", type=float, default=1.0, show_default=True, help="Match radius, arcsec.")
@click.pass_obj
def diff_cmd(settings: Settings, a: str | None, b: str | None, step: str, radius: float) -> None:
    """Compare provenances A and B (ids or unique prefixes) of one step, or the latest two of --step."""
    from seechange.localservices import endpoints
    from seechange.models.session import make_engine, make_session_factory
    from seechange.provdiff import diff_provenances, latest_two

    if (a is None) != (b is None):
        raise click.UsageError("give two provenances A B, or none (the latest two of --step)")
    engine = make_engine(endpoints(settings, kafka_needed=False).database_url)
    try:
        with make_session_factory(engine)() as session:
            if a is None or b is None:
                a, b = latest_two(session, step)
            for line in diff_provenances(session, a, b, match_radius_arcsec=radius).lines():
                click.echo(line)
    finally:
        engine.dispose()
