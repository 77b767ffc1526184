"""Where the tests find things outside the package: the real survey data next to the repository."""

from __future__ import annotations

from seechange.config import PROJECT_ROOT

#: ``../shared/data`` relative to the repository (real DECam files; see its README).
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
