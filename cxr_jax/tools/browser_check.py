"""Opens the served page in headless Chromium, uploads an X-ray and a photo, saves a screenshot.

  make browser-check WORKDIR=workdirs/mobilenet_v2   # installs chromium + driver first

Uses Debian's chromium and chromedriver through Selenium; the server runs on 127.0.0.1.
Exits 1 unless the X-ray gets a diagnosis and the photo is flagged OUT_OF_DISTRIBUTION.
"""

import os
import socket
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

flags.DEFINE_string("workdir", None, "Trained workdir.", required=True)
flags.DEFINE_string("xray", None, "An X-ray to upload.", required=True)
flags.DEFINE_string("photo", None, "A natural photo to upload.", required=True)
flags.DEFINE_string("screenshot", "docs/serve_screenshot.png", "Where the PNG goes.")
FLAGS = flags.FLAGS


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _wait_for(url: str, process, seconds: float = 300) -> None:
  import urllib.request  # pylint: disable=g-import-not-at-top
  deadline = time.time() + seconds
  while time.time() < deadline:
    if process.poll() is not None:
      process.log.seek(0)
      raise RuntimeError("The server stopped: " + process.log.read()[-2000:])
    try:
      urllib.request.urlopen(url, timeout=2)
      return
    except OSError:
      time.sleep(1)
  raise TimeoutError(f"{url} did not answer in {seconds:.0f}s.")


def main(argv):
  del argv
  from selenium import webdriver  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.support.ui import WebDriverWait  # pylint: disable=g-import-not-at-top
  port = _free_port()
  log = tempfile.TemporaryFile("w+")  # Not a pipe: a full pipe nobody reads stops the server.
  server = subprocess.Popen([sys.executable, "-m", "cxr_jax.tools.serve",
                             f"--workdir={FLAGS.workdir}", f"--port={port}"],
                            stdout=log, stderr=subprocess.STDOUT, text=True)
  server.log = log
  profile = tempfile.TemporaryDirectory(prefix="chromium_profile_")
  try:
    url = f"http://127.0.0.1:{port}/"
    _wait_for(url + "api/model", server)
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1200,1400",
                f"--user-data-dir={profile.name}"):  # A fresh profile: no state from before.
      options.add_argument(arg)
    options.binary_location = "/usr/bin/chromium"
    driver = webdriver.Chrome(service=webdriver.ChromeService("/usr/bin/chromedriver"),
                              options=options)
    try:
      driver.get(url)
      files = "\n".join(os.path.abspath(p) for p in (FLAGS.xray, FLAGS.photo))
      driver.find_element(By.ID, "files").send_keys(files)
      driver.find_element(By.ID, "submit").click()
      WebDriverWait(driver, 300).until(
          lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .card")) == 2)
      labels = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".card p:first-of-type")]
      os.makedirs(os.path.dirname(os.path.abspath(FLAGS.screenshot)), exist_ok=True)
      driver.save_screenshot(FLAGS.screenshot)
    finally:
      driver.quit()
    print(f"Labels: {labels}; screenshot {FLAGS.screenshot}")
    if labels[0] not in ("NORMAL", "PNEUMONIA") or labels[1] != "OUT_OF_DISTRIBUTION":
      print("error: expected a diagnosis for the X-ray and OUT_OF_DISTRIBUTION for the photo",
            file=sys.stderr)
      sys.exit(1)
  finally:
    server.terminate()
    server.wait(timeout=30)
    profile.cleanup()


if __name__ == "__main__":
  app.run(main)
