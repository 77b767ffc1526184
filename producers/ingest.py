"""ingest producer: raw CCD files -> Exposure rows -> exposure-ready (keyed by exposure id).

A thin entry point: the logic is :class:`seechange.streaming.ingestor.Ingestor` (``seechange ingest`` runs
it); this module re-exports it for the services' side of the arrows (``producers -> seechange``).
"""

from __future__ import annotations

from seechange.streaming.ingestor import Ingestor, IngestReport

__all__ = ["IngestReport", "Ingestor"]
