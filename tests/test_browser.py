"""The page in a real headless browser (Debian's chromium and chromedriver, via Selenium).

Every string from the server or from a file name must reach the page as text: files named
as HTML are uploaded through the page's own form, and no element they describe may appear.
The server runs in this process on loopback, with an access token the page gets from the
address's fragment or from its token field. A request that waits for its turn says so.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

from cxr_jax import serve
from tests.test_serve import FILES, TOKEN, BlockedScorer, debug_scorer

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(
    not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
    reason=f"{CHROMIUM} or {CHROMEDRIVER} missing: `apt-get install chromium chromium-driver` "
           f"(make test does it as root)")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1200,1400")
XRAY_NAME = "<img src=x id=injected onerror=alert(1)>.jpeg"
BROKEN_NAME = "<svg id=injected onload=alert(2)>.png"
HUGE_NAME = "<img src=x id=injected onerror=alert(3)> huge.png"


@contextlib.contextmanager
def _serving(app):
  """The app's address, served by uvicorn in a thread on a free loopback port."""
  import uvicorn  # pylint: disable=C0415
  sock = socket.socket()
  sock.bind(("127.0.0.1", 0))
  server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
  thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
  thread.start()
  deadline = time.time() + 60
  while not server.started:
    assert time.time() < deadline and thread.is_alive(), "the server did not start"
    time.sleep(0.05)
  try:
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
  finally:
    server.should_exit = True
    thread.join(30)
    sock.close()


@pytest.fixture(scope="module")
def url(tmp_path_factory, chest_xray_dir):
  """The page's address (pixel cap 2 MP, so HUGE_NAME hits it)."""
  scorer = debug_scorer(tmp_path_factory, chest_xray_dir)
  with _serving(serve.create_app(scorer.workdir, scorer=scorer, token=TOKEN,
                                 max_megapixels=2)) as address:
    yield address


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
  from selenium import webdriver  # pylint: disable=C0415
  options = webdriver.ChromeOptions()
  for flag in FLAGS + (f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}",):
    options.add_argument(flag)
  options.binary_location = CHROMIUM
  chrome = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
  yield chrome
  chrome.quit()


@pytest.fixture(scope="module")
def uploads(tmp_path_factory, chest_xray_dir):
  """A real X-ray, an unreadable file and a 3 MP image, each named as HTML."""
  folder = tmp_path_factory.mktemp("html_names")
  shutil.copy(next((chest_xray_dir / "test" / "PNEUMONIA").iterdir()), folder / XRAY_NAME)
  (folder / BROKEN_NAME).write_bytes(b"\x89PNG not really")
  buffer = io.BytesIO()
  Image.fromarray(np.zeros((1500, 2000), np.uint8)).save(buffer, format="PNG")
  (folder / HUGE_NAME).write_bytes(buffer.getvalue())
  return folder


def _wait(driver, condition, seconds=300):
  from selenium.webdriver.support.ui import WebDriverWait  # pylint: disable=C0415
  return WebDriverWait(driver, seconds).until(condition)


def _upload(driver, *paths) -> None:
  from selenium.webdriver.common.by import By  # pylint: disable=C0415
  driver.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in paths))
  driver.find_element(By.ID, "submit").click()
  _wait(driver, lambda d: d.find_element(By.ID, "status").text not in ("", "Scoring...")
        and not d.find_element(By.ID, "status").text.startswith("Queued:"))


def _assert_nothing_injected(driver) -> None:
  from selenium.common.exceptions import NoAlertPresentException  # pylint: disable=C0415
  from selenium.webdriver.common.by import By  # pylint: disable=C0415
  assert driver.find_elements(By.ID, "injected") == []
  assert driver.find_elements(By.CSS_SELECTOR, "#status img, #status svg, .card svg") == []
  with pytest.raises(NoAlertPresentException):
    driver.switch_to.alert.text  # pylint: disable=expression-not-assigned


def test_page_asks_for_the_token_and_then_loads_the_model(driver, url):
  from selenium.webdriver.common.by import By  # pylint: disable=C0415
  driver.get(url)
  auth = driver.find_element(By.ID, "auth")
  _wait(driver, lambda d: auth.is_displayed(), 60)
  assert "Error 401" in driver.find_element(By.ID, "status").text
  driver.find_element(By.ID, "token").send_keys(TOKEN)
  driver.find_element(By.ID, "use-token").click()
  _wait(driver, lambda d: d.find_element(By.ID, "model").text.startswith("cnn_baseline"), 60)
  assert not auth.is_displayed()


def test_file_names_and_errors_from_the_server_show_as_text(driver, url, uploads):
  from selenium.webdriver.common.by import By  # pylint: disable=C0415
  driver.get(url)
  driver.execute_script("sessionStorage.clear()")  # Forget the token typed in before.
  driver.get("about:blank")
  driver.get(url + "#token=" + TOKEN)
  _wait(driver, lambda d: d.find_element(By.ID, "model").text.startswith("cnn_baseline"), 60)
  assert "#" not in driver.current_url  # The token leaves the address bar.
  _upload(driver, uploads / XRAY_NAME, uploads / BROKEN_NAME)
  cards = driver.find_elements(By.CSS_SELECTOR, "#results .card")
  assert [c.find_element(By.TAG_NAME, "b").text for c in cards] == [XRAY_NAME, BROKEN_NAME]
  assert cards[0].find_element(By.TAG_NAME, "p").text in ("NORMAL", "PNEUMONIA",
                                                          "OUT_OF_DISTRIBUTION")
  assert cards[0].find_element(By.TAG_NAME, "img").get_attribute("alt") == \
      f"Grad-CAM of {XRAY_NAME}"
  assert cards[1].find_element(By.CSS_SELECTOR, "p.error").text.startswith("Unreadable: ")
  _assert_nothing_injected(driver)
  driver.get(url)
  _upload(driver, uploads / HUGE_NAME)
  assert driver.find_element(By.ID, "status").text == (
      f"Error 413: {HUGE_NAME} has 3.0 megapixels, over the limit of 2 megapixels per request.")
  _assert_nothing_injected(driver)


class _QueuedScorer(BlockedScorer):
  """Holds every request until released, then answers as the real Scorer would."""

  def info(self) -> dict:
    return {"model": "blocked", "operating_point": "0.5", "threshold": 0.5}

  def score(self, uploads, gradcam=True):
    super().score(uploads, gradcam)
    return {"folder_test": None, "results": [
        {"file": name, "label": "NORMAL", "probability": 0.1, "threshold": 0.5,
         "ood_score": 1.0, "in_distribution": True} for name, _ in uploads]}


def test_a_queued_request_says_so_then_gets_its_answer(driver, tmp_path):
  import httpx  # pylint: disable=C0415
  from selenium.webdriver.common.by import By  # pylint: disable=C0415
  blocked, first = _QueuedScorer(), {}
  (tmp_path / "x.png").write_bytes(FILES[0][1][1])
  with _serving(serve.create_app("unused", scorer=blocked, max_concurrent=1)) as address:
    thread = threading.Thread(target=lambda: first.update(r=httpx.post(
        address + "api/predict", files=FILES, timeout=60)))
    thread.start()
    try:
      assert blocked.started.wait(60)
      driver.get(address)
      driver.find_element(By.ID, "files").send_keys(str(tmp_path / "x.png"))
      driver.find_element(By.ID, "submit").click()
      _wait(driver, lambda d: d.find_element(By.ID, "status").text == (
          "Queued: 0 request(s) ahead of this one and 1 scoring; it waits at most 60 s."), 60)
    finally:
      blocked.release.set()
      thread.join(60)
    _wait(driver, lambda d: d.find_element(By.ID, "status").text == "1 file(s) scored.", 60)
    assert first["r"].status_code == 200
    assert driver.find_element(By.CSS_SELECTOR, "#results .card p").text == "NORMAL"
