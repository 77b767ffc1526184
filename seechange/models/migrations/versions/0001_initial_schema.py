"""Initial schema: provenances, exposures, images, coadds, subtractions, sightings, cutouts, photometry,
objects and the alert log.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text("now()")


def _id() -> sa.Column:
    return sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False)


def _created_at() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False)


def _provenance_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["provenance_id"],
        ["provenances.id"],
        name=op.f(f"fk_{table}_provenance_id_provenances"),
        ondelete="RESTRICT",
    )


def _image_columns() -> list[sa.Column]:
    """Columns of ``ImageMixin`` (images, coadd_images, subtraction_images), after the table's own ones."""
    dbl = sa.Double
    return [
        sa.Column("filepath", sa.String(), nullable=False),
        sa.Column("provenance_id", sa.String(length=20), nullable=False),
        sa.Column("mjd", dbl(), nullable=False),
        sa.Column("band", sa.String(length=8), nullable=False),
        sa.Column("field", sa.String(), nullable=True),
        sa.Column("section_id", sa.String(), nullable=True),
        sa.Column("ra", dbl(), nullable=False),
        sa.Column("dec", dbl(), nullable=False),
        *[sa.Column(f"ra_corner_{c}", dbl(), nullable=False) for c in ("00", "01", "10", "11")],
        *[sa.Column(f"dec_corner_{c}", dbl(), nullable=False) for c in ("00", "01", "10", "11")],
        sa.Column("healpix", sa.BigInteger(), nullable=False),
        sa.Column("wcs_header", sa.Text(), nullable=False),
        sa.Column("fwhm_arcsec", dbl(), nullable=True),
        sa.Column("bkg_level", dbl(), nullable=True),
        sa.Column("bkg_rms", dbl(), nullable=True),
        sa.Column("zero_point", dbl(), nullable=True),
        sa.Column("zero_point_err", dbl(), nullable=True),
        sa.Column("lim_mag", dbl(), nullable=True),
        sa.Column("astrom_rms_arcsec", dbl(), nullable=True),
        sa.Column("n_stars", sa.Integer(), nullable=True),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("is_good", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("extra", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    ]


def _indexes(table: str, *columns: str) -> None:
    for col in columns:
        op.create_index(op.f(f"ix_{table}_{col}"), table, [col], unique=False)


# (table, indexed columns) in creation order; downgrade walks it backwards
INDEXES: list[tuple[str, tuple[str, ...]]] = [
    ("objects", ("healpix",)),
    ("provenances", ("process",)),
    ("provenance_upstreams", ("upstream_id",)),
    ("exposures", ("healpix", "mjd", "provenance_id")),
    ("images", ("exposure_id", "healpix", "mjd", "provenance_id")),
    ("coadd_images", ("healpix", "mjd", "provenance_id", "reference_key")),
    ("coadd_members", ("image_id",)),
    ("subtraction_images", ("healpix", "mjd", "new_image_id", "provenance_id", "reference_id")),
    ("sightings", ("healpix", "mjd", "object_id", "provenance_id", "subtraction_id")),
    ("cutouts", ()),
    ("photometry", ("provenance_id", "sighting_id")),
    ("alert_log", ("object_id", "sighting_id")),
]


def upgrade() -> None:
    dbl = sa.Double
    op.create_table(
        "objects",
        _id(),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("ra", dbl(), nullable=False),
        sa.Column("dec", dbl(), nullable=False),
        sa.Column("healpix", sa.BigInteger(), nullable=False),
        sa.Column("band_latest", sa.String(length=8), nullable=True),
        sa.Column("mag_latest", dbl(), nullable=True),
        sa.Column("first_mjd", dbl(), nullable=False),
        sa.Column("last_mjd", dbl(), nullable=False),
        sa.Column("n_sightings", sa.Integer(), server_default="0", nullable=False),
        sa.Column("is_test", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        _created_at(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_objects")),
        sa.UniqueConstraint("name", name=op.f("uq_objects_name")),
    )
    op.create_table(
        "provenances",
        sa.Column("id", sa.String(length=20), nullable=False),
        sa.Column("process", sa.String(), nullable=False),
        sa.Column("code_version", sa.String(), nullable=False),
        sa.Column("parameters", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        _created_at(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provenances")),
    )
    op.create_table(
        "provenance_upstreams",
        sa.Column("provenance_id", sa.String(length=20), nullable=False),
        sa.Column("upstream_id", sa.String(length=20), nullable=False),
        sa.ForeignKeyConstraint(
            ["provenance_id"],
            ["provenances.id"],
            name=op.f("fk_provenance_upstreams_provenance_id_provenances"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["upstream_id"],
            ["provenances.id"],
            name=op.f("fk_provenance_upstreams_upstream_id_provenances"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("provenance_id", "upstream_id", name=op.f("pk_provenance_upstreams")),
    )
    op.create_table(
        "exposures",
        _id(),
        sa.Column("instrument", sa.String(), nullable=False),
        sa.Column("origin_id", sa.String(), nullable=False),
        sa.Column("section_id", sa.String(), nullable=False),
        sa.Column("filepath", sa.String(), nullable=False),
        sa.Column("md5", sa.String(length=32), nullable=False),
        sa.Column("mjd", dbl(), nullable=False),
        sa.Column("exp_time", dbl(), nullable=False),
        sa.Column("filter", sa.String(), nullable=False),
        sa.Column("band", sa.String(length=8), nullable=False),
        sa.Column("ra", dbl(), nullable=False),
        sa.Column("dec", dbl(), nullable=False),
        sa.Column("field", sa.String(), nullable=True),
        sa.Column("airmass", dbl(), nullable=True),
        sa.Column("gain", dbl(), nullable=True),
        sa.Column("read_noise", dbl(), nullable=True),
        sa.Column("ingested_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("healpix", sa.BigInteger(), nullable=False),
        sa.Column("provenance_id", sa.String(length=20), nullable=False),
        _created_at(),
        _provenance_fk("exposures"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_exposures")),
        sa.UniqueConstraint(
            "instrument", "origin_id", "section_id", name=op.f("uq_exposures_instrument_origin_id_section_id")
        ),
    )
    op.create_table(
        "images",
        _id(),
        sa.Column("exposure_id", sa.BigInteger(), nullable=False),
        *_image_columns(),
        _created_at(),
        sa.ForeignKeyConstraint(
            ["exposure_id"],
            ["exposures.id"],
            name=op.f("fk_images_exposure_id_exposures"),
            ondelete="CASCADE",
        ),
        _provenance_fk("images"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_images")),
        sa.UniqueConstraint("exposure_id", "provenance_id", name=op.f("uq_images_exposure_id_provenance_id")),
    )
    op.create_table(
        "coadd_images",
        _id(),
        sa.Column("reference_key", sa.String(), nullable=False),
        *_image_columns(),
        _created_at(),
        _provenance_fk("coadd_images"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_coadd_images")),
        sa.UniqueConstraint(
            "reference_key", "provenance_id", name=op.f("uq_coadd_images_reference_key_provenance_id")
        ),
    )
    op.create_table(
        "coadd_members",
        sa.Column("coadd_id", sa.BigInteger(), nullable=False),
        sa.Column("image_id", sa.BigInteger(), nullable=False),
        sa.Column("weight", dbl(), nullable=True),
        sa.ForeignKeyConstraint(
            ["coadd_id"],
            ["coadd_images.id"],
            name=op.f("fk_coadd_members_coadd_id_coadd_images"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name=op.f("fk_coadd_members_image_id_images"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("coadd_id", "image_id", name=op.f("pk_coadd_members")),
    )
    op.create_table(
        "subtraction_images",
        _id(),
        sa.Column("new_image_id", sa.BigInteger(), nullable=False),
        sa.Column("reference_id", sa.BigInteger(), nullable=False),
        sa.Column("score_std", dbl(), nullable=True),
        sa.Column("n_sightings", sa.Integer(), nullable=True),
        *_image_columns(),
        _created_at(),
        sa.ForeignKeyConstraint(
            ["new_image_id"],
            ["images.id"],
            name=op.f("fk_subtraction_images_new_image_id_images"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["reference_id"],
            ["coadd_images.id"],
            name=op.f("fk_subtraction_images_reference_id_coadd_images"),
            ondelete="RESTRICT",
        ),
        _provenance_fk("subtraction_images"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subtraction_images")),
        sa.UniqueConstraint(
            "new_image_id",
            "reference_id",
            "provenance_id",
            name=op.f("uq_subtraction_images_new_image_id_reference_id_provenance_id"),
        ),
    )
    op.create_table(
        "sightings",
        _id(),
        sa.Column("subtraction_id", sa.BigInteger(), nullable=False),
        sa.Column("provenance_id", sa.String(length=20), nullable=False),
        sa.Column("index_in_image", sa.Integer(), nullable=False),
        sa.Column("x", dbl(), nullable=False),
        sa.Column("y", dbl(), nullable=False),
        sa.Column("ra", dbl(), nullable=False),
        sa.Column("dec", dbl(), nullable=False),
        sa.Column("ra_err", dbl(), nullable=True),
        sa.Column("dec_err", dbl(), nullable=True),
        sa.Column("score", dbl(), nullable=False),
        sa.Column("is_positive", sa.Boolean(), nullable=False),
        sa.Column("flags", sa.Integer(), server_default="0", nullable=False),
        sa.Column("is_good", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("mjd", dbl(), nullable=False),
        sa.Column("band", sa.String(length=8), nullable=False),
        sa.Column("healpix", sa.BigInteger(), nullable=False),
        sa.Column("object_id", sa.BigInteger(), nullable=True),
        _created_at(),
        sa.ForeignKeyConstraint(
            ["object_id"], ["objects.id"], name=op.f("fk_sightings_object_id_objects"), ondelete="SET NULL"
        ),
        _provenance_fk("sightings"),
        sa.ForeignKeyConstraint(
            ["subtraction_id"],
            ["subtraction_images.id"],
            name=op.f("fk_sightings_subtraction_id_subtraction_images"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sightings")),
        sa.UniqueConstraint(
            "subtraction_id",
            "provenance_id",
            "index_in_image",
            name=op.f("uq_sightings_subtraction_id_provenance_id_index_in_image"),
        ),
    )
    op.create_table(
        "cutouts",
        _id(),
        sa.Column("sighting_id", sa.BigInteger(), nullable=False),
        sa.Column("filepath", sa.String(), nullable=False),
        sa.Column("hdu_new", sa.String(), nullable=False),
        sa.Column("hdu_ref", sa.String(), nullable=False),
        sa.Column("hdu_diff", sa.String(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        _created_at(),
        sa.ForeignKeyConstraint(
            ["sighting_id"],
            ["sightings.id"],
            name=op.f("fk_cutouts_sighting_id_sightings"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cutouts")),
        sa.UniqueConstraint("sighting_id", name=op.f("uq_cutouts_sighting_id")),
    )
    op.create_table(
        "photometry",
        _id(),
        sa.Column("sighting_id", sa.BigInteger(), nullable=False),
        sa.Column("provenance_id", sa.String(length=20), nullable=False),
        sa.Column("psf_flux", dbl(), nullable=False),
        sa.Column("psf_flux_err", dbl(), nullable=False),
        sa.Column("flux_njy", dbl(), nullable=True),
        sa.Column("flux_njy_err", dbl(), nullable=True),
        sa.Column("aper_fluxes", postgresql.ARRAY(dbl()), nullable=True),
        sa.Column("aper_flux_errs", postgresql.ARRAY(dbl()), nullable=True),
        sa.Column("aper_radii_px", postgresql.ARRAY(dbl()), nullable=True),
        sa.Column("mag", dbl(), nullable=True),
        sa.Column("mag_err", dbl(), nullable=True),
        sa.Column("zero_point", dbl(), nullable=True),
        sa.Column("lim_mag", dbl(), nullable=True),
        sa.Column("x_centroid", dbl(), nullable=True),
        sa.Column("y_centroid", dbl(), nullable=True),
        sa.Column("fwhm_px", dbl(), nullable=True),
        sa.Column("elongation", dbl(), nullable=True),
        sa.Column("snr", dbl(), nullable=True),
        sa.Column("background", dbl(), nullable=True),
        sa.Column("negative_fraction", dbl(), nullable=True),
        sa.Column("n_bad_pixels", sa.Integer(), nullable=True),
        sa.Column("flags", sa.Integer(), server_default="0", nullable=False),
        _created_at(),
        _provenance_fk("photometry"),
        sa.ForeignKeyConstraint(
            ["sighting_id"],
            ["sightings.id"],
            name=op.f("fk_photometry_sighting_id_sightings"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_photometry")),
        sa.UniqueConstraint(
            "sighting_id", "provenance_id", name=op.f("uq_photometry_sighting_id_provenance_id")
        ),
    )
    op.create_table(
        "alert_log",
        _id(),
        sa.Column("alert_id", sa.BigInteger(), nullable=False),
        sa.Column("sighting_id", sa.BigInteger(), nullable=False),
        sa.Column("object_id", sa.BigInteger(), nullable=False),
        sa.Column("topic", sa.String(), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.ForeignKeyConstraint(
            ["object_id"], ["objects.id"], name=op.f("fk_alert_log_object_id_objects"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["sighting_id"],
            ["sightings.id"],
            name=op.f("fk_alert_log_sighting_id_sightings"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_log")),
        sa.UniqueConstraint("alert_id", name=op.f("uq_alert_log_alert_id")),
    )
    for table, columns in INDEXES:
        _indexes(table, *columns)


def downgrade() -> None:
    for table, columns in reversed(INDEXES):
        for col in columns:
            op.drop_index(op.f(f"ix_{table}_{col}"), table_name=table)
        op.drop_table(table)
