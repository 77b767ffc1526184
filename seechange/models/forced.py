"""Forced photometry: the PSF flux of an Object measured at its fixed position on a difference image."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import BigInteger, Boolean, Double, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from seechange.models.base import Base, CreatedAtMixin, IdMixin
from seechange.models.provenance import PROVENANCE_ID_LENGTH, Provenance

if TYPE_CHECKING:
    from seechange.models.object import Object


class ForcedPhotometry(IdMixin, CreatedAtMixin, Base):
    """One forced PSF measurement of an :class:`~seechange.models.object.Object` on one difference image.

    Every difference image covering an Object's position gets one row per forced-photometry provenance,
    whether or not the Object was detected on it; the rows with ``detected`` false are its non-detections,
    and their ``lim_mag`` its upper limits.

    Attributes
    ----------
    object_id : int
        The Object.
    subtraction_id : int
        The difference image measured.
    provenance_id : str
        Provenance of the forced-photometry step.
    sighting_id : int or None
        The Object's sighting on this difference image, if it was detected on it.
    detected : bool
        The Object has a sighting on this difference image.
    mjd : float
        Mid-exposure MJD of the new image.
    band : str
        One-letter band.
    ra, dec : float
        The fixed position measured at (the Object's mean position at the time), deg.
    x, y : float
        That position on the difference image, 0-based pixels.
    flux, flux_err : float
        Forced PSF flux (signed) and its error, electrons of the new image.
    flux_njy, flux_njy_err : float
        The same in nJy.
    zero_point : float
        Zero point of the difference image, AB mag.
    lim_mag : float or None
        5-sigma limiting magnitude at this position from the local noise, AB mag.
    image_lim_mag : float or None
        The new image's own (median) limiting magnitude, AB mag, for comparison.
    n_bad_pixels : int
        Flagged pixels within one FWHM of the position (they get zero weight).
    """

    __tablename__ = "forced_photometry"
    __table_args__ = (UniqueConstraint("object_id", "subtraction_id", "provenance_id"),)

    object_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("objects.id", ondelete="CASCADE"), nullable=False, index=True
    )
    subtraction_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("subtraction_images.id", ondelete="CASCADE"), nullable=False, index=True
    )
    provenance_id: Mapped[str] = mapped_column(
        String(PROVENANCE_ID_LENGTH),
        ForeignKey("provenances.id", ondelete="RESTRICT"),
        nullable=False,
        index=True,
    )
    sighting_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("sightings.id", ondelete="SET NULL"), nullable=True
    )
    detected: Mapped[bool] = mapped_column(Boolean, nullable=False)
    mjd: Mapped[float] = mapped_column(Double, nullable=False, index=True)
    band: Mapped[str] = mapped_column(String(8), nullable=False)
    ra: Mapped[float] = mapped_column(Double, nullable=False)
    dec: Mapped[float] = mapped_column(Double, nullable=False)
    x: Mapped[float] = mapped_column(Double, nullable=False)
    y: Mapped[float] = mapped_column(Double, nullable=False)
    flux: Mapped[float] = mapped_column(Double, nullable=False)
    flux_err: Mapped[float] = mapped_column(Double, nullable=False)
    flux_njy: Mapped[float] = mapped_column(Double, nullable=False)
    flux_njy_err: Mapped[float] = mapped_column(Double, nullable=False)
    zero_point: Mapped[float] = mapped_column(Double, nullable=False)
    lim_mag: Mapped[float | None] = mapped_column(Double, nullable=True)
    image_lim_mag: Mapped[float | None] = mapped_column(Double, nullable=True)
    n_bad_pixels: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")

    provenance: Mapped[Provenance] = relationship()
    object: Mapped[Object] = relationship()

    def __repr__(self) -> str:
        return (
            f"ForcedPhotometry(id={self.id!r}, object_id={self.object_id!r}, "
            f"subtraction_id={self.subtraction_id!r}, flux_njy={self.flux_njy!r})"
        )
