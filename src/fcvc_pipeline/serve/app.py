"""The HTTP side of ``fcvc serve``: a FastAPI application over a :class:`CaptionService`.

Routes (every error is ``{"error": message, "status": code}``; the OpenAPI description is at ``/docs``
and ``/openapi.json``):

- ``GET /``: the page (``page.html``: one file, no build step, nothing fetched from elsewhere).
- ``POST /v1/captions``: one or more videos as ``multipart/form-data`` file parts, with the decoding
  options as optional form fields (``beam_size``, ``max_len``, ``length_penalty``; ``figure=false``
  skips the attention figure). 200 when every video was captioned; 422 when any was not (the body
  still lists every video, each with its caption or its ``error``). 413 for a body over the size limit
  or too many files, 408 for an upload that stalls, 415 for a body that is not a form, 503 with ``Retry-After`` while the model
  loads or when ``max_queue`` requests are already in flight.
- ``GET /v1/figures/{id}.png``: an attention figure, kept for a bounded time, count and size (404 after).
  It is drawn after the caption is answered; a request for it waits until it is drawn.
- ``GET /v1/model``: what is loaded. ``GET /healthz`` (the process answers) and ``GET /readyz`` (200
  once the feature networks are built).

With a token, every ``/v1/`` route requires ``Authorization: Bearer <token>`` (401 otherwise); the
page asks for it. Each request's uploads live in their own ``mkdtemp`` folder, deleted when the
request ends, whatever the outcome (a client that goes away included).
"""

from __future__ import annotations

import asyncio
import hmac
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from fcvc_pipeline import __version__
from fcvc_pipeline.inference.options import DecodingOptions
from fcvc_pipeline.serve.engine import CaptionService, VideoJob, VideoOutcome
from fcvc_pipeline.serve.uploads import UploadError, receive_uploads

FORM_FIELDS = ("beam_size", "max_len", "length_penalty", "figure")
RETRY_AFTER_FULL = 2  # seconds a client is asked to wait when the queue is full
RETRY_AFTER_LOADING = 5
# the page loads nothing from elsewhere: its own inline script and style, figures as blob: URLs
PAGE_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' blob:; "
            "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'")
FIGURE_WAIT = 30.0  # seconds GET /v1/figures/<id>.png waits for a figure still being drawn


@dataclass(frozen=True)
class HttpLimits:
    max_upload_bytes: int = 200 * 2**20  # one request's body
    max_files: int = 16  # videos in one request
    max_queue: int = 32  # requests in flight (uploading or waiting for captions) before 503
    upload_timeout: float = 60.0  # seconds an upload may go without sending a byte (408 after)
    token: str | None = None  # when set, /v1/ routes need Authorization: Bearer <token>
    upload_root: Path | None = None  # where the per-request folders go (default: the system's temp dir)


def error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, "status": status, **extra}, status_code=status, headers=headers)


def page_html() -> str:
    return resources.files("fcvc_pipeline.serve").joinpath("page.html").read_text(encoding="utf-8")


def _round(rows: Any, digits: int = 4) -> Any:
    if rows is None:
        return None
    return [[round(float(x), digits) for x in row] for row in rows.tolist()]


def video_json(name: str, outcome: VideoOutcome) -> dict[str, Any]:
    c = outcome.caption
    out: dict[str, Any] = {"name": name, "caption": None, "error": outcome.error}
    if c is not None and c.ok:
        out.update(caption=c.text, score=c.score, normalized_score=c.normalized_score, truncated=c.truncated,
                   words=c.words, frame_attention=_round(c.frame_attention))
    out["timings"] = {k: round(v, 4) for k, v in outcome.timings.items()}
    out["batch_size"] = outcome.batch_size
    out["figure_url"] = f"/v1/figures/{outcome.figure_id}.png" if outcome.figure_id else None
    return out


def decoding_from_form(fields: dict[str, str], base: DecodingOptions) -> tuple[DecodingOptions, bool, list[str]]:
    """(options, figure wanted, problems) from the form fields."""
    problems = [f"unknown form field '{k[:40]}' (known: {', '.join(FORM_FIELDS)})" for k in fields
                if k not in FORM_FIELDS]
    values: dict[str, Any] = {}
    for name, cast in (("beam_size", int), ("max_len", int), ("length_penalty", float)):
        raw = fields.get(name, "").strip()
        if raw:
            try:
                values[name] = cast(raw)
            except ValueError:
                problems.append(f"{name} must be a number (got {raw[:40]!r})")
    figure_raw = fields.get("figure", "true").strip().lower()
    if figure_raw not in ("true", "false", "1", "0", "yes", "no", "on", "off", ""):
        problems.append(f"figure must be true or false (got {figure_raw[:40]!r})")
    options = base.override(**values)
    problems += [p.replace("--", "").replace("-", "_", 1) for p in options.problems()]
    if options.beam_size > 32:
        problems.append(f"beam_size must be at most 32 (got {options.beam_size})")
    return options, figure_raw not in ("false", "0", "no", "off"), problems


def create_app(service: CaptionService, limits: HttpLimits) -> FastAPI:
    app = FastAPI(title="fcvc serve", version=__version__,
                  description="Captions for uploaded videos from a trained FCVC captioner (fcvc export).")
    state = {"in_flight": 0}

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, "; ".join(str(e.get("msg")) for e in exc.errors()))

    def refused(request: Request) -> JSONResponse | None:
        if limits.token is None:
            return None
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), limits.token.encode()):
            return error(401, "this server needs a token: send Authorization: Bearer <token>",
                         headers={"WWW-Authenticate": "Bearer"})
        return None

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(page_html(), headers={"Cache-Control": "no-cache", "Content-Security-Policy": PAGE_CSP,
                                                  "X-Content-Type-Options": "nosniff"})

    @app.get("/healthz", summary="The process answers")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Ready once the feature networks are built")
    async def readyz() -> JSONResponse:
        if service.error is not None:
            return error(500, service.error, ready=False)
        if not service.ready.is_set():
            return error(503, "the feature networks are being built", ready=False,
                         headers={"Retry-After": str(RETRY_AFTER_LOADING)})
        return JSONResponse({"ready": True})

    @app.get("/v1/model", summary="What is loaded")
    async def model(request: Request) -> JSONResponse:
        return refused(request) or JSONResponse(service.describe())

    @app.get("/v1/figures/{figure_id}.png", summary="An attention figure (kept for a bounded time)",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def figure(figure_id: str, request: Request) -> Response:
        denied = refused(request)
        if denied is not None:
            return denied
        future = service.figures.get(figure_id)
        if future is None:
            return error(404, f"no figure {figure_id[:40]!r}: figures are kept for "
                              f"{service.settings.figure_ttl:g} s and the latest {service.settings.max_figures}")
        try:  # drawn by the figure thread after the caption was answered: wait for it
            png = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), timeout=FIGURE_WAIT)
        except asyncio.TimeoutError:
            return error(503, "the figure is still being drawn", headers={"Retry-After": "2"})
        if png is None:
            return error(404, f"the figure {figure_id[:40]!r} could not be drawn (the server's log says why)")
        return Response(png, media_type="image/png",
                        headers={"Cache-Control": f"private, max-age={int(service.settings.figure_ttl)}"})

    @app.post("/v1/captions", summary="Caption uploaded videos", openapi_extra=_CAPTIONS_OPENAPI)
    async def captions(request: Request) -> Response:
        denied = refused(request)
        if denied is not None:
            return denied
        if service.error is not None:
            return error(500, service.error)
        if not service.ready.is_set():
            return error(503, "the model is loading; try again shortly",
                         headers={"Retry-After": str(RETRY_AFTER_LOADING)})
        if state["in_flight"] >= limits.max_queue:
            return error(503, f"busy: {limits.max_queue} requests are in flight; try again shortly",
                         headers={"Retry-After": str(RETRY_AFTER_FULL)})
        state["in_flight"] += 1
        folder = Path(tempfile.mkdtemp(prefix="fcvc-upload-", dir=limits.upload_root))
        jobs: list[tuple[str, VideoJob | VideoOutcome]] = []
        try:
            try:
                form = await receive_uploads(dict(request.headers), request.stream(), folder,
                                             max_bytes=limits.max_upload_bytes, max_files=limits.max_files,
                                             idle_timeout=limits.upload_timeout)
            except UploadError as e:
                return error(e.status, e.message)
            except ClientDisconnect:
                return Response(status_code=400)  # nobody is there to read it
            options, want_figure, problems = decoding_from_form(form.fields, service.captioner.options)
            if problems:
                return error(422, "; ".join(problems))
            for upload in form.files:
                if upload.size == 0:
                    jobs.append((upload.name, VideoOutcome(None, "the upload is empty (0 bytes)")))
                else:
                    jobs.append((upload.name, service.submit(upload.path, upload.name, options, figure=want_figure)))
            waiting = [asyncio.wrap_future(j.future) for _, j in jobs if isinstance(j, VideoJob)]
            await asyncio.gather(*waiting)
            videos = [video_json(name, j if isinstance(j, VideoOutcome) else j.future.result()) for name, j in jobs]
            failed = sum(1 for v in videos if v["error"] is not None)
            body: dict[str, Any] = {"videos": videos, "model": service.captioner.path.name,
                                    "decoding": options.search_key()}
            if failed:
                return error(422, f"{failed} of {len(videos)} videos could not be captioned", **body)
            return JSONResponse(body)
        finally:
            for _, j in jobs:
                if isinstance(j, VideoJob) and not j.future.done():
                    j.cancelled = True
            shutil.rmtree(folder, ignore_errors=True)
            state["in_flight"] -= 1

    return app


_CAPTIONS_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object",
            "required": ["file"],
            "properties": {
                "file": {"type": "array", "items": {"type": "string", "format": "binary"},
                         "description": "one or more videos (each part's file name is shown, never used as a path)"},
                "beam_size": {"type": "integer", "minimum": 1, "maximum": 32},
                "max_len": {"type": "integer", "minimum": 1},
                "length_penalty": {"type": "number", "minimum": 0},
                "figure": {"type": "boolean", "default": True},
            },
        }}},
    },
}
