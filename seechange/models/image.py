"""Images: the reduced Image of one Exposure, reference CoaddImages and SubtractionImages.

The three tables share :class:`ImageMixin` (pointing, footprint, WCS, quality figures).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
    ForeignKey,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, declared_attr, mapped_column, relationship

from seechange.models.base import Base, CreatedAtMixin, IdMixin
from seechange.models.provenance import PROVENANCE_ID_LENGTH, Provenance

if TYPE_CHECKING:
    from seechange.models.exposure import Exposure
    from seechange.models.sighting import Sighting


class ImageMixin(IdMixin, CreatedAtMixin):
    """Columns shared by :class:`Image`, :class:`CoaddImage` and :class:`SubtractionImage`.

    Attributes
    ----------
    filepath : str
        Path stem relative to the data root; the files are ``<filepath>.<kind>.fits``.
    provenance_id : str
        Provenance of the product.
    mjd : float
        Mid-exposure MJD (coadds: mean of the inputs).
    band : str
        One-letter band.
    field : str or None
        Field name.
    section_id : str or None
        CCD identifier.
    ra, dec : float
        Centre of the image, deg.
    ra_corner_00, ra_corner_01, ra_corner_10, ra_corner_11 : float
        Footprint corners, deg; suffix ``<i><j>`` = (x at 0 / width-1, y at 0 / height-1).
    dec_corner_00, dec_corner_01, dec_corner_10, dec_corner_11 : float
        Footprint corners, deg.
    healpix : int
        HEALPix pixel (nside 2**16, nested) of the centre.
    wcs_header : str
        The celestial FITS WCS header as a string (``Header.tostring()``).
    fwhm_arcsec : float or None
        PSF FWHM, arcsec.
    bkg_level, bkg_rms : float or None
        Background level removed and its robust rms, electrons.
    zero_point, zero_point_err : float or None
        AB zero point and its error, mag.
    lim_mag : float or None
        5-sigma point-source limiting magnitude, AB mag.
    astrom_rms_arcsec : float or None
        RMS of the astrometric fit residuals, arcsec.
    n_stars : int or None
        Number of stars used in the calibration.
    width, height : int
        Image size, pixels.
    is_good : bool
        Quality verdict (default true).
    extra : dict or None
        Anything else (JSON).
    """

    filepath: Mapped[str] = mapped_column(String, nullable=False)
    provenance_id: Mapped[str] = mapped_column(
        String(PROVENANCE_ID_LENGTH),
        ForeignKey("provenances.id", ondelete="RESTRICT"),
        nullable=False,
        index=True,
    )
    mjd: Mapped[float] = mapped_column(Double, nullable=False, index=True)
    band: Mapped[str] = mapped_column(String(8), nullable=False)
    field: Mapped[str | None] = mapped_column(String, nullable=True)
    section_id: Mapped[str | None] = mapped_column(String, nullable=True)
    ra: Mapped[float] = mapped_column(Double, nullable=False)
    dec: Mapped[float] = mapped_column(Double, nullable=False)
    ra_corner_00: Mapped[float] = mapped_column(Double, nullable=False)
    ra_corner_01: Mapped[float] = mapped_column(Double, nullable=False)
    ra_corner_10: Mapped[float] = mapped_column(Double, nullable=False)
    ra_corner_11: Mapped[float] = mapped_column(Double, nullable=False)
    dec_corner_00: Mapped[float] = mapped_column(Double, nullable=False)
    dec_corner_01: Mapped[float] = mapped_column(Double, nullable=False)
    dec_corner_10: Mapped[float] = mapped_column(Double, nullable=False)
    dec_corner_11: Mapped[float] = mapped_column(Double, nullable=False)
    healpix: Mapped[int] = mapped_column(BigInteger, nullable=False, index=True)
    wcs_header: Mapped[str] = mapped_column(Text, nullable=False)
    fwhm_arcsec: Mapped[float | None] = mapped_column(Double, nullable=True)
    bkg_level: Mapped[float | None] = mapped_column(Double, nullable=True)
    bkg_rms: Mapped[float | None] = mapped_column(Double, nullable=True)
    zero_point: Mapped[float | None] = mapped_column(Double, nullable=True)
    zero_point_err: Mapped[float | None] = mapped_column(Double, nullable=True)
    lim_mag: Mapped[float | None] = mapped_column(Double, nullable=True)
    astrom_rms_arcsec: Mapped[float | None] = mapped_column(Double, nullable=True)
    n_stars: Mapped[int | None] = mapped_column(Integer, nullable=True)
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    is_good: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True, server_default=true())
    extra: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)

    @declared_attr
    def provenance(cls) -> Mapped[Provenance]:
        return relationship(Provenance)

    def path_of(self, kind: str) -> str:
        """Relative path of one file of this product, e.g. ``path_of("image")`` -> ``<filepath>.image.fits``.

        Parameters
        ----------
        kind : str
            File kind: ``image``, ``weight``, ``flags``, ``psf``, ``diff``, ``score``, ...

        Returns
        -------
        str
            Path relative to the data root.
        """
        return f"{self.filepath}.{kind}.fits"


class Image(ImageMixin, Base):
    """The reduced image of one :class:`~seechange.models.exposure.Exposure` (files: image, weight, flags, psf)."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("exposure_id", "provenance_id"),)

    exposure_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("exposures.id", ondelete="CASCADE"), nullable=False, index=True
    )

    exposure: Mapped[Exposure] = relationship(back_populates="images")
    coadds: Mapped[list[CoaddImage]] = relationship(
        secondary="coadd_members", viewonly=True, order_by="CoaddImage.id"
    )

    def __repr__(self) -> str:
        return (
            f"Image(id={self.id!r}, exposure_id={self.exposure_id!r}, provenance_id={self.provenance_id!r})"
        )


#: Which Images built which CoaddImage.
coadd_members = Table(
    "coadd_members",
    Base.metadata,
    Column("coadd_id", BigInteger, ForeignKey("coadd_images.id", ondelete="CASCADE"), primary_key=True),
    Column(
        "image_id",
        BigInteger,
        ForeignKey("images.id", ondelete="RESTRICT"),
        primary_key=True,
        index=True,
    ),
)


class CoaddImage(ImageMixin, Base):
    """A coadd of several :class:`Image` rows, used as the reference of the sky it covers (one band, one instrument).

    Attributes
    ----------
    reference_key : str
        Its name, ``"<instrument>/<band>/image<anchor image id>"`` (found by footprint, not by this key).
    images : list of Image
        The member images, ordered by id (assigning the list writes the ``coadd_members`` rows).
    """

    __tablename__ = "coadd_images"
    __table_args__ = (UniqueConstraint("reference_key", "provenance_id"),)

    reference_key: Mapped[str] = mapped_column(String, nullable=False, index=True)

    images: Mapped[list[Image]] = relationship(
        secondary=coadd_members, order_by=lambda: Image.id, passive_deletes=True
    )
    subtractions: Mapped[list[SubtractionImage]] = relationship(back_populates="reference")

    def __repr__(self) -> str:
        return (
            f"CoaddImage(id={self.id!r}, reference_key={self.reference_key!r}, "
            f"provenance_id={self.provenance_id!r})"
        )


class SubtractionImage(ImageMixin, Base):
    """The difference of a new :class:`Image` and a reference :class:`CoaddImage` (ZOGY).

    Files: ``diff``, ``psf``, ``score`` (S_corr), ``weight``, ``flags``.

    Attributes
    ----------
    new_image_id : int
        The new image.
    reference_id : int
        The reference coadd.
    score_std : float or None
        Robust standard deviation of S_corr before renormalisation (dimensionless).
    n_sightings : int or None
        Number of sightings found on it (set by the detect stage).
    """

    __tablename__ = "subtraction_images"
    __table_args__ = (UniqueConstraint("new_image_id", "reference_id", "provenance_id"),)

    new_image_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("images.id", ondelete="CASCADE"), nullable=False, index=True
    )
    reference_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("coadd_images.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    score_std: Mapped[float | None] = mapped_column(Double, nullable=True)
    n_sightings: Mapped[int | None] = mapped_column(Integer, nullable=True)

    new_image: Mapped[Image] = relationship(foreign_keys=[new_image_id])
    reference: Mapped[CoaddImage] = relationship(back_populates="subtractions", foreign_keys=[reference_id])
    sightings: Mapped[list[Sighting]] = relationship(
        back_populates="subtraction", order_by="Sighting.index_in_image", passive_deletes=True
    )

    def __repr__(self) -> str:
        return (
            f"SubtractionImage(id={self.id!r}, new_image_id={self.new_image_id!r}, "
            f"reference_id={self.reference_id!r}, provenance_id={self.provenance_id!r})"
        )
