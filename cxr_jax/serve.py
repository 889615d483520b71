"""A local web page and JSON endpoint that score uploaded images with a trained workdir.

  app = create_app("workdirs/mobilenet_v2")   # FastAPI; run by `python -m cxr_jax.tools.serve`

  GET  /              one page: upload JPEG, PNG or DICOM files, see each one's probability,
                      label at the operating point, out-of-distribution flag and Grad-CAM
  POST /api/predict   multipart "files" -> {"results": [...]} (the same, as JSON)
  GET  /api/model     what model answers, and its thresholds

Files go through the project's one decoding path (`data.decode`) and `predict`'s scoring
(`evaluation.predict.score_images`): the page says exactly what `predict` would write.
Uploads over `max_upload_mb` and unreadable files get a clear error per file.
"""

from __future__ import annotations

import base64
import io

import matplotlib
import numpy as np
from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse
from PIL import Image

from cxr_jax.data import decode
from cxr_jax.data.splits import CLASS_NAMES
from cxr_jax.evaluation import fit
from cxr_jax.evaluation import predict
from cxr_jax.evaluation import predictor as predictor_lib

DEFAULT_MAX_UPLOAD_MB = 25
MAX_FILES = 32


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

  def score(self, uploads: list[tuple[str, bytes]], gradcam: bool = True) -> list[dict]:
    """One result per (file name, bytes): probability, label, OOD flag, overlay, or error."""
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
      return rows
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
    return rows


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
<form id="form"><input id="files" type="file" name="files" multiple
 accept=".jpg,.jpeg,.png,.dcm,.dicom,.bmp,.tif,.tiff,application/dicom">
<button id="submit" type="submit">Score</button></form>
<div id="status"></div><div id="results"></div>
<script>
fetch('api/model').then(r => r.json()).then(m => {
  document.getElementById('model').textContent =
    `${m.name || m.model} (operating point ${m.operating_point}, threshold ${m.threshold.toFixed(3)})`;
});
document.getElementById('form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const data = new FormData();
  for (const f of document.getElementById('files').files) data.append('files', f);
  document.getElementById('status').textContent = 'Scoring...';
  const response = await fetch('api/predict', {method: 'POST', body: data});
  const body = await response.json();
  const out = document.getElementById('results');
  out.innerHTML = '';
  if (!response.ok) {
    document.getElementById('status').innerHTML = `<p class="error">${body.detail}</p>`;
    return;
  }
  document.getElementById('status').textContent = `${body.results.length} file(s) scored.`;
  for (const r of body.results) {
    const card = document.createElement('div');
    card.className = 'card';
    if (r.error) {
      card.innerHTML = `<div><b>${r.file}</b><p class="error">Unreadable: ${r.error}</p></div>`;
    } else {
      const img = r.gradcam_png ? `<img alt="Grad-CAM of ${r.file}" src="data:image/png;base64,${r.gradcam_png}">` : '';
      card.innerHTML = `${img}<div><b>${r.file}</b>
        <p class="${r.label}">${r.label}</p>
        <p>P(pneumonia) = ${r.probability.toFixed(3)} (threshold ${r.threshold.toFixed(3)})</p>
        <p>Out-of-distribution score ${r.ood_score.toPrecision(3)}:
           ${r.in_distribution ? 'like the training images' : 'UNLIKE the training images: no diagnosis'}</p></div>`;
    }
    out.appendChild(card);
  }
});
</script></body></html>
"""


def create_app(workdir: str, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, scorer=None):
  """The FastAPI application (scorer: a ready Scorer, e.g. shared by tests)."""
  scorer = scorer or Scorer(workdir)
  limit = int(max_upload_mb * 1024 * 1024)
  app = FastAPI(title="cxr_jax", docs_url="/api/docs")

  @app.get("/", response_class=HTMLResponse)
  def page():
    return PAGE

  @app.get("/api/model")
  def model():
    return scorer.info()

  @app.post("/api/predict")
  async def predict_endpoint(request: Request, files: list[UploadFile] = File(...),
                             gradcam: bool = True):
    length = int(request.headers.get("content-length") or 0)
    if length > limit * MAX_FILES:
      raise HTTPException(413, f"Upload of {length / 1e6:.1f} MB is over the limit.")
    if len(files) > MAX_FILES:
      raise HTTPException(413, f"At most {MAX_FILES} files per request; got {len(files)}.")
    uploads = []
    for f in files:
      data = await f.read(limit + 1)
      if len(data) > limit:
        raise HTTPException(413, f"{f.filename} is over the {max_upload_mb:g} MB limit.")
      uploads.append((f.filename or "upload", data))
    return {"results": scorer.score(uploads, gradcam)}

  return app
