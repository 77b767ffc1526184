# One image for every SeeChange service (see docker-compose.yml); the command picks the stage.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SEECHANGE_DATA_DIR=/data \
    SEECHANGE_CACHE_DIR=/tmp/seechange-cache

WORKDIR /app

# Dependencies first (cached layer), then the code.
COPY pyproject.toml ./
RUN mkdir -p seechange && touch seechange/__init__.py \
    && pip install . \
    && pip uninstall -y seechange \
    && rm -rf seechange build *.egg-info

COPY seechange ./seechange
COPY consumers ./consumers
COPY producers ./producers
COPY schemas ./schemas
# Editable install: seechange finds schemas/ and its migrations through the source tree in /app.
RUN pip install --no-deps -e . \
    && useradd --create-home --uid 10001 seechange \
    && mkdir -p /data/incoming \
    && chown -R seechange:seechange /data

USER seechange
VOLUME ["/data"]
CMD ["seechange", "--help"]
