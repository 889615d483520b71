"""The web page and its JSON endpoint, over HTTP (FastAPI's test client).

Also what keeps the server safe off localhost: the access token on every API route, the
refusal to listen beyond loopback without one, the per-request pixel cap read from
headers, and the queue of requests waiting to score (503 only once it is full or a wait
runs too long).
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from cxr_jax import serve
from tests.conftest import REPO
from tests.data.test_dicom import _dicom
from tests.report.test_report import train_debug_workdirs

TOKEN = "correct-horse-battery-staple"
_SCORERS = {}


def debug_scorer(tmp_path_factory, chest_xray_dir) -> serve.Scorer:
  """The debug cnn_baseline workdir's Scorer, trained and loaded once per session."""
  root = tmp_path_factory.getbasetemp() / "debug_workdirs"
  if root not in _SCORERS:
    workdirs = train_debug_workdirs(root, chest_xray_dir)
    _SCORERS[root] = serve.Scorer(str(workdirs / "cnn_baseline"))
  return _SCORERS[root]


def _client(app):
  from fastapi.testclient import TestClient  # pylint: disable=C0415
  return TestClient(app)


@pytest.fixture(scope="module")
def scorer(tmp_path_factory, chest_xray_dir):
  return debug_scorer(tmp_path_factory, chest_xray_dir)


@pytest.fixture(scope="module")
def client(scorer):
  return _client(serve.create_app(scorer.workdir, max_upload_mb=0.5, scorer=scorer))


def _png(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


def _blank_png(width: int, height: int) -> bytes:
  return _png(np.zeros((height, width), np.uint8))  # Compresses to a few kB at any size.


def test_page_and_model_info(client):
  page = client.get("/")
  assert page.status_code == 200 and 'type="file"' in page.text and "not a diagnosis" in page.text
  assert "Up to 32 files per request, 0.5 MB each and 800 megapixels in all." in page.text
  info = client.get("/api/model").json()
  assert info["model"] == "cnn_baseline" and info["operating_point"] == "0.5"


def test_page_puts_no_data_in_as_html(client):
  page = client.get("/")
  # No inline script, and the page's policy lets none run: only static/page.js does.
  assert "<script>" not in page.text and '<script src="static/page.js">' in page.text
  assert page.headers["content-security-policy"].startswith("default-src 'self';")
  script = client.get("/static/page.js")
  assert script.status_code == 200 and "javascript" in script.headers["content-type"]
  for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
    assert sink not in script.text
  assert "textContent" in script.text


def test_the_page_files_ship_inside_the_package():
  assert os.path.dirname(serve.STATIC_DIR) == os.path.dirname(serve.__file__)
  names = sorted(os.listdir(serve.STATIC_DIR))
  assert names == ["index.html", "page.css", "page.js"]
  try:  # Exit status 1: git ignores none of them, so a clone has them.
    ignored = subprocess.run(["git", "check-ignore", *(os.path.join(serve.STATIC_DIR, n)
                                                        for n in names)],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
  except OSError:
    pytest.skip("no git")
  if ignored.returncode == 128:
    pytest.skip("not a git checkout")
  assert ignored.returncode == 1, ignored.stdout


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
    Image.open(io.BytesIO(base64.b64decode(r["gradcam_png"]))).verify()
  assert "error" in rows["broken.jpeg"] and "probability" not in rows["broken.jpeg"]
  folder = response.json()["folder_test"]  # Two scored images: the folder-level answer too.
  assert folder["summary"].startswith("Folder of 2 images") and 0 <= folder["p_value"] <= 1
  assert "not whether the model is right" in folder["summary"]
  if folder["accuracy_estimable"]:
    assert 0 <= folder["accuracy_interval"][0] <= folder["accuracy_interval"][1] <= 1
  else:
    assert folder["accuracy_interval"] is None and "cxr_jax.tools.audit" in folder["summary"]
  one = client.post("/api/predict", files=[("files", ("xray.jpeg", xray, "image/jpeg"))])
  assert one.json()["folder_test"] is None
  # The default --adapt=auto: two images are too few to adapt to, and the page says why.
  adaptation = response.json()["adaptation"]
  assert adaptation["method"] == "none" and adaptation["reason"].startswith("auto")
  assert "adapted_label" not in rows["xray.jpeg"]


def test_adapted_answers_are_shown_beside_the_models_own(scorer, chest_xray_dir):
  adapting = serve.Scorer.__new__(serve.Scorer)
  adapting.__dict__.update(scorer.__dict__, adapt="adabn+prior")
  files = sorted((chest_xray_dir / "test" / "NORMAL").iterdir())[:3]
  out = adapting.score([(f.name, f.read_bytes()) for f in files], gradcam=False)
  own = scorer.score([(f.name, f.read_bytes()) for f in files], gradcam=False)
  assert out["adaptation"] == {"method": "adabn+prior", "reason": "--adapt=adabn+prior"}
  for adapted_row, own_row in zip(out["results"], own["results"]):
    assert adapted_row["probability"] == own_row["probability"]  # The model's own answer.
    assert adapted_row["label"] == own_row["label"]
    assert 0 <= adapted_row["adapted_probability"] <= 1 and adapted_row["adapted_label"]


def test_uploads_over_the_limit_are_refused(client):
  big = b"\x00" * (600 * 1024)
  response = client.post("/api/predict", files=[("files", ("big.png", big, "image/png"))])
  assert response.status_code == 413 and "over the 0.5 MB limit" in response.json()["detail"]


@pytest.fixture(scope="module")
def guarded(scorer):
  return _client(serve.create_app(scorer.workdir, scorer=scorer, token=TOKEN))


API_ROUTES = [("get", "/api/model"), ("post", "/api/predict"), ("get", "/openapi.json"),
              ("get", "/api/docs")]


@pytest.mark.parametrize("method,path", API_ROUTES)
@pytest.mark.parametrize("header", [None, "Bearer wrong-token-of-enough-length",
                                    f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer"])
def test_token_is_required_on_every_api_route(guarded, method, path, header):
  headers = {"Authorization": header} if header else {}
  response = getattr(guarded, method)(path, headers=headers)
  assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
  assert "access token" in response.json()["detail"]


@pytest.mark.parametrize("method,path", API_ROUTES)
def test_the_right_token_is_accepted_on_every_api_route(guarded, method, path):
  kwargs = {"files": [("files", ("x.png", _blank_png(64, 64), "image/png"))]} \
      if method == "post" else {}
  response = getattr(guarded, method)(path, headers={"Authorization": f"Bearer {TOKEN}"},
                                      **kwargs)
  assert response.status_code == 200, response.text


def test_the_page_itself_needs_no_token(guarded):
  # It holds no data; its script sends the token the user gives it with every API call.
  for path in ("/", "/static/page.js", "/static/page.css"):
    response = guarded.get(path)
    assert response.status_code == 200 and response.headers["cache-control"] == "no-cache"
  assert guarded.get("/api/queue").status_code == 401


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"])
def test_loopback_needs_no_token(host):
  serve.check_exposure(host, None)
  serve.check_exposure(host, TOKEN)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.168.1.20", "example.org"])
def test_other_hosts_refuse_to_start_without_a_token(host):
  with pytest.raises(ValueError, match=f"--host={host} is reachable from other machines "
                     "and no access token is set: set CXR_JAX_TOKEN"):
    serve.check_exposure(host, None)
  serve.check_exposure(host, TOKEN)


def test_short_tokens_are_refused():
  with pytest.raises(ValueError, match="the access token has 6 characters, fewer than 16"):
    serve.check_exposure("0.0.0.0", "secret")
  with pytest.raises(ValueError, match="fewer than 16"):
    serve.create_app("unused", scorer=object(), token="secret")


def test_serve_command_refuses_a_public_host_without_a_token(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != serve.TOKEN_ENV}
  proc = subprocess.run([sys.executable, "-m", "cxr_jax.tools.serve",
                         f"--workdir={tmp_path}", "--host=0.0.0.0"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  assert proc.stderr.startswith("error: ValueError: --host=0.0.0.0 is reachable from other "
                                "machines and no access token is set"), proc.stderr


def test_pixel_cap_reads_headers_of_images_and_dicom():
  assert serve.header_pixels(_blank_png(300, 200), "a.png") == 60_000
  assert serve.header_pixels(_dicom(np.zeros((30, 40), np.uint16)), "a.dcm") == 1200
  assert serve.header_pixels(b"not an image", "a.png") == 0


@pytest.fixture(scope="module")
def capped(scorer):
  return _client(serve.create_app(scorer.workdir, scorer=scorer, max_megapixels=1))


def test_a_file_over_the_pixel_cap_is_refused_before_decoding(capped):
  # Only the header survives: decoding would fail, so a 413 shows the header was enough.
  truncated = _blank_png(1200, 1000)[:100]
  response = capped.post("/api/predict", files=[("files", ("huge.png", truncated, "image/png"))])
  assert response.status_code == 413
  assert response.json()["detail"] == ("huge.png has 1.2 megapixels, over the limit of "
                                       "1 megapixels per request.")


def test_the_pixel_cap_counts_the_whole_request(capped):
  files = [("files", (f"{i}.png", _blank_png(800, 500), "image/png")) for i in range(3)]
  response = capped.post("/api/predict", files=files)
  assert response.status_code == 413
  assert response.json()["detail"].startswith("2.png takes this request to 1.2 megapixels, "
                                              "over the limit of 1 megapixels per request")
  assert capped.post("/api/predict", files=files[:2]).status_code == 200


def test_dicom_over_the_pixel_cap_is_refused(capped):
  dcm = _dicom(np.zeros((1100, 1000), np.uint16))
  response = capped.post("/api/predict", files=[("files", ("big.dcm", dcm, "application/dicom"))])
  assert response.status_code == 413 and response.json()["detail"].startswith("big.dcm has 1.1")


FILES = [("files", ("x.png", _blank_png(8, 8), "image/png"))]


class BlockedScorer:
  """Holds every request in `score` until released."""

  def __init__(self):
    self.started, self.release = threading.Event(), threading.Event()

  def info(self) -> dict:
    return {"model": "blocked"}

  def score(self, uploads, gradcam=True):
    del gradcam
    self.started.set()
    assert self.release.wait(60)
    return {"results": [{"file": name} for name, _ in uploads], "folder_test": None}


class _SlowScorer(BlockedScorer):
  """Takes `seconds` per request, and counts how many it scored at once at most."""

  def __init__(self, seconds: float):
    super().__init__()
    self.release.set()
    self.seconds, self.now, self.most = seconds, 0, 0
    self.lock = threading.Lock()

  def score(self, uploads, gradcam=True):
    with self.lock:
      self.now += 1
      self.most = max(self.most, self.now)
    time.sleep(self.seconds)
    with self.lock:
      self.now -= 1
    return super().score(uploads, gradcam)


def _post_in_background(client, out: dict, name: str, **params) -> threading.Thread:
  """POSTs FILES from a thread; its response lands in out[name]."""
  def post():
    out[name] = client.post("/api/predict", files=FILES, params=params)
  thread = threading.Thread(target=post)
  thread.start()
  return thread


def _post_together(client, n: int) -> list:
  """n POSTs of FILES, let go at the same moment from n threads; their responses."""
  barrier, out = threading.Barrier(n), {}
  def post(i):
    barrier.wait()
    out[i] = client.post("/api/predict", files=FILES)
  threads = [threading.Thread(target=post, args=(i,)) for i in range(n)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join(60)
  return [out.get(i) for i in range(n)]


def _until(condition, seconds: float = 60) -> None:
  deadline = time.time() + seconds
  while not condition():
    assert time.time() < deadline, "timed out"
    time.sleep(0.02)


def _queue_app(scorer, **limits):
  # One event loop for every request (as under uvicorn): the queue's waiting lives on it.
  return _client(serve.create_app("unused", scorer=scorer, **limits))


def test_simultaneous_requests_wait_their_turn_instead_of_503():
  slow = _SlowScorer(0.3)
  with _queue_app(slow) as client:
    responses = _post_together(client, 8)
    assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses]
    assert slow.most == serve.DEFAULT_MAX_CONCURRENT  # They overlapped, up to the limit.
    assert client.get("/api/queue").json() == {
        "scoring": 0, "waiting": 0, "ahead": None, "max_concurrent": 2, "max_queue": 16,
        "max_wait_s": 60.0}


def test_a_full_queue_answers_503_with_retry_after():
  blocked, out = BlockedScorer(), {}
  with _queue_app(blocked, max_concurrent=1, max_queue=1) as client:
    threads = [_post_in_background(client, out, "first")]
    try:
      assert blocked.started.wait(60)
      threads.append(_post_in_background(client, out, "second", ticket="second"))
      _until(lambda: client.get("/api/queue?ticket=second").json()["ahead"] == 0)
      assert client.get("/api/queue").json()["scoring"] == 1
      busy = client.post("/api/predict", files=FILES)
      assert busy.status_code == 503 and busy.headers["retry-after"] == "5"
      assert busy.json()["detail"] == ("The queue is full: 1 request(s) waiting and 1 "
                                       "scoring. Try again in 5 s.")
      # Scoring runs in a worker thread and waiting holds no thread: other routes answer.
      assert client.get("/api/model").json() == {"model": "blocked"}
    finally:
      blocked.release.set()
      for thread in threads:
        thread.join(60)
    assert out["first"].status_code == out["second"].status_code == 200
    assert out["second"].json() == {"results": [{"file": "x.png"}], "folder_test": None}


def test_a_wait_past_max_wait_s_answers_503():
  blocked, out = BlockedScorer(), {}
  with _queue_app(blocked, max_concurrent=1, max_wait_s=0.3) as client:
    thread = _post_in_background(client, out, "first")
    try:
      assert blocked.started.wait(60)
      late = client.post("/api/predict", files=FILES)
      assert late.status_code == 503 and late.headers["retry-after"] == "5"
      assert late.json()["detail"] == ("No turn to score came within 0.3 s, the longest a "
                                       "request waits: the server is busy. Try again in 5 s.")
      assert client.get("/api/queue").json()["waiting"] == 0  # It left the line.
    finally:
      blocked.release.set()
      thread.join(60)
    assert out["first"].status_code == 200
    assert client.post("/api/predict", files=FILES).status_code == 200  # No turn was lost.
    assert client.get("/api/queue").json()["scoring"] == 0


def test_the_queue_serves_in_order_of_arrival_and_drops_who_left():
  async def run():
    queue = serve.ScoringQueue(max_concurrent=1, max_queue=3, max_wait_s=60)
    await queue.acquire()
    served = []
    async def wait(name):
      await queue.acquire(name)
      served.append(name)
    tasks = {name: asyncio.create_task(wait(name)) for name in "abc"}
    await asyncio.sleep(0.05)
    assert [queue.state(name)["ahead"] for name in "abc"] == [0, 1, 2]
    tasks["b"].cancel()  # Its client went away.
    await asyncio.sleep(0.05)
    assert queue.state("c")["ahead"] == 1 and queue.state("b")["ahead"] is None
    for expected in (["a"], ["a", "c"]):
      queue.release()
      await asyncio.sleep(0.05)
      assert served == expected and queue.state()["scoring"] == 1
    queue.release()
    assert queue.state()["scoring"] == queue.state()["waiting"] == 0
  asyncio.run(run())


@pytest.mark.parametrize("limits,message", [
    ({"max_concurrent": 0}, "max_concurrent must be at least 1, got 0"),
    ({"max_queue": -1}, "max_queue must be at least 0, got -1"),
    ({"max_wait_s": 0}, "max_wait_s must be above 0, got 0")])
def test_queue_limits_out_of_range_are_refused(limits, message):
  with pytest.raises(ValueError, match=message):
    serve.create_app("unused", scorer=BlockedScorer(), **limits)


def test_server_binds_to_localhost_by_default():
  proc = subprocess.run([sys.executable, "-m", "cxr_jax.tools.serve", "--helpfull"], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
  assert "--host: Address to listen on (localhost by default).\n    (default: '127.0.0.1')" \
      in proc.stdout
  # The queue's flags, with the library's defaults.
  assert "--max_queue: Requests that may wait for a turn to score" in proc.stdout
  assert "(default: '16')" in proc.stdout.split("--max_queue:")[1].split("--")[0]
  assert "(default: '60.0')" in proc.stdout.split("--max_wait_s:")[1].split("--")[0]
