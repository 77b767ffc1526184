"""Object: one astronomical source (real or bogus); its sightings in time order are its lightcurve."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import BigInteger, Boolean, Double, Integer, String, false
from sqlalchemy.orm import Mapped, mapped_column, relationship

from seechange.models.base import Base, CreatedAtMixin, IdMixin

if TYPE_CHECKING:
    from seechange.models.sighting import Sighting


class Object(IdMixin, CreatedAtMixin, Base):
    """One astronomical object.

    Attributes
    ----------
    name : str
        Unique name.
    ra, dec : float
        Mean position of its sightings, deg.
    healpix : int
        HEALPix pixel (nside 2**16, nested) of (ra, dec).
    band_latest : str or None
        Band of the latest sighting.
    mag_latest : float or None
        Magnitude of the latest sighting, AB mag.
    first_mjd, last_mjd : float
        First and last sighting, MJD.
    n_sightings : int
        Number of sightings.
    is_test : bool
        Test object (excluded from science output).
    sightings : list of Sighting
        Its sightings ordered by MJD.
    """

    __tablename__ = "objects"

    name: Mapped[str] = mapped_column(String, nullable=False, unique=True)
    ra: Mapped[float] = mapped_column(Double, nullable=False)
    dec: Mapped[float] = mapped_column(Double, nullable=False)
    healpix: Mapped[int] = mapped_column(BigInteger, nullable=False, index=True)
    band_latest: Mapped[str | None] = mapped_column(String(8), nullable=True)
    mag_latest: Mapped[float | None] = mapped_column(Double, nullable=True)
    first_mjd: Mapped[float] = mapped_column(Double, nullable=False)
    last_mjd: Mapped[float] = mapped_column(Double, nullable=False)
    n_sightings: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    is_test: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default=false())

    sightings: Mapped[list[Sighting]] = relationship(
        back_populates="object", order_by="(Sighting.mjd, Sighting.id)"
    )

    def __repr__(self) -> str:
        return f"Object(id={self.id!r}, name={self.name!r}, ra={self.ra!r}, dec={self.dec!r})"
