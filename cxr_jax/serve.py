"""A web page and JSON endpoint that score uploaded images with a trained workdir.

  app = create_app("workdirs/mobilenet_v2")   # FastAPI; run by `python -m cxr_jax.tools.serve`

  GET  /              one page: upload JPEG, PNG or DICOM files, see each one's probability,
                      label at the operating point, out-of-distribution flag and Grad-CAM
  POST /api/predict   multipart "files" -> {"results": [...]} (the same, as JSON)
  GET  /api/model     what model answers, and its thresholds

Files go through the project's one decoding path (`data.decode`) and `predict`'s scoring
(`evaluation.predict.score_images`): the page says exactly what `predict` would write.
Uploads over `max_upload_mb` and unreadable files get a clear error per file.

What keeps one client from harming others (README.md, "Serving"): with a `token`, every
route but the page itself needs `Authorization: Bearer <token>` (`check_exposure` refuses
a host beyond loopback without one); a request's images may hold at most `max_megapixels`
in all, read from their headers before anything is decoded; at most `max_concurrent`
requests score at once, others get 503 with Retry-After. The page shows every string it
receives as text, never as HTML.
"""

from __future__ import annotations

import base64
import hmac
import html
import io
import ipaddress
import threading

import matplotlib
import numpy as np
import pydicom
from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image

from cxr_jax.data import decode
from cxr_jax.data import dicom
from cxr_jax.data.splits import CLASS_NAMES
from cxr_jax.evaluation import fit
from cxr_jax.evaluation import predict
from cxr_jax.evaluation import predictor as predictor_lib

DEFAULT_MAX_UPLOAD_MB = 25
MAX_FILES = 32
# 32 large radiographs (25 MP each) per request: far above any real upload, yet it bounds
# the decoding one request can ask for.
DEFAULT_MAX_MEGAPIXELS = MAX_FILES * 25
# Scoring already uses every core; more requests at once only queue up in memory.
DEFAULT_MAX_CONCURRENT = 2
RETRY_AFTER_S = 5
TOKEN_ENV = "CXR_JAX_TOKEN"
MIN_TOKEN_LENGTH = 16


class PixelLimitError(ValueError):
  """A request whose images hold more pixels than the server decodes for one request."""


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
  """What the page shows of the folder verdict: the words, the p-value, the estimate."""
  if folder is None:
    return None
  est = folder["estimated_accuracy"]
  return {"summary": folder["summary"], "shifted": folder["shifted"],
          "p_value": folder["p_value"], "estimated_accuracy": est["estimate"],
          "ci95": est["ci95"]}


class Scorer:
  """The workdir's predictor and what was fitted for it, loaded once."""

  def __init__(self, workdir: str):
    self.predictor = predictor_lib.load_predictor(workdir)
    self.fitted = fit.load_or_fit(self.predictor)
    self.workdir = workdir

  def info(self) -> dict:
    cal = self.fitted.calibration
    name, threshold = fit.operating_point(cal, self.predictor.config)
    return {"workdir": self.workdir, "model": self.predictor.model_name,
            "name": self.predictor.config.get("name", ""), "operating_point": name,
            "threshold": threshold, "ood_kind": self.fitted.detector.kind,
            "ood_threshold": self.fitted.detector.threshold,
            "gradcam": self.predictor.supports_gradcam}

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
      return {"results": rows, "folder_test": None}
    batch = np.stack(images)
    scored = predict.score_images(self.predictor, self.fitted, batch)
    cams = (self.predictor.gradcam(batch) if gradcam and self.predictor.supports_gradcam
            else None)
    for k, i in enumerate(positions):
      accepted = bool(scored["accepted"][k])
      label = int(scored["labels"][k])
      rows[i].update(
          probability=float(scored["probs"][k]), threshold=scored["threshold"],
          operating_point=scored["point"], ood_score=float(scored["ood_scores"][k]),
          in_distribution=accepted,
          label=CLASS_NAMES[label] if accepted else predict.OUT_OF_DISTRIBUTION)
      if cams is not None:
        rows[i]["gradcam_png"] = base64.b64encode(overlay_png(displays[k], cams[k])).decode()
    return {"results": rows, "folder_test": _folder_json(scored["folder_test"])}


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cxr_jax: chest X-ray scoring</title>
<style>
 body {font-family: system-ui, sans-serif; margin: 2em; max-width: 1100px; color: #222}
 .card {border: 1px solid #ccc; border-radius: 8px; padding: 1em; margin: 0.7em 0;
        display: flex; gap: 1.2em; align-items: flex-start}
 .card img {width: 260px; border-radius: 4px}
 .PNEUMONIA {color: #b00020; font-weight: bold} .NORMAL {color: #006400; font-weight: bold}
 .OUT_OF_DISTRIBUTION {color: #8a5a00; font-weight: bold} .error {color: #b00020}
 small {color: #555}
</style></head><body>
<h1>Pediatric chest X-ray: NORMAL or PNEUMONIA</h1>
<p><small>Model <b id="model"></b>. Research use only, not a diagnosis. Images unlike the
training data (children aged 1-5, one hospital) are flagged and get no label.</small></p>
<p id="auth" hidden>This server needs its access token:
 <input id="token" type="password" autocomplete="off" aria-label="Access token">
 <button id="use-token" type="button">Use</button></p>
<form id="form"><input id="files" type="file" name="files" multiple
 accept=".jpg,.jpeg,.png,.dcm,.dicom,.bmp,.tif,.tiff,application/dicom">
<button id="submit" type="submit">Score</button></form>
<p><small>__LIMITS__</small></p>
<div id="status"></div><div id="results"></div>
<script>
// The access token, if the server has one: from the address's fragment (#token=...,
// which browsers never send, so it stays out of server logs) or typed in; kept per tab.
const KEY = 'cxr_jax_token';
function tokenFromAddress() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (!fragment.has('token')) return false;
  sessionStorage.setItem(KEY, fragment.get('token'));
  history.replaceState(null, '', location.pathname + location.search);
  return true;
}
tokenFromAddress();
window.addEventListener('hashchange', () => { if (tokenFromAddress()) loadModel(); });
function api(path, options = {}) {
  const token = sessionStorage.getItem(KEY);
  return fetch(path, {...options, headers: token ? {Authorization: 'Bearer ' + token} : {}});
}
// Every string from the server or a file name goes in as text, never as HTML.
function add(parent, tag, text, className) {
  const node = parent.appendChild(document.createElement(tag));
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}
async function reply(response) {  // The JSON body, or the raw text as its detail.
  const text = await response.text();
  try { return JSON.parse(text); } catch (e) { return {detail: text || response.statusText}; }
}
function problem(response, body) {
  if (response.status === 401) document.getElementById('auth').hidden = false;
  const detail = typeof body.detail === 'string' ? body.detail : JSON.stringify(body.detail);
  const status = document.getElementById('status');
  status.replaceChildren();
  add(status, 'p', `Error ${response.status}: ${detail}`, 'error');
}
async function loadModel() {
  const response = await api('api/model');
  const m = await reply(response);
  if (!response.ok) return problem(response, m);
  document.getElementById('auth').hidden = true;
  document.getElementById('status').replaceChildren();
  document.getElementById('model').textContent =
    `${m.name || m.model} (operating point ${m.operating_point}, ` +
    `threshold ${m.threshold.toFixed(3)})`;
}
document.getElementById('use-token').addEventListener('click', () => {
  sessionStorage.setItem(KEY, document.getElementById('token').value);
  loadModel();
});
function card(r) {
  const node = document.createElement('div');
  node.className = 'card';
  if (r.gradcam_png) {
    const img = add(node, 'img');
    img.alt = `Grad-CAM of ${r.file}`;
    img.src = `data:image/png;base64,${r.gradcam_png}`;
  }
  const text = add(node, 'div');
  add(text, 'b', r.file);
  if (r.error) {
    add(text, 'p', `Unreadable: ${r.error}`, 'error');
    return node;
  }
  add(text, 'p', r.label, r.label);
  add(text, 'p', `P(pneumonia) = ${r.probability.toFixed(3)} ` +
      `(threshold ${r.threshold.toFixed(3)})`);
  add(text, 'p', `Out-of-distribution score ${r.ood_score.toPrecision(3)}: ` + (r.in_distribution
      ? 'like the training images' : 'UNLIKE the training images: no diagnosis'));
  return node;
}
document.getElementById('form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const data = new FormData();
  for (const f of document.getElementById('files').files) data.append('files', f);
  const status = document.getElementById('status'), out = document.getElementById('results');
  status.textContent = 'Scoring...';
  out.replaceChildren();
  const response = await api('api/predict', {method: 'POST', body: data});
  const body = await reply(response);
  if (!response.ok) return problem(response, body);
  status.textContent = `${body.results.length} file(s) scored.`;
  const folder = body.folder_test;  // Several files: the folder-level verdict, as text.
  if (folder) add(out, 'p', folder.summary, folder.shifted ? 'error' : '');
  for (const r of body.results) out.appendChild(card(r));
});
loadModel();
</script></body></html>
"""


def _refusal(status: int, detail: str, headers: dict | None = None) -> JSONResponse:
  return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def create_app(workdir: str, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, scorer=None,
               token: str | None = None, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
               max_concurrent: int = DEFAULT_MAX_CONCURRENT):
  """The FastAPI application (scorer: a ready Scorer, e.g. shared by tests).

  token: when set, every route but the page needs `Authorization: Bearer <token>`.
  """
  check_token(token)
  if max_concurrent < 1:
    raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
  scorer = scorer or Scorer(workdir)
  limit = int(max_upload_mb * 1024 * 1024)
  slots = threading.BoundedSemaphore(max_concurrent)
  page_html = PAGE.replace("__LIMITS__", html.escape(
      f"Up to {MAX_FILES} files per request, {max_upload_mb:g} MB each and "
      f"{max_megapixels:g} megapixels in all."))
  app = FastAPI(title="cxr_jax", docs_url="/api/docs")

  @app.middleware("http")
  async def guard(request: Request, call_next):
    # Before the body is parsed: a refused upload costs nothing to read.
    if (token and request.url.path != "/"
        and not _authorised(request.headers.get("authorization", ""), token)):
      return _refusal(401, "Missing or wrong access token: send the header "
                      "'Authorization: Bearer <token>'.", {"WWW-Authenticate": "Bearer"})
    length = int(request.headers.get("content-length") or 0)
    if length > limit * MAX_FILES:
      return _refusal(413, f"Upload of {length / 1e6:.1f} MB is over the limit.")
    return await call_next(request)

  @app.get("/", response_class=HTMLResponse)
  def page():
    return page_html

  @app.get("/api/model")
  def model():
    return scorer.info()

  @app.post("/api/predict")
  async def predict_endpoint(files: list[UploadFile] = File(...), gradcam: bool = True):
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
    if not slots.acquire(blocking=False):
      raise HTTPException(503, f"The server is already scoring {max_concurrent} request(s): "
                          f"try again in {RETRY_AFTER_S} s.",
                          headers={"Retry-After": str(RETRY_AFTER_S)})
    try:
      # In a worker thread: the page and /api/model keep answering while a batch scores.
      return await run_in_threadpool(scorer.score, uploads, gradcam)
    finally:
      slots.release()

  return app
