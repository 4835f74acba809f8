"""The recheck station: the newest rejects with their frame, heat map and regions, and Good / Bad buttons.

Routes (all under the daemon's HTTP endpoint; docs/station.md):

    GET  /                          the page (templates/station.html, static/station.js)
    GET  /api/rejects               the queue as JSON, newest first
    GET  /api/events                server-sent events: `queue` with the same JSON whenever it changes
    GET  /rejects/<id>/image.png    the frame as stored;  /rejects/<id>/overlay.png  the heat-map overlay
    POST /api/login  {"secret"}     unlock: sets the session cookie (HttpOnly, SameSite=Strict)
    POST /api/logout
    POST /api/rejects/<id>/mark  {"mark": "good"|"bad"}   needs the session cookie or `Authorization: Bearer`

A mark goes through Feedback.mark, the same Marker as `inspectd mark` (control socket) and the PLC's register 21:
idempotent (a repeat answers `already`), final (a conflicting mark is refused with the earlier one named: 409).
Viewing needs no secret; marking does (auth.py).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from inspectd.daemon.web.auth import LockedOutError, OperatorAuth, load_secret
from inspectd.daemon.web.config import StationConfig

COOKIE = "inspectd_station"
_STATUS = {"unknown": 404, "conflict": 409, "invalid": 400, "unavailable": 503, "failed": 503, "busy": 503}
_NO_STORE = {"Cache-Control": "no-store"}
_POLL_S = 0.25  # how often an event stream looks for a change (a dict walk of queue_length entries)
_PING_S = 15.0

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def _entry(e, mark: dict | None) -> dict:
    m = e.meta
    return {
        "id": e.id,
        "seq": e.seq,
        "plc_seq": e.plc_seq,
        "item_id": m.get("item_id", 0),
        "score": m.get("score"),
        "defect_area": m.get("defect_area"),
        "regions": m.get("regions", []),
        "time": m.get("time"),
        "width": m.get("width"),
        "height": m.get("height"),
        "pixel_threshold": m.get("pixel_threshold"),
        "model_name": m.get("model_name"),
        "mark": mark,
        "image": f"/rejects/{e.id}/image.png",
        "overlay": f"/rejects/{e.id}/overlay.png" if m.get("overlay") else None,
    }


class Station:
    def __init__(self, cfg: StationConfig, feedback, *, line: str) -> None:
        self.cfg = cfg
        self.feedback = feedback
        self.store = feedback.store
        self.line = line
        self.auth = OperatorAuth(cfg, load_secret(cfg))
        self.closing = threading.Event()  # set at shutdown: event streams end

    def routes(self) -> list[Route]:
        return [
            Route("/", self.page),
            Route("/api/rejects", self.rejects),
            Route("/api/events", self.events),
            Route("/rejects/{rid}/{which}.png", self.image),
            Route("/api/login", self.login, methods=["POST"]),
            Route("/api/logout", self.logout, methods=["POST"]),
            Route("/api/rejects/{rid}/mark", self.mark, methods=["POST"]),
        ]

    # --- reading --------------------------------------------------------------------------------------------

    def queue(self) -> list[dict]:
        """The newest rejects, each with its mark as the Marker knows it (the mark journal, the source of truth;
        the store's copy can lag behind it after a full disk)."""
        marker = self.feedback.marker
        return [
            _entry(e, marker.earlier_mark(e.id, e) if marker is not None else e.mark)
            for e in self.store.recent(self.cfg.queue_length)
        ]

    def _state(self, request: Request) -> dict:
        return {
            "line": self.line,
            "marking": self.feedback.marker is not None,
            "unlocked": self.auth.valid(request.cookies.get(COOKIE)),
            "rejects": self.queue(),
        }

    def page(self, request: Request) -> Response:
        return templates.TemplateResponse(
            request, "station.html", {"line": self.line, "initial": self._state(request)}, headers=_NO_STORE
        )

    def rejects(self, request: Request) -> Response:
        return JSONResponse(self._state(request), headers=_NO_STORE)

    def image(self, request: Request) -> Response:
        which = request.path_params["which"]
        path = self.store.file_of(request.path_params["rid"], which) if which in ("image", "overlay") else None
        try:
            data = path.read_bytes() if path is not None else None
        except OSError:  # evicted between the lookup and the read
            data = None
        if data is None:
            return JSONResponse({"ok": False, "error": "no such stored reject (evicted?)"}, status_code=404)
        # a stored reject's files never change: the browser may keep them
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=86400, immutable"})

    async def events(self, request: Request) -> Response:
        async def stream():
            yield "retry: 1000\n\n"
            last_sig = None
            last_sent = 0.0
            while not self.closing.is_set():
                # no `unlocked` here: this stream's cookie is the one it was opened with, older than a later
                # unlock; the page learns the lock from its own login and mark answers
                state = {k: v for k, v in self._state(request).items() if k != "unlocked"}
                sig = [(r["id"], (r["mark"] or {}).get("mark")) for r in state["rejects"]]
                now = time.monotonic()
                if sig != last_sig:
                    last_sig, last_sent = sig, now
                    yield f"event: queue\ndata: {json.dumps(state, separators=(',', ':'))}\n\n"
                elif now - last_sent > _PING_S:
                    last_sent = now
                    yield ": ping\n\n"
                await asyncio.sleep(_POLL_S)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={**_NO_STORE, "X-Accel-Buffering": "no"}
        )

    # --- unlocking and marking ------------------------------------------------------------------------------

    @staticmethod
    def _address(request: Request) -> str:
        return request.client.host if request.client is not None else "?"

    async def _body(self, request: Request) -> dict | None:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return None  # also keeps plain cross-site form posts out
        try:
            body = await request.json()
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    async def login(self, request: Request) -> Response:
        body = await self._body(request)
        if body is None or not isinstance(body.get("secret"), str):
            return _error(400, 'expected JSON {"secret": "<PIN>"}', "invalid")
        try:
            session = self.auth.login(self._address(request), body["secret"])
        except LockedOutError as exc:
            return _error(429, str(exc), "locked_out", {"Retry-After": str(int(exc.retry_after_s) + 1)})
        if session is None:
            return _error(401, "wrong PIN", "wrong_secret")
        response = JSONResponse({"ok": True, "unlocked": True}, headers=_NO_STORE)
        response.set_cookie(COOKIE, session, httponly=True, samesite="strict", path="/")
        return response

    async def logout(self, request: Request) -> Response:
        self.auth.logout(request.cookies.get(COOKIE))
        response = JSONResponse({"ok": True, "unlocked": False}, headers=_NO_STORE)
        response.delete_cookie(COOKIE, path="/")
        return response

    def _authorised(self, request: Request) -> bool:
        if self.auth.valid(request.cookies.get(COOKIE), touch=True):
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and bool(given) and self.auth.check(self._address(request), given.strip())

    async def mark(self, request: Request) -> Response:
        try:
            authorised = self._authorised(request)
        except LockedOutError as exc:
            return _error(429, str(exc), "locked_out")
        if not authorised:
            return _error(401, "locked: enter the operator PIN to mark (U)", "locked")
        body = await self._body(request)
        if body is None or body.get("mark") not in ("good", "bad"):
            return _error(400, 'expected JSON {"mark": "good"} or {"mark": "bad"}', "invalid")
        result = await run_in_threadpool(
            self.feedback.mark, mark=body["mark"], source="station", reject_id=request.path_params["rid"]
        )
        answer = result.as_dict()
        if not answer.get("ok"):
            return _error(_STATUS.get(answer.get("kind", ""), 500), answer.get("error", "?"), answer.get("kind", ""))
        return JSONResponse(answer, headers=_NO_STORE)


def _error(status: int, message: str, kind: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(
        {"ok": False, "error": message, "kind": kind}, status_code=status, headers={**_NO_STORE, **(headers or {})}
    )
