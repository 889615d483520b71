"""A web page and JSON endpoint that score uploaded images with a trained workdir.

  app = create_app("workdirs/mobilenet_v2")   # FastAPI; run by `python -m cxr_jax.tools.serve`

  GET  /              one page: upload JPEG, PNG or DICOM files, see each one's probability,
                      label at the operating point, out-of-distribution flag and Grad-CAM
  GET  /static/...    the page's script and style (serve_static/, beside this module)
  POST /api/predict   multipart "files" -> {"results": [...]} (the same, as JSON)
  GET  /api/model     what model answers, and its thresholds
  GET  /api/queue     how many requests score and wait now, and the queue's limits

Files go through the project's one decoding path (`data.decode`) and `predict`'s scoring
(`evaluation.predict.score_images`): the page says exactly what `predict` would write.
Uploads over `max_upload_mb` and unreadable files get a clear error per file.

What keeps one client from harming others (README.md, "Serving"): with a `token`, every
route but the page and its static files needs `Authorization: Bearer <token>`
(`check_exposure` refuses a host beyond loopback without one); a request's images may hold
at most `max_megapixels` in all, read from their headers before anything is decoded; at
most `max_concurrent` requests score at once, up to `max_queue` more wait their turn (first
come, first served) for at most `max_wait_s`, and others get 503 with Retry-After. The page
shows every string it receives as text, never as HTML.

Over 350 lines because the page's server is one FastAPI app: its guards (token, pixel
cap, queue) read best beside the routes they guard.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hmac
import html
import io
import ipaddress
import os
from typing import Annotated

import matplotlib
import numpy as np
import pydicom
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image

from cxr_jax.data import decode
from cxr_jax.data import dicom
from cxr_jax.data.splits import CLASS_NAMES
from cxr_jax.fits import fit
from cxr_jax.inference import adaptation
from cxr_jax import predict
from cxr_jax import registry

DEFAULT_MAX_UPLOAD_MB = 25
MAX_FILES = 32
# 32 large radiographs (25 MP each) per request: far above any real upload, yet it bounds
# the decoding one request can ask for.
DEFAULT_MAX_MEGAPIXELS = MAX_FILES * 25
# Scoring already uses every core; more requests at once only queue up in memory.
DEFAULT_MAX_CONCURRENT = 2
# Room for a team posting at the same moment; beyond it, 503 says when to come back instead
# of letting requests, whose uploads wait in memory, pile up.
DEFAULT_MAX_QUEUE = 16
DEFAULT_MAX_WAIT_S = 60.0
RETRY_AFTER_S = 5
# The page, its script and its style: files inside the package, found from this module.
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve_static")
# What a request may call itself, so that `GET /api/queue?ticket=` finds it in line.
Ticket = Annotated[str, Query(max_length=64, description="Any name the client chose for its "
                              "request, e.g. a random hex string.")]
# The page runs only its own script and loads only its own files (Grad-CAMs are data: URLs).
PAGE_POLICY = ("default-src 'self'; img-src 'self' data:; object-src 'none'; "
               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
TOKEN_ENV = "CXR_JAX_TOKEN"
MIN_TOKEN_LENGTH = 16


class PixelLimitError(ValueError):
  """A request whose images hold more pixels than the server decodes for one request."""


class Busy(Exception):
  """No turn to score: the queue is full, or the wait ran past its limit."""


class ScoringQueue:
  """At most `max_concurrent` requests score at once; up to `max_queue` more wait their turn,
  first come first served, each for at most `max_wait_s` seconds.

  A waiting request is a future on the event loop, so it holds no thread and blocks
  nothing. Every call comes from the one event loop that serves the app (uvicorn's).
  """

  def __init__(self, max_concurrent: int, max_queue: int, max_wait_s: float):
    if max_concurrent < 1:
      raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
    if max_queue < 0:
      raise ValueError(f"max_queue must be at least 0, got {max_queue}")
    if not max_wait_s > 0:
      raise ValueError(f"max_wait_s must be above 0, got {max_wait_s}")
    self.max_concurrent, self.max_queue, self.max_wait_s = max_concurrent, max_queue, max_wait_s
    self.scoring = 0
    self._waiting: collections.deque[tuple[str, asyncio.Future]] = collections.deque()

  def state(self, ticket: str = "") -> dict:
    """Requests scoring and waiting now, the limits, and how many wait ahead of the request
    that sent `ticket` ("ahead": None when it is not waiting)."""
    ahead = next((i for i, (t, _) in enumerate(self._waiting) if ticket and t == ticket), None)
    return {"scoring": self.scoring, "waiting": len(self._waiting), "ahead": ahead,
            "max_concurrent": self.max_concurrent, "max_queue": self.max_queue,
            "max_wait_s": self.max_wait_s}

  async def acquire(self, ticket: str = "") -> None:
    """Takes a turn to score, at once or after waiting in line; Busy when none comes."""
    if self.scoring < self.max_concurrent:  # A free turn: no one waits (release hands on).
      self.scoring += 1
      return
    if len(self._waiting) >= self.max_queue:
      raise Busy(f"The queue is full: {len(self._waiting)} request(s) waiting and "
                 f"{self.scoring} scoring. Try again in {RETRY_AFTER_S} s.")
    entry = (ticket, asyncio.get_running_loop().create_future())
    self._waiting.append(entry)
    try:
      await asyncio.wait_for(entry[1], self.max_wait_s)
    except TimeoutError:
      self._leave(entry)
      raise Busy(f"No turn to score came within {self.max_wait_s:g} s, the longest a "
                 f"request waits: the server is busy. Try again in {RETRY_AFTER_S} s.") from None
    except asyncio.CancelledError:  # The client went away.
      self._leave(entry)
      raise

  def _leave(self, entry: tuple[str, asyncio.Future]) -> None:
    """Takes a request out of line; a turn handed to it just as it left passes on."""
    if entry[1].done() and not entry[1].cancelled():
      self.release()
    elif entry in self._waiting:
      self._waiting.remove(entry)

  def release(self) -> None:
    """Ends a turn: the request that has waited longest takes it over."""
    while self._waiting:
      _, future = self._waiting.popleft()
      if not future.done():
        future.set_result(None)
        return
    self.scoring -= 1


def is_loopback(host: str) -> bool:
  """True for addresses only this machine can reach: 127.0.0.0/8, ::1, localhost."""
  if host.lower() == "localhost":
    return True
  try:
    return ipaddress.ip_address(host.strip("[]")).is_loopback
  except ValueError:
    return False  # A host name: it may resolve to anything.


def check_token(token: str | None) -> None:
  """ValueError for a token short enough to guess."""
  if token and len(token) < MIN_TOKEN_LENGTH:
    raise ValueError(f"the access token has {len(token)} characters, fewer than "
                     f"{MIN_TOKEN_LENGTH}: make one with `python -c 'import secrets; "
                     f"print(secrets.token_urlsafe(32))'`")


def check_exposure(host: str, token: str | None) -> None:
  """ValueError (one line) for a server reachable beyond loopback without a sound token."""
  check_token(token)
  if not token and not is_loopback(host):
    raise ValueError(f"--host={host} is reachable from other machines and no access token is "
                     f"set: set {TOKEN_ENV} (or --token), or serve on 127.0.0.1")


def _authorised(header: str, token: str) -> bool:
  scheme, _, given = header.partition(" ")
  # compare_digest: the time taken says nothing about how much of the token matched.
  return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                            token.encode())


def header_pixels(data: bytes, name: str) -> int:
  """Width x height as the file's header states it, without decoding the pixels.

  0 when the header cannot be read: decoding then fails with the reason, per file.
  """
  try:
    if dicom.is_dicom(data, name):
      has_magic = data[128:132] == b"DICM"  # As `dicom.read_dicom` parses it.
      ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=not has_magic)
      return int(ds.Rows) * int(ds.Columns)
    with Image.open(io.BytesIO(data)) as img:  # Lazy: reads the header only.
      return img.width * img.height
  except Exception:  # pylint: disable=broad-except  # Any unreadable header.
    return 0


def check_pixels(uploads: list[tuple[str, bytes]], max_megapixels: float) -> None:
  """PixelLimitError naming the file that takes the request over `max_megapixels`."""
  limit, total = max_megapixels * 1e6, 0
  for name, data in uploads:
    pixels = header_pixels(data, name)
    total += pixels
    if pixels > limit:
      raise PixelLimitError(f"{name} has {pixels / 1e6:.1f} megapixels, over the limit of "
                            f"{max_megapixels:g} megapixels per request.")
    if total > limit:
      raise PixelLimitError(f"{name} takes this request to {total / 1e6:.1f} megapixels, over "
                            f"the limit of {max_megapixels:g} megapixels per request: send "
                            f"fewer files at a time.")


def overlay_png(display: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> bytes:
  """The gray image with a jet Grad-CAM heatmap blended over it, as PNG bytes."""
  h, w = display.shape[:2]
  heat = np.asarray(Image.fromarray(heatmap.astype(np.float32)).resize((w, h), Image.BILINEAR))
  colours = matplotlib.colormaps["jet"](np.clip(heat, 0, 1))[..., :3]
  gray = np.repeat(display[..., None] / 255.0, 3, axis=-1)
  blended = np.clip((1 - alpha) * gray + alpha * colours, 0, 1)
  buffer = io.BytesIO()
  Image.fromarray((blended * 255).round().astype(np.uint8)).save(buffer, format="PNG")
  return buffer.getvalue()


def _folder_json(folder: dict | None) -> dict | None:
  """What the page shows of the folder verdict: the words, the p-value, the accuracy
  interval (None when not estimable without labels)."""
  if folder is None:
    return None
  answer = folder.get("accuracy_interval") or {}
  return {"summary": folder["summary"], "shifted": folder["shifted"],
          "p_value": folder["p_value"], "accuracy_estimable": bool(answer.get("estimable")),
          "accuracy_interval": answer.get("interval")}


class Scorer:
  """The workdir's predictor and what was fitted for it, loaded once."""

  def __init__(self, workdir: str, adapt: str = adaptation.AUTO):
    self.predictor = registry.load_predictor(workdir)
    self.fitted = fit.load_or_fit(self.predictor)
    self.workdir = workdir
    self.adapt = adapt  # --adapt: label-free adaptation to each request's images.

  def info(self) -> dict:
    cal = self.fitted.calibration
    name, threshold = fit.operating_point(cal, self.predictor.config)
    return {"workdir": self.workdir, "model": self.predictor.model_name,
            "name": self.predictor.config.name, "operating_point": name,
            "threshold": threshold, "ood_kind": self.fitted.detector.kind,
            "ood_threshold": self.fitted.detector.threshold,
            "gradcam": self.predictor.supports_gradcam, "adapt": self.adapt}

  def score(self, uploads: list[tuple[str, bytes]], gradcam: bool = True) -> dict:
    """{"results": one per (file name, bytes): probability, label, OOD flag, overlay, or
    error; "folder_test": the folder-level shift test and accuracy estimate (2+ images) or None}."""
    prep = self.predictor.preprocess
    rows, images, displays, positions = [], [], [], []
    for name, data in uploads:
      try:
        img = decode.open_bytes(data, name)
        images.append(prep.apply(img))
        displays.append(decode.display_image(img))
        positions.append(len(rows))
        rows.append({"file": name})
      except (decode.ImageDecodeError, ValueError) as e:
        rows.append({"file": name, "error": str(e)})
    if not images:
      return {"results": rows, "folder_test": None, "adaptation": None}
    batch = np.stack(images)
    scored = predict.score_images(self.predictor, self.fitted, batch, adapt=self.adapt)
    adapted = scored.get("adapted")
    cams = (self.predictor.gradcam(batch) if gradcam and self.predictor.supports_gradcam
            else None)
    for k, i in enumerate(positions):
      accepted = bool(scored["accepted"][k])
      label = int(scored["labels"][k])
      rows[i].update(
          probability=float(scored["probs"][k]), threshold=scored["threshold"],
          operating_point=scored["point"], ood_score=float(scored["ood_scores"][k]),
          ood_signal=scored["ood_signals"][k],
          in_distribution=accepted,
          label=CLASS_NAMES[label] if accepted else predict.OUT_OF_DISTRIBUTION)
      if adapted and adapted["method"] != "none":  # Beside the model's own answer.
        rows[i].update(adapted_probability=float(adapted["probs"][k]), adapted_label=(
            CLASS_NAMES[int(adapted["labels"][k])] if accepted else predict.OUT_OF_DISTRIBUTION))
      if cams is not None:
        rows[i]["gradcam_png"] = base64.b64encode(overlay_png(displays[k], cams[k])).decode()
    return {"results": rows, "folder_test": _folder_json(scored["folder_test"]),
            "adaptation": adapted and {"method": adapted["method"], "reason": adapted["reason"]}}


def _refusal(status: int, detail: str, headers: dict | None = None) -> JSONResponse:
  return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _page_html(max_upload_mb: float, max_megapixels: float) -> str:
  """index.html with the upload limits written in: the page shows them before any token."""
  with open(os.path.join(STATIC_DIR, "index.html"), encoding="utf-8") as f:
    return f.read().replace("__LIMITS__", html.escape(
        f"Up to {MAX_FILES} files per request, {max_upload_mb:g} MB each and "
        f"{max_megapixels:g} megapixels in all."))


def _is_public(path: str) -> bool:
  """The page and its static files: they hold no data, and load before any token is known."""
  return path == "/" or path.startswith("/static/")


async def _read_uploads(files: list[UploadFile], limit: int, max_upload_mb: float,
                        max_megapixels: float) -> list[tuple[str, bytes]]:
  """(name, bytes) per file; HTTPException 413 for too many files, bytes or pixels."""
  if len(files) > MAX_FILES:
    raise HTTPException(413, f"At most {MAX_FILES} files per request; got {len(files)}.")
  uploads = []
  for f in files:
    data = await f.read(limit + 1)
    if len(data) > limit:
      raise HTTPException(413, f"{f.filename} is over the {max_upload_mb:g} MB limit.")
    uploads.append((f.filename or "upload", data))
  try:
    check_pixels(uploads, max_megapixels)
  except PixelLimitError as e:
    raise HTTPException(413, str(e)) from None
  return uploads


def create_app(workdir: str, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, scorer=None,
               token: str | None = None, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
               max_concurrent: int = DEFAULT_MAX_CONCURRENT,
               max_queue: int = DEFAULT_MAX_QUEUE, max_wait_s: float = DEFAULT_MAX_WAIT_S,
               adapt: str = adaptation.AUTO):
  """The FastAPI application (scorer: a ready Scorer, e.g. shared by tests).

  token: when set, every route but the page and its static files needs
  `Authorization: Bearer <token>`.
  """
  check_token(token)
  queue = ScoringQueue(max_concurrent, max_queue, max_wait_s)
  scorer = scorer or Scorer(workdir, adapt)
  limit = int(max_upload_mb * 1024 * 1024)
  page_html = _page_html(max_upload_mb, max_megapixels)
  app = FastAPI(title="cxr_jax", docs_url="/api/docs")
  app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

  @app.middleware("http")
  async def guard(request: Request, call_next):
    # Before the body is parsed: a refused upload costs nothing to read.
    if (token and not _is_public(request.url.path)
        and not _authorised(request.headers.get("authorization", ""), token)):
      return _refusal(401, "Missing or wrong access token: send the header "
                      "'Authorization: Bearer <token>'.", {"WWW-Authenticate": "Bearer"})
    length = int(request.headers.get("content-length") or 0)
    if length > limit * MAX_FILES:
      return _refusal(413, f"Upload of {length / 1e6:.1f} MB is over the limit.")
    response = await call_next(request)
    if _is_public(request.url.path):  # Asked again each time: a new version shows at once.
      response.headers["Cache-Control"] = "no-cache"
    return response

  @app.get("/", response_class=HTMLResponse)
  def page():
    return HTMLResponse(page_html, headers={"Content-Security-Policy": PAGE_POLICY})

  @app.get("/api/model")
  def model():
    return scorer.info()

  @app.get("/api/queue")
  async def queue_state(ticket: Ticket = ""):  # On the event loop, where the queue changes.
    return queue.state(ticket)

  @app.post("/api/predict")
  async def predict_endpoint(files: list[UploadFile] = File(...), gradcam: bool = True,
                             ticket: Ticket = ""):
    uploads = await _read_uploads(files, limit, max_upload_mb, max_megapixels)
    try:
      await queue.acquire(ticket)
    except Busy as e:
      raise HTTPException(503, str(e), headers={"Retry-After": str(RETRY_AFTER_S)}) from None
    try:
      # In a worker thread: the page and the other routes keep answering while a batch scores.
      return await run_in_threadpool(scorer.score, uploads, gradcam)
    finally:
      queue.release()

  return app
