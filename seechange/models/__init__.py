"""SQLAlchemy 2.0 ORM of SeeChange; one module per table family, alembic migrations in ``migrations/``."""

from seechange.models.alert import AlertLog
from seechange.models.base import NAMING_CONVENTION, Base, CreatedAtMixin, IdMixin
from seechange.models.exposure import Exposure
from seechange.models.forced import ForcedPhotometry
from seechange.models.image import CoaddImage, Image, ImageMixin, SubtractionImage, coadd_members
from seechange.models.object import Object
from seechange.models.provenance import PROVENANCE_ID_LENGTH, Provenance, provenance_upstreams
from seechange.models.sighting import Cutouts, Photometry, Sighting

__all__ = [
    "NAMING_CONVENTION",
    "PROVENANCE_ID_LENGTH",
    "AlertLog",
    "Base",
    "CoaddImage",
    "CreatedAtMixin",
    "Cutouts",
    "Exposure",
    "ForcedPhotometry",
    "IdMixin",
    "Image",
    "ImageMixin",
    "Object",
    "Photometry",
    "Provenance",
    "Sighting",
    "SubtractionImage",
    "coadd_members",
    "provenance_upstreams",
]
