"""The local web page and its JSON endpoint, over HTTP (FastAPI's test client)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cxr_jax import serve
from tests.report.test_report import train_debug_workdirs


@pytest.fixture(scope="module")
def client(tmp_path_factory, chest_xray_dir):
  from fastapi.testclient import TestClient  # pylint: disable=C0415
  workdirs = train_debug_workdirs(tmp_path_factory.getbasetemp() / "debug_workdirs",
                                  chest_xray_dir)
  app = serve.create_app(str(workdirs / "cnn_baseline"), max_upload_mb=0.5)
  return TestClient(app)


def _png(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


def test_page_and_model_info(client):
  page = client.get("/")
  assert page.status_code == 200 and 'type="file"' in page.text and "not a diagnosis" in page.text
  info = client.get("/api/model").json()
  assert info["model"] == "cnn_baseline" and info["operating_point"] == "0.5"


def test_predict_scores_each_file_and_reports_unreadable_ones(client, chest_xray_dir):
  xray = next((chest_xray_dir / "test" / "PNEUMONIA").iterdir()).read_bytes()
  noise = _png(np.random.default_rng(0).integers(0, 256, (80, 80), dtype=np.uint8))
  response = client.post("/api/predict", files=[
      ("files", ("xray.jpeg", xray, "image/jpeg")), ("files", ("noise.png", noise, "image/png")),
      ("files", ("broken.jpeg", b"\xff\xd8 not really", "image/jpeg"))])
  assert response.status_code == 200
  rows = {r["file"]: r for r in response.json()["results"]}
  for name in ("xray.jpeg", "noise.png"):
    r = rows[name]
    assert 0.0 <= r["probability"] <= 1.0 and r["gradcam_png"]
    expected = ("NORMAL", "PNEUMONIA") if r["in_distribution"] else ("OUT_OF_DISTRIBUTION",)
    assert r["label"] in expected
    Image.open(io.BytesIO(__import__("base64").b64decode(r["gradcam_png"]))).verify()
  assert "error" in rows["broken.jpeg"] and "probability" not in rows["broken.jpeg"]


def test_uploads_over_the_limit_are_refused(client):
  big = b"\x00" * (600 * 1024)
  response = client.post("/api/predict", files=[("files", ("big.png", big, "image/png"))])
  assert response.status_code == 413 and "over the 0.5 MB limit" in response.json()["detail"]


def test_server_binds_to_localhost_by_default():
  import subprocess, sys  # pylint: disable=C0415,C0410
  from tests.conftest import REPO  # pylint: disable=C0415
  proc = subprocess.run([sys.executable, "-m", "cxr_jax.tools.serve", "--helpfull"], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
  assert "--host: Address to listen on (localhost by default).\n    (default: '127.0.0.1')" \
      in proc.stdout
