"""SeeChange: a time-domain data-reduction pipeline joined by Kafka topics."""

__version__ = "0.1.0"
CODE_VERSION = "0.1"  # major.minor, enters every provenance hash
