"""The site audit: strata, allocation, unbiased estimates, interval coverage, the sheet and
the command line (a round trip on a tiny folder with a debug PCA workdir)."""

from __future__ import annotations

import csv
import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from cxr_jax.fits import audit
from tests.conftest import REPO, write_image


def folder(n_normal_side: int, n_pneumonia_side: int, error_normal_side: float,
           error_pneumonia_side: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Synthetic (probabilities, labels) with known error rates on each side of 0.5."""
  rng = np.random.default_rng(seed)
  probs = np.r_[rng.uniform(0.0, 0.5, n_normal_side), rng.uniform(0.5, 1.0, n_pneumonia_side)]
  predicted = probs >= 0.5
  wrong = rng.random(len(probs)) < np.where(predicted, error_pneumonia_side, error_normal_side)
  return probs, (predicted ^ wrong).astype(int)


def truth(probs, labels) -> dict[str, float]:
  predicted = probs >= 0.5
  return {"accuracy": np.mean(predicted == labels), "sensitivity": np.mean(predicted[labels == 1]),
          "specificity": np.mean(~predicted[labels == 0])}


def run_audit(probs, labels, budget: int, seed: int) -> dict:
  chosen = audit.select(probs, budget, 0.5, seed)
  sizes, predicted = audit.design(chosen.strata, probs, 0.5)
  return audit.estimate(sizes, chosen.strata[chosen.indices], labels[chosen.indices], predicted)


@pytest.mark.parametrize("budget", [4, 30, 60, 150, 400])
def test_strata_never_cross_the_threshold_and_every_stratum_gets_two(budget):
  probs, _ = folder(40, 360, 0.3, 0.05)
  probs[:5] = 0.5 - 1e-12  # Right under the threshold.
  chosen = audit.select(probs, budget, 0.5, seed=1)
  sizes, predicted = audit.design(chosen.strata, probs, 0.5)
  assert len(chosen.indices) == budget == len(set(chosen.indices.tolist()))
  n = np.bincount(chosen.strata[chosen.indices], minlength=len(sizes))
  assert (n >= np.minimum(sizes, audit.MIN_LABELS_PER_STRATUM)).all() and (n <= sizes).all()
  for h in range(len(sizes)):
    inside = probs[chosen.strata == h]
    assert ((inside >= 0.5) == predicted[h]).all()  # One predicted label per stratum.
    if h + 1 < len(sizes):
      assert inside.max() <= probs[chosen.strata == h + 1].min()  # Ids ordered by probability.
  assert len(sizes) <= 2 * audit.MAX_STRATA_PER_SIDE


def test_allocation_is_the_minimum_then_proportional():
  n = audit.allocate([200, 100, 10, 1], 40)
  assert n.sum() == 40 and n[3] == 1 and n[2] >= 2
  assert n[0] > n[1] > n[2]
  np.testing.assert_allclose(n[:2] / n[:2].sum(), [2 / 3, 1 / 3], atol=0.05)
  np.testing.assert_array_equal(audit.allocate([3, 3], 6), [3, 3])


def test_select_is_deterministic_given_the_seed():
  probs, _ = folder(100, 300, 0.1, 0.1)
  first, again = audit.select(probs, 60, 0.5, seed=7), audit.select(probs, 60, 0.5, seed=7)
  np.testing.assert_array_equal(first.indices, again.indices)
  np.testing.assert_array_equal(first.strata, again.strata)
  assert set(audit.select(probs, 60, 0.5, seed=8).indices) != set(first.indices)


def test_select_refuses_a_budget_it_cannot_meet():
  probs, _ = folder(10, 10, 0.1, 0.1)
  with pytest.raises(ValueError, match="budget=21"):
    audit.select(probs, 21, 0.5)
  with pytest.raises(ValueError, match="budget=3"):
    audit.select(probs, 3, 0.5)  # Two sides need two labels each.


def test_accuracy_is_unbiased_where_the_sample_mean_is_not():
  # A small predicted-NORMAL side with many errors gets its minimum of 2 labels, twice its
  # share: the plain mean of the labelled images is biased, the stratified estimate is not.
  probs, labels = folder(10, 390, 0.8, 0.02, seed=3)
  true = truth(probs, labels)["accuracy"]
  estimates, naive = [], []
  for seed in range(400):
    chosen = audit.select(probs, 20, 0.5, seed)
    sizes, predicted = audit.design(chosen.strata, probs, 0.5)
    y = labels[chosen.indices]
    result = audit.estimate(sizes, chosen.strata[chosen.indices], y, predicted)
    estimates.append(result["accuracy"]["estimate"])
    naive.append(np.mean((probs[chosen.indices] >= 0.5) == y))
  se = np.std(estimates) / np.sqrt(len(estimates))
  assert abs(np.mean(estimates) - true) < 3 * se, (np.mean(estimates), true, se)
  assert abs(np.mean(naive) - true) > 10 * np.std(naive) / np.sqrt(len(naive))


def test_sensitivity_and_specificity_are_nearly_unbiased():
  probs, labels = folder(150, 250, 0.2, 0.1, seed=4)
  true = truth(probs, labels)
  results = [run_audit(probs, labels, 60, seed) for seed in range(300)]
  for m in ("sensitivity", "specificity"):
    est = np.array([r[m]["estimate"] for r in results])
    assert abs(est.mean() - true[m]) < 3 * est.std() / np.sqrt(len(est)) + 0.01, m


@pytest.mark.parametrize("errors", [(0.3, 0.02), (0.5, 0.5), (0.02, 0.01)])
def test_intervals_cover_about_95_percent(errors):
  probs, labels = folder(100, 300, *errors, seed=5)
  true = truth(probs, labels)
  hits, widths = {m: [] for m in audit.METRICS}, {m: [] for m in audit.METRICS}
  for seed in range(300):
    result = run_audit(probs, labels, 60, seed)
    for m in audit.METRICS:
      lo, hi = result[m]["ci"]
      hits[m].append(lo <= true[m] <= hi)
      widths[m].append(hi - lo)
  for m in audit.METRICS:
    assert np.mean(hits[m]) >= 0.92, (m, np.mean(hits[m]))
    assert np.median(widths[m]) < 0.5, m  # Not [0, 1].
  assert np.median(widths["accuracy"]) < 0.3


def test_a_stratum_whose_labels_all_agree_still_has_an_interval():
  sizes, predicted = [100, 100], [0, 1]
  result = audit.estimate(sizes, [0] * 10 + [1] * 10, [0] * 10 + [1] * 10, predicted)
  for m in audit.METRICS:
    lo, hi = result[m]["ci"]
    assert result[m]["estimate"] == 1.0 and hi == 1.0 and 0.6 < lo < 0.95, (m, lo)


def test_cannot_tell_without_a_labelled_class():
  result = audit.estimate([50, 50], [0, 0, 1, 1], [0, 0, 0, 0], [0, 1])
  assert result["sensitivity"]["cannot_tell"] and result["sensitivity"]["estimate"] is None
  assert "PNEUMONIA" in result["sensitivity"]["reason"]
  assert not result["specificity"]["cannot_tell"] and not result["accuracy"]["cannot_tell"]
  assert audit.describe("sensitivity", result["sensitivity"]).startswith(
      "sensitivity: cannot tell (no labelled PNEUMONIA")
  side = audit.estimate([50, 50], [1, 1], [1, 0], [0, 1])  # No label predicted NORMAL.
  assert all(side[m]["cannot_tell"] for m in audit.METRICS)
  assert "predicted NORMAL" in side["accuracy"]["reason"]


def test_a_fully_labelled_folder_is_known_exactly():
  probs, labels = folder(30, 50, 0.2, 0.1)
  result = run_audit(probs, labels, len(probs), seed=0)
  for m, value in truth(probs, labels).items():
    assert result[m]["ci"] == pytest.approx([value, value]) and result[m]["estimate"] == (
        pytest.approx(value))


def test_a_stratum_left_unlabelled_joins_its_neighbour():
  sizes, predicted = [20, 20, 20], [1, 1, 1]
  result = audit.estimate(sizes, [1, 1, 2, 2], [1, 0, 1, 1], predicted)
  assert result["collapsed_strata"] == [[0, 1]]
  assert result["accuracy"]["estimate"] == pytest.approx((40 * 0.5 + 20 * 1.0) / 60)


def test_estimate_refuses_bad_input():
  with pytest.raises(ValueError, match="0 \\(NORMAL\\) or 1"):
    audit.estimate([5, 5], [0, 1], [0, 2], [0, 1])
  with pytest.raises(ValueError, match="stratum ids"):
    audit.estimate([5, 5], [0, 2], [0, 1], [0, 1])
  with pytest.raises(ValueError, match="more labels than images"):
    audit.estimate([1, 5], [0, 0], [0, 1], [0, 1])


def write_sheet(path: pathlib.Path, rows: list[tuple[str, int, str]]) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(audit.CSV_COLUMNS)
    writer.writerows((p, s, "0.5", "NORMAL", label) for p, s, label in rows)


def test_read_sheet_accepts_names_and_digits_and_names_the_bad_row(tmp_path):
  picked = {"a.png": 0, "b.png": 0, "c.png": 1, "d.png": 1}
  sheet = tmp_path / "audit.csv"
  write_sheet(sheet, [("a.png", 0, "normal"), ("b.png", 0, " PNEUMONIA "), ("c.png", 1, "1"),
                      ("d.png", 1, "")])
  labels, unlabelled = audit.read_sheet(str(sheet), picked)
  assert labels == {"a.png": 0, "b.png": 1, "c.png": 1} and unlabelled == ["d.png"]
  write_sheet(sheet, [("a.png", 0, "0"), ("b.png", 0, "maybe")])
  with pytest.raises(ValueError, match=re.escape(f"{sheet}, row 3: label 'maybe' is not NORMAL")):
    audit.read_sheet(str(sheet), picked)
  write_sheet(sheet, [("x.png", 0, "0")])
  with pytest.raises(ValueError, match="row 2: 'x.png' is not one of the images"):
    audit.read_sheet(str(sheet), picked)
  write_sheet(sheet, [("c.png", 0, "0")])
  with pytest.raises(ValueError, match="stratum '0' of 'c.png' was 1"):
    audit.read_sheet(str(sheet), picked)


@pytest.fixture(scope="module")
def pca_workdir(tmp_path_factory, chest_xray_dir) -> str:
  """The debug PCA + logistic regression workdir (test_report's folder: trained once)."""
  from configs import pca_logreg  # pylint: disable=import-outside-toplevel
  from cxr_jax import train  # pylint: disable=import-outside-toplevel
  from cxr_jax.report import collect  # pylint: disable=import-outside-toplevel
  from tests.report.test_report import debug_config  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.getbasetemp() / "debug_workdirs"
  entry = collect.Entry("pca_logreg", str(root / "pca_logreg"),
                        config=debug_config(pca_logreg, chest_xray_dir))
  status = collect.ensure_trained(entry, train_missing=True, train_fn=train.train_and_evaluate)
  assert status["status"] in ("trained", "reused"), status
  return entry.workdir


def command(*args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "cxr_jax.tools.audit", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def test_command_line_round_trip(pca_workdir, tmp_path):
  site = tmp_path / "site"
  for i in range(14):
    write_image(site / ("a" if i % 2 else "b") / f"scan_{i}.png", seed=i, size=(70, 60))
  sheet = tmp_path / "audit.csv"
  picked = command(f"--workdir={pca_workdir}", f"--data_dir={site}", "--budget=8",
                   f"--output={sheet}")
  assert picked.returncode == 0, picked.stderr
  assert "fill the label column" in picked.stdout and f"--labels={sheet}" in picked.stdout
  with open(sheet, newline="") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 8 and all(r["label"] == "" for r in rows)
  assert list(rows[0]) == list(audit.CSV_COLUMNS)
  design = json.loads((tmp_path / "audit.design.json").read_text())
  assert sum(design["strata_sizes"]) == 14 and design["budget"] == 8
  for i, row in enumerate(rows):
    row["label"] = "" if i == 0 else ("NORMAL", "1")[i % 2]
  with open(sheet, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=audit.CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
  out = tmp_path / "result.json"
  estimated = command(f"--workdir={pca_workdir}", f"--labels={sheet}", f"--json={out}")
  assert estimated.returncode == 0, estimated.stderr
  assert "used 7 labels of 8 picked (1 unlabelled" in estimated.stdout
  result = json.loads(out.read_text())
  assert result["n_labelled"] == 7 and result["n_images"] == 14
  for m in audit.METRICS:
    assert m in estimated.stdout and (result[m]["cannot_tell"] or 0 <= result[m]["estimate"] <= 1)

  rows[1]["label"] = "maybe"
  with open(sheet, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=audit.CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
  bad = command(f"--workdir={pca_workdir}", f"--labels={sheet}")
  assert bad.returncode == 1 and f"error: ValueError: {sheet}, row 3: label 'maybe' is not " \
      "NORMAL, PNEUMONIA, 0 or 1." in bad.stderr.splitlines(), bad.stderr
  design["workdir_source"]["best_epoch"] = -1  # As if the workdir had been retrained.
  (tmp_path / "audit.design.json").write_text(json.dumps(design))
  foreign = command(f"--workdir={pca_workdir}", f"--labels={sheet}")
  assert foreign.returncode == 1 and "not with --workdir=" in foreign.stderr, foreign.stderr
  too_many = command(f"--workdir={pca_workdir}", f"--data_dir={site}", "--budget=15",
                     f"--output={tmp_path / 'other.csv'}")
  assert too_many.returncode == 1 and "--budget=15 is more than the 14" in too_many.stderr
