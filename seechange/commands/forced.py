"""``seechange forced``: forced photometry of Objects backwards over the difference images covering them."""

from __future__ import annotations

import click

from seechange.config import Settings


@click.command("forced")
@click.argument("names", nargs=-1)
@click.option("--all", "all_objects", is_flag=True, help="Every Object.")
@click.pass_obj
def forced_cmd(settings: Settings, names: tuple[str, ...], all_objects: bool) -> None:
    """Forced PSF photometry (and limits) of the Objects NAMES (or --all) on every difference image covering
    them; what is already stored is left alone (same provenance: nothing is measured twice)."""
    from sqlalchemy import select

    from seechange.localservices import endpoints
    from seechange.models import Object
    from seechange.models.session import make_engine, make_session_factory
    from seechange.pipeline.forced import force_objects
    from seechange.pipeline.parameters import load_parameters

    if not names and not all_objects:
        raise click.UsageError("name one or more objects, or give --all")
    params = load_parameters(settings.params_file).detect.forced_params
    settings = endpoints(settings, kafka_needed=False)
    engine = make_engine(settings.database_url)
    with make_session_factory(engine)() as session:
        ids = None
        if not all_objects:
            found = dict(session.execute(select(Object.name, Object.id).where(Object.name.in_(names))).all())
            missing = sorted(set(names) - set(found))
            if missing:
                raise click.ClickException(f"no object named {', '.join(missing)}")
            ids = list(found.values())
        n = force_objects(session, settings.data_dir, ids, params=params)
        session.commit()
    engine.dispose()
    click.echo(f"{n} new forced point(s)")
