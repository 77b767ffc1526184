"""``seechange web``: pages for people (recent alerts, objects, the pipeline) and the JSON API behind them.

- :mod:`seechange.web.app`: the FastAPI application (pages, API, OpenAPI description), read-only;
- :mod:`seechange.web.queries`: alerts with the subscriber's filters, objects, cone and name search,
  provenance of a sighting's products;
- :mod:`seechange.web.pipeline`: rows per stage in the last hour, a night's exposures and their state,
  exposure-to-alert latency, the broker's view (``seechange status``) cached;
- :mod:`seechange.web.images`: PNG cutouts (zscale or asinh), the lightcurve and latency plots;
- :mod:`seechange.web.server`: running it (uvicorn) in the foreground or in a thread;
- :mod:`seechange.web.bench`: the alerts page's load time with many alerts in the database.
"""
