"""The daemon's HTTP endpoint (`http:`): /metrics, /healthz, /readyz and the recheck station (docs/station.md).

config.py   the `http:` section
app.py      the Starlette application: health, readiness, metrics
station.py  the recheck-station page and its API
auth.py     the operator's PIN: sessions and lockout
server.py   uvicorn in a thread of the daemon
"""

from __future__ import annotations

from inspectd.daemon.web.config import HttpConfig, StationConfig

__all__ = ["HttpConfig", "StationConfig", "serve"]


def serve(cfg: HttpConfig, *, status, metrics, feedback, line: str):
    """Build the application for `cfg` and start serving it; returns the server (close() it at the end).
    Raises ConfigError (the station's secret file) or HttpError (the port)."""
    from inspectd.daemon.web.app import build_app
    from inspectd.daemon.web.server import HttpServer
    from inspectd.daemon.web.station import Station

    station = Station(cfg.station, feedback, line=line) if cfg.station is not None else None
    # at shutdown the station's event streams end first, so uvicorn does not wait for them
    server = HttpServer(
        build_app(status, metrics, station), cfg.host, cfg.port, before_close=station.closing.set if station else None
    )
    server.start()
    return server
