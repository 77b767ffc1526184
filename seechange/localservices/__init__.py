"""Local real services for development and tests: a Kafka KRaft broker from Maven jars, embedded PostgreSQL.

Use :func:`up` / :func:`down` / :func:`status`, and :func:`endpoints` to fill the addresses into Settings.
"""

from seechange.localservices.manager import Endpoints, ServiceStatus, down, endpoints, status, up
from seechange.localservices.process import ServiceError

__all__ = ["Endpoints", "ServiceError", "ServiceStatus", "down", "endpoints", "status", "up"]
