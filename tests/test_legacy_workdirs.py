"""Workdirs trained before a change of the code's layout load and evaluate to the same JSON.

tests/fixtures/workdirs_7395a89/ holds debug workdirs (cnn_v2, pca_logreg) trained at commit
7395a89, compacted, with what `evaluate` wrote for them on test/ then. The same command now
must write the same model numbers: every metric, interval and prediction. What is fitted
after training from the training and validation splits (the OOD detector, now with a
second signal, and the folder test with its accuracy interval) is refitted on purpose when
its version changes, so the keys that rest on it (ood, accepted, risk_coverage,
folder_test, and each prediction's ood_score) are not compared; what later versions add
(the label-free adaptation) may be new.
"""

import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import CHEST_XRAY, REPO, require

FIXTURES = REPO / "tests" / "fixtures" / "workdirs_7395a89"


REFITTED = ("workdir", "ood", "accepted", "risk_coverage", "folder_test")


REFITTED_PER_IMAGE = ("ood_score", "in_distribution", "ood_signal")


def _comparable(result: dict, keys) -> dict:
  out = {k: result.get(k) for k in keys if k not in REFITTED}
  out["predictions"] = [{k: v for k, v in p.items() if k not in REFITTED_PER_IMAGE}
                        for p in out["predictions"]]
  return out


@pytest.mark.parametrize("kind", ["cnn_v2", "pca_logreg"])
def test_an_old_workdir_evaluates_to_the_json_it_did(kind, tmp_path):
  require(CHEST_XRAY)
  workdir = tmp_path / kind
  shutil.copytree(FIXTURES / kind, workdir)
  output = tmp_path / "eval.json"
  out = subprocess.run([sys.executable, "-m", "cxr_jax.tools.evaluate", f"--workdir={workdir}",
                        "--data_dir=data/chest_xray/test", f"--output={output}"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  before = json.loads((FIXTURES / f"{kind}_eval_test.json").read_text())
  assert _comparable(json.loads(output.read_text()), before) == _comparable(before, before)
