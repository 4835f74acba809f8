"""The daemon's HTTP application (Starlette): /healthz, /readyz, /metrics and, where configured, the station.

    GET /healthz   200 {"status": "ok"} while the pipeline is alive and the camera delivers; 503 with the reason
    GET /readyz    200 while ready (the PLC's ready coil: running, model loaded, camera open); 503 with the reason
    GET /metrics   the Prometheus text format (inspectd/daemon/metrics.py)

The rules are DaemonStatus's (inspectd/daemon/status.py), the same the control socket's status reports.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from inspectd.daemon.metrics import Metrics
from inspectd.daemon.status import Check, DaemonStatus

STATIC = Path(__file__).parent / "static"
# the page loads only its own script, style and images: no inline script, no framing, no other origin
_CSP = "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'"


def _check(check: Check) -> Response:
    body = {"status": "ok" if check.ok else "unavailable", "reason": check.reason}
    return JSONResponse(body, status_code=200 if check.ok else 503, headers={"Cache-Control": "no-store"})


def build_app(status: DaemonStatus, metrics: Metrics, station=None) -> Starlette:
    def healthz(request: Request) -> Response:
        return _check(status.health())

    def readyz(request: Request) -> Response:
        return _check(status.readiness())

    def metrics_page(request: Request) -> Response:  # sync: Starlette runs it in its thread pool
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})

    def no_station(request: Request) -> Response:
        return JSONResponse(
            {"ok": False, "error": "the recheck station is not configured (http.station in the daemon's config)"},
            status_code=404,
        )

    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_page),
    ]
    if station is not None:
        routes += [*station.routes(), Mount("/static", app=StaticFiles(directory=str(STATIC)), name="static")]
    else:
        routes.append(Route("/", no_station))
    return Starlette(routes=routes, middleware=[Middleware(SecurityHeaders)], debug=False)


class SecurityHeaders:
    """Pure ASGI middleware (streams pass through untouched): nosniff, no framing, no referrer, CSP on pages."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("X-Frame-Options", "DENY")
                headers.setdefault("Referrer-Policy", "no-referrer")
                if headers.get("content-type", "").startswith("text/html"):
                    headers.setdefault("Content-Security-Policy", _CSP)
            await send(message)

        await self.app(scope, receive, send_with_headers)
