"""The HTTP service: ``python -m src serve --model M`` (FastAPI under uvicorn; OpenAPI page at ``/docs``).

``POST /v1/recognize`` takes photos as multipart parts named ``photos`` and answers one record per photo, in order
(the fields ``predict --json`` prints, ``file`` instead of ``path``). Photos from concurrent requests are decoded
in a thread pool and grouped into batches (at most ``max_batch`` photos, waiting at most ``max_wait_ms`` for more)
run on parallel runners (``--model-workers``), so a request does not pay a forward pass of its own.

Limits keep load and bad input from taking it down: the request body is capped (checked on ``Content-Length``
before anything is read, and counted while reading), each photo's pixel count is checked on its header before
decoding, the number of requests inside is bounded (more: 503 with ``Retry-After`` at once, not a pile-up of
timeouts), each request has a timeout (504), and shutdown finishes the requests in flight. A bad photo gets
``status: "error"`` with a one-line reason while the others are answered; a request of only bad photos is a 422.
"""
from __future__ import annotations

import argparse
import asyncio
import hmac
import io
import itertools
import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .backends import parallel_runners
from .batching import Batcher, Metrics
from .images import MAX_IMAGE_PIXELS, ImageLoadError, error_line
from .pipeline import decode_for_batch
from .predict import with_threshold_info
from .recognizer import Recognizer

log = logging.getLogger(__name__)
_request_ids = itertools.count(1)  # one number per request, for the batcher's bookkeeping

TOKEN_ENV, TOKEN_FILE_ENV = "LANDMARK_API_TOKEN", "LANDMARK_API_TOKEN_FILE"
MAX_K = 50


@dataclass
class ServeSettings:
    """The service's knobs (``python -m src serve --help`` documents each)."""

    max_batch: int = 8             # photos per forward pass (per-photo cost on a CPU is lowest around 8)
    max_wait_ms: float = 5.0       # how long an idle model waits for more photos before running a partial batch
    max_requests: int = 64         # requests inside at once (queued, decoding or answered); more: 503
    max_upload_bytes: int = 20 * 1024 * 1024
    max_photos: int = 32           # photos per request
    max_pixels: int = MAX_IMAGE_PIXELS
    timeout_s: float = 30.0        # per request, from the moment it is let in
    decode_threads: int = 2
    model_workers: int = 0         # parallel forward passes; 0: 2 for ONNX Runtime on a CPU of 2+ cores, else 1
    min_prob: float | None = None  # overrides the model's calibrated threshold for every request


def load_recognizer(model_path, device: str = "cpu", backend: str = "auto", min_prob: float | None = None):
    """The open-set :class:`src.recognizer.Recognizer` for ``model_path`` (its index found beside it)."""
    return Recognizer.load(model_path, device=device, backend=backend, min_prob=min_prob)


def api_record(record: dict) -> dict:
    """A recognizer record as the API answers it: ``file`` instead of ``path``."""
    record = dict(record)
    record["file"] = record.pop("path", None)
    return {"file": record["file"], **{k: v for k, v in record.items() if k != "file"}}


# --------------------------------------------------------------------------------------------------------------
# Limits as ASGI middleware: body size, admission (bounded queue), per-request timeout
# --------------------------------------------------------------------------------------------------------------

class _BodyTooLarge(Exception):
    pass


async def _send_json(send, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


class LimitsMiddleware:
    """Refuses what would hurt the service before the application reads it.

    * a body over ``max_upload_bytes``: 413 on its ``Content-Length`` before reading any of it, else (chunked
      uploads) as soon as the bytes read pass the limit;
    * more than ``max_requests`` requests inside: 503 with ``Retry-After`` at once (health, metrics and the
      landmark list are never refused);
    * a request still unanswered ``timeout_s`` after it was let in: 504.
    """

    def __init__(self, app, state: "ServiceState"):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state, settings = self.state, self.state.settings
        path = scope.get("path", "")
        limited = scope.get("method") in ("POST", "PUT", "PATCH", "DELETE") or path == "/v1/recognize"
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared < 0:
                state.metrics.errors.labels("bad_request").inc()
                return await _send_json(send, 400, {"detail": "invalid Content-Length header"})
            if declared > settings.max_upload_bytes:
                state.metrics.errors.labels("too_large").inc()
                state.metrics.requests.labels(path, "413").inc()
                return await _send_json(send, 413, {"detail": _too_large(declared, settings.max_upload_bytes)},
                                        {"Connection": "close"})
        if not limited:
            return await self.app(scope, receive, send)
        if state.active >= settings.max_requests or state.closing:
            state.metrics.errors.labels("overloaded").inc()
            state.metrics.requests.labels(path, "503").inc()
            retry = state.retry_after()
            return await _send_json(send, 503, {"detail": f"the service is at capacity ({state.active} requests "
                                                          f"inside); retry in {retry} s"}, {"Retry-After": str(retry)})
        received, too_large, started = 0, False, False

        async def counted_receive():
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > settings.max_upload_bytes:
                    too_large = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message):
            nonlocal started
            if too_large and not started:  # the app's own reaction to the aborted body (a 400) is replaced
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        state.active += 1
        state.metrics.in_flight.set(state.active)
        entered = time.perf_counter()
        try:
            await asyncio.wait_for(self.app(scope, counted_receive, guarded_send), settings.timeout_s)
        except _BodyTooLarge:
            pass
        except asyncio.TimeoutError:
            state.metrics.errors.labels("timeout").inc()
            if not started:
                started = True
                state.metrics.requests.labels(path, "504").inc()
                await _send_json(send, 504, {"detail": f"not answered within {settings.timeout_s:g} s; the service "
                                                       f"is overloaded or the photos too many"})
        finally:
            state.active -= 1
            state.metrics.in_flight.set(state.active)
            state.metrics.admitted_seconds.observe(time.perf_counter() - entered)
        if too_large and not started:
            state.metrics.errors.labels("too_large").inc()
            state.metrics.requests.labels(path, "413").inc()
            await _send_json(send, 413, {"detail": _too_large(received, settings.max_upload_bytes, read=True)},
                             {"Connection": "close"})


def _too_large(size: int, limit: int, read: bool = False) -> str:
    what = f"more than {limit} bytes read" if read else f"{size} bytes"
    return f"upload too large ({what}; the limit is {limit / 2**20:g} MiB per request)"


# --------------------------------------------------------------------------------------------------------------
# The application
# --------------------------------------------------------------------------------------------------------------

@dataclass
class ServiceState:
    settings: ServeSettings
    metrics: Metrics
    recognizer: Any = None
    batcher: Batcher | None = None
    decoder: ThreadPoolExecutor | None = None
    token: str | None = None
    model_name: str = ""
    ready: bool = False
    closing: bool = False
    active: int = 0
    started: float = field(default_factory=time.monotonic)

    def retry_after(self) -> int:
        """Seconds a refused client should wait: about the time the model needs for what is queued."""
        if self.batcher is None:
            return 1
        # prometheus_client keeps no public getter for a histogram's sum
        photos = self.metrics.batch_size._sum.get()  # noqa: SLF001
        per_photo = self.metrics.forward_seconds._sum.get() / photos if photos else 0.1  # noqa: SLF001
        return max(1, math.ceil(per_photo * (self.batcher.queued() + self.active)))


def read_token(env: dict | None = None) -> str | None:
    """The API token from ``LANDMARK_API_TOKEN``, else from the file named by ``LANDMARK_API_TOKEN_FILE``; None when
    neither is set (the write endpoints are then off). There is never a default token."""
    env = os.environ if env is None else env
    token = env.get(TOKEN_ENV)
    if not token and env.get(TOKEN_FILE_ENV):
        path = Path(env[TOKEN_FILE_ENV])
        try:
            token = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"{path}: cannot read the API token file ({exc.strerror or exc})") from None
        token = token.strip()
        if not token:
            raise ValueError(f"{path}: the API token file is empty")
    return token.strip() if token else None


def create_app(model, settings: ServeSettings | None = None, *, backend: str = "auto", device: str = "cpu",
               token: str | None = None, recognizer=None):
    """The FastAPI application serving ``model`` (an exported model file; or pass a loaded ``recognizer``).

    The model is loaded and warmed up when the application starts (``/healthz`` answers 200 from then on) and
    the model thread stops after the requests in flight are answered.
    """
    settings = settings or ServeSettings()
    state = ServiceState(settings, Metrics(), token=token or None, model_name=str(model))

    @asynccontextmanager
    async def lifespan(app):
        loop = asyncio.get_running_loop()
        rec = recognizer
        if rec is None:
            rec = await loop.run_in_executor(None, lambda: load_recognizer(model, device, backend, settings.min_prob))
        state.recognizer = rec
        state.decoder = ThreadPoolExecutor(max_workers=max(1, settings.decode_threads), thread_name_prefix="decode")
        runners = await loop.run_in_executor(None, lambda: parallel_runners(rec.backend, settings.model_workers))
        state.batcher = Batcher(rec, settings.max_batch, settings.max_wait_ms / 1000.0, state.metrics.on_batch,
                                expecting=lambda requests: state.active > len(requests), runners=runners)
        size = int(rec.resize_size)
        for n in (1, settings.max_batch, 1):  # the first calls of an optimised TorchScript module are slow
            blank = torch.zeros(3, size, size, dtype=torch.uint8)
            await asyncio.gather(*(asyncio.wrap_future(state.batcher.submit(blank, "warm-up", 1, None))
                                   for _ in range(n)))
        state.ready = True
        log.info("Serving %s (%s backend, %d classes)", model, getattr(getattr(rec, "backend", None), "name", "?"),
                 len(rec.landmarks()))
        try:
            yield
        finally:
            state.ready, state.closing = False, True
            await loop.run_in_executor(None, state.batcher.close)
            state.decoder.shutdown(wait=True)

    app = FastAPI(title="Landmark Tagger", version="1",
                  description="Recognise famous landmarks in photos and give their location. `POST /v1/recognize` "
                              "with multipart parts named `photos`.", lifespan=lifespan,
                  docs_url=None, redoc_url=None)  # add_docs_pages serves them without a CDN
    add_docs_pages(app)
    app.add_middleware(LimitsMiddleware, state=state)
    bearer = HTTPBearer(auto_error=False)

    def timed(endpoint: str):
        def deco(fn):
            import functools  # noqa: PLC0415

            @functools.wraps(fn)
            async def wrapper(*args, **kwargs):
                start = time.perf_counter()
                code = "500"
                try:
                    response = await fn(*args, **kwargs)
                    code = str(getattr(response, "status_code", 200))
                    return response
                except HTTPException as exc:
                    code = str(exc.status_code)
                    raise
                finally:
                    state.metrics.requests.labels(endpoint, code).inc()
                    state.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
            return wrapper
        return deco

    def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if state.token is None:
            state.metrics.errors.labels("forbidden").inc()
            raise HTTPException(403, f"changing landmarks is off: no API token is configured (set {TOKEN_ENV} or "
                                     f"{TOKEN_FILE_ENV} where the service starts)")
        given = credentials.credentials if credentials is not None else ""
        if not given or not hmac.compare_digest(given.encode(), state.token.encode()):
            state.metrics.errors.labels("unauthorized").inc()
            raise HTTPException(401, "missing or wrong API token (Authorization: Bearer TOKEN)",
                                headers={"WWW-Authenticate": "Bearer"})

    async def decode(upload: UploadFile, size: int, crop: int) -> tuple[torch.Tensor | None, str | None, Any]:
        name = upload.filename or "photo"
        data = await upload.read()
        loop = asyncio.get_running_loop()
        try:
            image, gps = await loop.run_in_executor(state.decoder, _decode_upload, data, name, size, crop,
                                                    settings.max_pixels, True)
        except Exception as exc:  # one bad photo stays with that photo
            return None, error_line(name, exc), None
        return image, None, gps

    @app.get("/healthz", summary="200 once the model is loaded and answering")
    async def healthz():
        if not state.ready:
            return JSONResponse({"status": "starting" if not state.closing else "stopping"}, status_code=503)
        return {"status": "ok", "model": state.model_name,
                "backend": getattr(getattr(state.recognizer, "backend", None), "name", None),
                "landmarks": len(state.recognizer.landmarks()), "queued": state.batcher.queued(),
                "in_flight": state.active, "uptime_s": round(time.monotonic() - state.started, 1)}

    @app.get("/metrics", summary="Prometheus metrics (text format)")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST  # noqa: PLC0415

        state.metrics.queue_length.set(state.batcher.queued() if state.batcher else 0)
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/recognize", summary="Recognise the landmark in each photo",
              responses={413: {"description": "upload too large or too many photos"},
                         422: {"description": "no usable photo in the request"},
                         503: {"description": "at capacity; retry after Retry-After seconds"},
                         504: {"description": "not answered in time"}})
    @timed("/v1/recognize")
    async def recognize(photos: list[UploadFile] = File(..., description="one or more photo files"),
                        k: int = Query(5, ge=1, le=MAX_K, description="how many guesses per photo"),
                        min_prob: float | None = Query(None, ge=0.0, le=1.0,
                                                       description="override the model's calibrated threshold "
                                                                   "for 'no known landmark'")):
        """One record per photo, in the order sent: `status` is `ok` (a landmark, its place and top-k guesses),
        `no_known_landmark` (no location given: a wrong one is worse than none) or `error` (a one-line reason);
        a request of only bad photos is a 422 with the same records."""
        if len(photos) > settings.max_photos:
            state.metrics.errors.labels("too_many_photos").inc()
            raise HTTPException(413, f"too many photos in one request ({len(photos)}; the limit is "
                                     f"{settings.max_photos})")
        rec = state.recognizer
        size, crop = int(rec.resize_size), int(rec.img_size)
        threshold = settings.min_prob if min_prob is None else min_prob
        info = rec.threshold_info(threshold)
        decoded = await asyncio.gather(*(decode(p, size, crop) for p in photos))
        request = next(_request_ids)
        futures = [asyncio.wrap_future(state.batcher.submit(image, p.filename or "photo", k, threshold, gps, request))
                   if image is not None else None for p, (image, _, gps) in zip(photos, decoded)]
        state.metrics.queue_length.set(state.batcher.queued())
        try:
            answered = await asyncio.gather(*(f for f in futures if f is not None))
        except asyncio.CancelledError:
            for f in futures:
                if f is not None:
                    f.cancel()
            raise
        answers = iter(answered)
        results = []
        for photo, (_, error, _), future in zip(photos, decoded, futures):
            record = next(answers) if future is not None else rec.error_record(photo.filename or "photo", error)
            results.append(api_record(with_threshold_info(record, info)))
            state.metrics.photos.labels(record["status"]).inc()
            if record["status"] == "error":
                state.metrics.errors.labels("bad_photo").inc()
        if all(r["status"] == "error" for r in results):
            return JSONResponse({"detail": "no usable photo in the request: " + "; ".join(
                r["error"] or "" for r in results)[:2000], "results": results}, status_code=422)
        return {"results": results, "threshold": rec.threshold_info(threshold)}

    @app.get("/v1/landmarks", summary="The landmarks the model knows")
    @timed("/v1/landmarks")
    async def landmarks():
        return {"landmarks": state.recognizer.landmarks(), "threshold": state.recognizer.threshold_info(
            settings.min_prob)}

    @app.get("/v1/model", summary="The model: its landmarks and how its threshold was chosen")
    @timed("/v1/model")
    async def model_info():
        """What decides: the model file, method and backend, how many landmarks, and the threshold with where it
        comes from (``calibrated`` false: a fallback, a missing index or a hand-set value; its false rate is then
        unknown). A photo gets a landmark when its confidence >= the threshold."""
        rec = state.recognizer
        return {"model": state.model_name, "method": rec.method,
                "backend": getattr(getattr(rec, "backend", None), "name", None), "landmarks": len(rec.landmarks()),
                "threshold": rec.threshold_info(settings.min_prob),
                "rule": "a landmark when confidence >= threshold (both rounded to 6 decimals)"}

    @app.post("/v1/landmarks", summary="Add a landmark from example photos (API token required)",
              dependencies=[Depends(require_token)], status_code=201)
    @timed("POST /v1/landmarks")
    async def add_landmark(name: str = Form(..., min_length=1, max_length=200),
                           photos: list[UploadFile] = File(..., description="example photos of the landmark"),
                           city: str | None = Form(None), country: str | None = Form(None),
                           lat: float | None = Form(None, ge=-90, le=90),
                           lon: float | None = Form(None, ge=-180, le=180)):
        rec = state.recognizer
        if not callable(getattr(rec, "enroll", None)):
            raise HTTPException(501, "this model cannot learn landmarks (no landmark index beside it)")
        if len(photos) > settings.max_photos:
            raise HTTPException(413, f"too many photos in one request ({len(photos)}; the limit is "
                                     f"{settings.max_photos})")
        loop = asyncio.get_running_loop()
        size, crop = int(rec.resize_size), int(rec.img_size)
        images, refs, errors = [], [], []
        for upload in photos:
            upload_name = upload.filename or "photo"
            data = await upload.read()
            try:
                images.append(await loop.run_in_executor(state.decoder, _decode_upload, data, upload_name, size,
                                                         crop, settings.max_pixels))
                refs.append(f"{name}/{upload_name}")
            except Exception as exc:
                errors.append(error_line(upload_name, exc))
        if errors:
            raise HTTPException(422, "; ".join(errors)[:2000])
        location = {key: value for key, value in (("city", city), ("country", country), ("lat", lat), ("lon", lon))
                    if value is not None}
        try:
            result = await asyncio.wrap_future(state.batcher.call(
                lambda: rec.enroll(name, images, refs=refs, location=location or None)))
        except ValueError as exc:  # no index for this model (LandmarkIndexError), a bad name or location
            raise HTTPException(409 if type(exc).__name__ == "LandmarkIndexError" else 400, _one_line(exc)) from None
        return JSONResponse(result, status_code=201)

    @app.delete("/v1/landmarks/{landmark}", summary="Remove an added landmark (API token required)",
                dependencies=[Depends(require_token)])
    @timed("DELETE /v1/landmarks")
    async def remove_landmark(landmark: str):
        rec = state.recognizer
        if not callable(getattr(rec, "remove", None)):
            raise HTTPException(501, "this model cannot learn landmarks (no landmark index beside it)")
        try:
            return await asyncio.wrap_future(state.batcher.call(lambda: rec.remove(landmark)))
        except KeyError as exc:
            raise HTTPException(404, _one_line(exc)) from None
        except ValueError as exc:  # no index for this model (LandmarkIndexError)
            raise HTTPException(409 if type(exc).__name__ == "LandmarkIndexError" else 400, _one_line(exc)) from None

    app.state.service = state
    return app


DOCS_ASSETS = "/docs-assets"  # where the Swagger UI and Redoc files are served


def add_docs_pages(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` with their JavaScript, CSS and icon served by the service itself instead
    of FastAPI's default CDN, so both pages work on a machine without internet access. This is FastAPI's pattern
    for self-hosting them (https://fastapi.tiangolo.com/how-to/custom-docs-ui-assets/); the files (Swagger UI 5,
    Redoc 2) come with the fastapi-offline package. No OAuth2 redirect page: the API's only scheme is a bearer
    token."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html  # noqa: PLC0415
    from fastapi.staticfiles import StaticFiles  # noqa: PLC0415

    app.mount(DOCS_ASSETS, StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request):
        root = request.scope.get("root_path", "").rstrip("/")  # behind a proxy that mounts the service below /
        return get_swagger_ui_html(openapi_url=root + app.openapi_url, title=f"{app.title} - Swagger UI",
                                   swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
                                   # nor does the page send the schema's address to swagger.io's validator
                                   swagger_ui_parameters={"validatorUrl": None})

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request):
        root = request.scope.get("root_path", "").rstrip("/")
        return get_redoc_html(openapi_url=root + app.openapi_url, title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
                              redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png", with_google_fonts=False)


def _one_line(exc: BaseException) -> str:
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(str(text).split())[:500] or type(exc).__name__


def _check_pixels(data: bytes, name: str, max_pixels: int) -> None:
    """Refuse a photo whose header declares more than ``max_pixels`` before any pixel is decoded."""
    if max_pixels >= MAX_IMAGE_PIXELS:
        return  # open_image refuses above its own limit the same way
    from PIL import Image  # noqa: PLC0415

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except Exception:  # not an image: open_image gives the reason
        return
    if width * height > max_pixels:
        raise ImageLoadError(name, f"too large ({width}x{height} = {width * height} pixels; this service takes at "
                                   f"most {max_pixels})")


def _decode_upload(data: bytes, name: str, size: int, crop: int, max_pixels: int, with_gps: bool = False):
    """An upload as the uint8 ``[3, R, R]`` a batch stacks (and its EXIF GPS position, like ``predict``)."""
    _check_pixels(data, name, max_pixels)
    image = decode_for_batch(data, size, crop, name=name)
    if not with_gps:
        return image
    from .metadata import read_exif_gps  # noqa: PLC0415

    return image, read_exif_gps(io.BytesIO(data))


# --------------------------------------------------------------------------------------------------------------
# Command line: python -m src serve --model M [--host 127.0.0.1] [--port 8000] [--backend ...]
# --------------------------------------------------------------------------------------------------------------

def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    from .backends import add_backend_argument  # noqa: PLC0415

    d = ServeSettings()
    parser.add_argument("--model", default=None,
                        help="exported model (default: checkpoints/transfer_exported.pt, else original_exported.pt)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000)
    add_backend_argument(parser)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, or auto")
    parser.add_argument("--max-batch", type=int, default=d.max_batch,
                        help="photos per forward pass (default %(default)s)")
    parser.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms,
                        help="how long an idle model waits for more photos (default %(default)s ms)")
    parser.add_argument("--max-requests", type=int, default=d.max_requests,
                        help="requests inside at once; more get 503 + Retry-After (default %(default)s)")
    parser.add_argument("--max-upload-mb", type=float, default=d.max_upload_bytes / 2**20,
                        help="largest request body in MiB (default %(default)g)")
    parser.add_argument("--max-photos", type=int, default=d.max_photos, help="photos per request (default %(default)s)")
    parser.add_argument("--max-pixels", type=int, default=d.max_pixels,
                        help="largest photo in pixels, checked on its header (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=d.timeout_s, help="seconds per request (default %(default)g)")
    parser.add_argument("--decode-threads", type=int, default=d.decode_threads,
                        help="threads decoding photos (default %(default)s)")
    parser.add_argument("--model-workers", type=int, default=d.model_workers,
                        help="forward passes run in parallel (default: 2 for ONNX Runtime on a CPU of 2+ cores, "
                             "else 1)")
    parser.add_argument("--min-prob", type=float, default=None,
                        help="'no known landmark' threshold for every request (default: the model's calibrated one)")
    parser.add_argument("--access-log", action="store_true", help="log every request")


def serve_main(args: argparse.Namespace) -> int:
    import uvicorn  # noqa: PLC0415

    from .predictor import default_exported_path  # noqa: PLC0415

    model = args.model or str(default_exported_path())
    for name in ("max_batch", "max_requests", "max_photos", "max_pixels", "decode_threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if args.model_workers < 0:
        raise ValueError("--model-workers must be 0 (automatic) or more")
    if args.max_wait_ms < 0 or args.timeout <= 0 or args.max_upload_mb <= 0:
        raise ValueError("--max-wait-ms must be >= 0, --timeout and --max-upload-mb > 0")
    if args.min_prob is not None and not 0.0 <= args.min_prob <= 1.0:
        raise ValueError(f"--min-prob must be between 0 and 1, got {args.min_prob}")
    settings = ServeSettings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_requests=args.max_requests,
                             max_upload_bytes=int(args.max_upload_mb * 2**20), max_photos=args.max_photos,
                             max_pixels=args.max_pixels, timeout_s=args.timeout, decode_threads=args.decode_threads,
                             model_workers=args.model_workers,
                             min_prob=args.min_prob)
    token = read_token()
    # Loaded here, not in the server's start-up: a wrong path or a damaged file is one line and exit status 1
    recognizer = load_recognizer(model, args.device, args.backend, settings.min_prob)
    log.info("Threshold: %s", recognizer.threshold_note(settings.min_prob))
    if token is None:
        log.info("No API token (%s / %s): adding and removing landmarks is off", TOKEN_ENV, TOKEN_FILE_ENV)
    app = create_app(model, settings, backend=args.backend, device=args.device, token=token, recognizer=recognizer)
    uvicorn.run(app, host=args.host, port=args.port, access_log=args.access_log, log_level="info",
                timeout_graceful_shutdown=int(math.ceil(settings.timeout_s)) + 5)
    return 0
