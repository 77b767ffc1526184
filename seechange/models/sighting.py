"""Sightings (detections on a difference image), their Cutouts and their Photometry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import (
    BigInteger,
    Boolean,
    Double,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column, relationship

from seechange.models.base import Base, CreatedAtMixin, IdMixin
from seechange.models.provenance import PROVENANCE_ID_LENGTH, Provenance

if TYPE_CHECKING:
    from seechange.models.image import SubtractionImage
    from seechange.models.object import Object


class Sighting(IdMixin, CreatedAtMixin, Base):
    """Something detected on one :class:`~seechange.models.image.SubtractionImage`.

    Attributes
    ----------
    subtraction_id : int
        The difference image it was found on.
    provenance_id : str
        Provenance of the detection step.
    index_in_image : int
        Deterministic index of the detection within the subtraction (0-based).
    x, y : float
        Position, 0-based pixels (x = column, y = row).
    ra, dec : float
        Position, deg.
    ra_err, dec_err : float or None
        Position errors, arcsec.
    score : float
        Peak of S_corr (signed; negative for fading sources).
    is_positive : bool
        True for a brightening, False for a fading source.
    flags : int
        Quality bit mask (set by the analytic cuts).
    is_good : bool
        Passed the quality cuts.
    mjd : float
        Mid-exposure MJD of the new image.
    band : str
        One-letter band.
    healpix : int
        HEALPix pixel (nside 2**16, nested).
    object_id : int or None
        The Object it was associated with (null until association).
    """

    __tablename__ = "sightings"
    __table_args__ = (UniqueConstraint("subtraction_id", "provenance_id", "index_in_image"),)

    subtraction_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("subtraction_images.id", ondelete="CASCADE"), nullable=False, index=True
    )
    provenance_id: Mapped[str] = mapped_column(
        String(PROVENANCE_ID_LENGTH),
        ForeignKey("provenances.id", ondelete="RESTRICT"),
        nullable=False,
        index=True,
    )
    index_in_image: Mapped[int] = mapped_column(Integer, nullable=False)
    x: Mapped[float] = mapped_column(Double, nullable=False)
    y: Mapped[float] = mapped_column(Double, nullable=False)
    ra: Mapped[float] = mapped_column(Double, nullable=False)
    dec: Mapped[float] = mapped_column(Double, nullable=False)
    ra_err: Mapped[float | None] = mapped_column(Double, nullable=True)
    dec_err: Mapped[float | None] = mapped_column(Double, nullable=True)
    score: Mapped[float] = mapped_column(Double, nullable=False)
    is_positive: Mapped[bool] = mapped_column(Boolean, nullable=False)
    flags: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    is_good: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True, server_default=true())
    mjd: Mapped[float] = mapped_column(Double, nullable=False, index=True)
    band: Mapped[str] = mapped_column(String(8), nullable=False)
    healpix: Mapped[int] = mapped_column(BigInteger, nullable=False, index=True)
    object_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("objects.id", ondelete="SET NULL"), nullable=True, index=True
    )

    provenance: Mapped[Provenance] = relationship()
    subtraction: Mapped[SubtractionImage] = relationship(back_populates="sightings")
    object: Mapped[Object | None] = relationship(back_populates="sightings")
    cutouts: Mapped[Cutouts | None] = relationship(
        back_populates="sighting", uselist=False, cascade="all, delete-orphan", passive_deletes=True
    )
    photometry: Mapped[list[Photometry]] = relationship(
        back_populates="sighting",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by=lambda: Photometry.id,
    )

    def __repr__(self) -> str:
        return (
            f"Sighting(id={self.id!r}, subtraction_id={self.subtraction_id!r}, "
            f"index_in_image={self.index_in_image!r}, ra={self.ra!r}, dec={self.dec!r})"
        )


class Cutouts(IdMixin, CreatedAtMixin, Base):
    """Where the new / reference / difference stamps of one :class:`Sighting` are stored.

    Attributes
    ----------
    sighting_id : int
        The sighting (one Cutouts row per sighting).
    filepath : str
        The multi-HDU cutouts file of the whole subtraction, relative to the data root.
    hdu_new, hdu_ref, hdu_diff : str
        Names of the HDUs holding the new, reference and difference stamps (e.g. ``SIG<id>_NEW``).
    size : int
        Stamp side, pixels.
    """

    __tablename__ = "cutouts"

    sighting_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("sightings.id", ondelete="CASCADE"), nullable=False, unique=True
    )
    filepath: Mapped[str] = mapped_column(String, nullable=False)
    hdu_new: Mapped[str] = mapped_column(String, nullable=False)
    hdu_ref: Mapped[str] = mapped_column(String, nullable=False)
    hdu_diff: Mapped[str] = mapped_column(String, nullable=False)
    size: Mapped[int] = mapped_column(Integer, nullable=False)

    sighting: Mapped[Sighting] = relationship(back_populates="cutouts")

    def __repr__(self) -> str:
        return f"Cutouts(id={self.id!r}, sighting_id={self.sighting_id!r}, filepath={self.filepath!r})"


class Photometry(IdMixin, CreatedAtMixin, Base):
    """Measurements of one :class:`Sighting` on its difference image.

    Attributes
    ----------
    sighting_id : int
        The sighting.
    provenance_id : str
        Provenance of the measuring step.
    psf_flux, psf_flux_err : float
        PSF flux and its error, electrons.
    flux_njy, flux_njy_err : float or None
        PSF flux and its error, nJy.
    aper_fluxes, aper_flux_errs : list of float or None
        Aperture fluxes and errors, electrons, one per radius.
    aper_radii_px : list of float or None
        Aperture radii, pixels.
    mag, mag_err : float or None
        AB magnitude and error (null when the flux is not positive).
    zero_point : float or None
        Zero point used, AB mag.
    lim_mag : float or None
        5-sigma limiting magnitude at this position, AB mag.
    x_centroid, y_centroid : float or None
        Centroid, 0-based pixels.
    fwhm_px : float or None
        Spot FWHM, pixels.
    elongation : float or None
        Major / minor axis ratio (>= 1).
    snr : float or None
        Signal-to-noise ratio of the PSF flux.
    background : float or None
        Local background, electrons per pixel.
    negative_fraction : float or None
        Fraction of negative pixels in the stamp (dipole indicator).
    n_bad_pixels : int or None
        Flagged pixels within the aperture.
    flags : int
        Quality bit mask.
    """

    __tablename__ = "photometry"
    __table_args__ = (UniqueConstraint("sighting_id", "provenance_id"),)

    sighting_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("sightings.id", ondelete="CASCADE"), nullable=False, index=True
    )
    provenance_id: Mapped[str] = mapped_column(
        String(PROVENANCE_ID_LENGTH),
        ForeignKey("provenances.id", ondelete="RESTRICT"),
        nullable=False,
        index=True,
    )
    psf_flux: Mapped[float] = mapped_column(Double, nullable=False)
    psf_flux_err: Mapped[float] = mapped_column(Double, nullable=False)
    flux_njy: Mapped[float | None] = mapped_column(Double, nullable=True)
    flux_njy_err: Mapped[float | None] = mapped_column(Double, nullable=True)
    aper_fluxes: Mapped[list[float] | None] = mapped_column(ARRAY(Double), nullable=True)
    aper_flux_errs: Mapped[list[float] | None] = mapped_column(ARRAY(Double), nullable=True)
    aper_radii_px: Mapped[list[float] | None] = mapped_column(ARRAY(Double), nullable=True)
    mag: Mapped[float | None] = mapped_column(Double, nullable=True)
    mag_err: Mapped[float | None] = mapped_column(Double, nullable=True)
    zero_point: Mapped[float | None] = mapped_column(Double, nullable=True)
    lim_mag: Mapped[float | None] = mapped_column(Double, nullable=True)
    x_centroid: Mapped[float | None] = mapped_column(Double, nullable=True)
    y_centroid: Mapped[float | None] = mapped_column(Double, nullable=True)
    fwhm_px: Mapped[float | None] = mapped_column(Double, nullable=True)
    elongation: Mapped[float | None] = mapped_column(Double, nullable=True)
    snr: Mapped[float | None] = mapped_column(Double, nullable=True)
    background: Mapped[float | None] = mapped_column(Double, nullable=True)
    negative_fraction: Mapped[float | None] = mapped_column(Double, nullable=True)
    n_bad_pixels: Mapped[int | None] = mapped_column(Integer, nullable=True)
    flags: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")

    provenance: Mapped[Provenance] = relationship()
    sighting: Mapped[Sighting] = relationship(back_populates="photometry")

    def __repr__(self) -> str:
        return (
            f"Photometry(id={self.id!r}, sighting_id={self.sighting_id!r}, "
            f"psf_flux={self.psf_flux!r}, mag={self.mag!r})"
        )
