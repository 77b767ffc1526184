"""Exposure: one CCD of one raw exposure, linked to its file under the data root."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from sqlalchemy import BigInteger, DateTime, Double, ForeignKey, Integer, String, UniqueConstraint, func
from sqlalchemy.orm import Mapped, mapped_column, relationship

from seechange.models.base import Base, CreatedAtMixin, IdMixin
from seechange.models.provenance import PROVENANCE_ID_LENGTH, Provenance

if TYPE_CHECKING:
    from seechange.models.image import Image


class Exposure(IdMixin, CreatedAtMixin, Base):
    """One CCD (section) of one raw exposure.

    Attributes
    ----------
    instrument : str
        Instrument name, e.g. ``"DECam"``.
    origin_id : str
        Identifier of the exposure at its origin (exposure name or ``EXPNUM`` as a string).
    section_id : str
        CCD identifier as a string (e.g. ``"N6"`` or ``"35"``).
    filepath : str
        Raw FITS file, relative to the data root.
    md5 : str
        Hex MD5 of the raw file.
    mjd : float
        Exposure start (``MJD-OBS``), MJD.
    exp_time : float
        Exposure time, s.
    filter : str
        Full filter string from the header.
    band : str
        One-letter band (first letter of ``filter``).
    ra, dec : float
        Pointing of this CCD's centre, deg.
    field : str or None
        ``OBJECT`` header (field name).
    airmass : float or None
        Airmass.
    gain : float or None
        Gain, e-/ADU.
    read_noise : float or None
        Read noise, e-.
    hdu : int or None
        Index of this CCD's HDU in ``filepath`` (a multi-extension file holds every CCD of the exposure);
        None for rows registered from a reduced image.
    ingested_at : datetime
        When the exposure entered the pipeline (timestamptz).
    healpix : int
        HEALPix pixel (nside 2**16, nested) of (ra, dec).
    provenance_id : str
        Provenance of the ingestion.
    """

    __tablename__ = "exposures"
    __table_args__ = (UniqueConstraint("instrument", "origin_id", "section_id"),)

    instrument: Mapped[str] = mapped_column(String, nullable=False)
    origin_id: Mapped[str] = mapped_column(String, nullable=False)
    section_id: Mapped[str] = mapped_column(String, nullable=False)
    filepath: Mapped[str] = mapped_column(String, nullable=False)
    md5: Mapped[str] = mapped_column(String(32), nullable=False)
    mjd: Mapped[float] = mapped_column(Double, nullable=False, index=True)
    exp_time: Mapped[float] = mapped_column(Double, nullable=False)
    filter: Mapped[str] = mapped_column(String, nullable=False)
    band: Mapped[str] = mapped_column(String(8), nullable=False)
    ra: Mapped[float] = mapped_column(Double, nullable=False)
    dec: Mapped[float] = mapped_column(Double, nullable=False)
    field: Mapped[str | None] = mapped_column(String, nullable=True)
    airmass: Mapped[float | None] = mapped_column(Double, nullable=True)
    gain: Mapped[float | None] = mapped_column(Double, nullable=True)
    read_noise: Mapped[float | None] = mapped_column(Double, nullable=True)
    hdu: Mapped[int | None] = mapped_column(Integer, nullable=True)
    ingested_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    healpix: Mapped[int] = mapped_column(BigInteger, nullable=False, index=True)
    provenance_id: Mapped[str] = mapped_column(
        String(PROVENANCE_ID_LENGTH),
        ForeignKey("provenances.id", ondelete="RESTRICT"),
        nullable=False,
        index=True,
    )

    provenance: Mapped[Provenance] = relationship()
    images: Mapped[list[Image]] = relationship(back_populates="exposure", passive_deletes=True)

    def __repr__(self) -> str:
        return (
            f"Exposure(id={self.id!r}, instrument={self.instrument!r}, origin_id={self.origin_id!r}, "
            f"section_id={self.section_id!r})"
        )
