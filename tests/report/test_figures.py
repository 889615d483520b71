"""Every report figure writes a readable PNG of the expected size; bad input raises."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from cxr_jax.report import figures


def _curves():
  rng = np.random.default_rng(0)
  labels = (rng.random(300) < 0.6).astype(int)
  good = np.clip(0.5 * labels + 0.5 * rng.random(300), 0, 1)
  weak = np.clip(0.2 * labels + 0.8 * rng.random(300), 0, 1)
  return {"cnn_v3": (labels, good), "cnn_baseline": (labels, weak)}


def _gray(seed: int, shape=(40, 48)) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _open_png(path: str, expected_wh: tuple[int, int]) -> None:
  assert os.path.getsize(path) > 1000
  with Image.open(path) as im:
    assert im.format == "PNG"
    w, h = im.size
  assert abs(w - expected_wh[0]) <= 2 and abs(h - expected_wh[1]) <= 2, (im.size, expected_wh)


HISTORY = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_f1": 0.8 + e / 100,
            "phase": "head" if e < 3 else "finetune"} for e in range(1, 6)]

# (function, args, figure size in inches at figures.DPI)
CASES = {
    "roc": (figures.roc_curves, lambda: (_curves(),), (6, 5.5)),
    "pr": (figures.pr_curves, lambda: (_curves(),), (6, 5.5)),
    "cm": (figures.confusion_matrices,
           lambda: ({"a": [[50, 10], [5, 100]], "b": [[40, 20], [1, 104]]},), (6.8, 3.6)),
    "reliability": (figures.reliability_diagram, lambda: (_curves(),), (6, 7)),
    "training": (figures.training_curves, lambda: (HISTORY,), (11, 4.2)),
    "counts": (figures.class_counts_bar,
               lambda: ({"train": {"NORMAL": 1341, "PNEUMONIA": 3875},
                         "test": {"NORMAL": 234, "PNEUMONIA": 390}},), (5.2, 4.5)),
    "sizes": (figures.image_size_histogram,
              lambda: ([(1000 + i, 800 + 2 * i) for i in range(50)],), (10, 4.5)),
    "samples": (figures.sample_grid,
                lambda: ({"NORMAL": [_gray(i) for i in range(3)],
                          "PNEUMONIA": [_gray(9)[..., None], np.stack([_gray(8)] * 3, -1)]},),
                (5.7, 4.6)),
    "gradcam": (figures.gradcam_grid,
                lambda: ([{"image": _gray(i), "heatmap": np.linspace(0, 1, 64).reshape(8, 8),
                           "title": f"p={i / 10}"} for i in range(5)],), (12.8, 6.8)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_writes_png_of_expected_size(name, tmp_path):
  fn, args, (w, h) = CASES[name]
  path = str(tmp_path / "sub" / f"{name}.png")  # The folder does not exist yet.
  assert fn(*args(), path) == path
  _open_png(path, (round(w * figures.DPI), round(h * figures.DPI)))


def test_training_curves_with_restarting_epochs_and_missing_values(tmp_path):
  history = [{"epoch": e % 3, "train_loss": 0.5, "val_loss": None, "val_auc": 0.9,
              "phase": "head" if e < 3 else "finetune"} for e in range(6)]
  _open_png(figures.training_curves(history, str(tmp_path / "t.png")), (1650, 630))


@pytest.mark.parametrize("call, match", [
    (lambda p: figures.roc_curves({"m": ([0, 1, 1], [0.1, 0.9])}, p), "equal lengths"),
    (lambda p: figures.pr_curves({"m": ([1, 1], [0.1, 0.9])}, p), "both classes"),
    (lambda p: figures.roc_curves({}, p), "empty"),
    (lambda p: figures.reliability_diagram({"m": ([0, 1], [0.1, 1.5])}, p), r"\[0, 1\]"),
    (lambda p: figures.confusion_matrices({"m": [[1, 2, 3], [4, 5, 6]]}, p), "2x2"),
    (lambda p: figures.confusion_matrices({"m": [[1, -2], [3, 4]]}, p), "non-negative"),
    (lambda p: figures.training_curves([{"loss": 1}], p), "'epoch'"),
    (lambda p: figures.training_curves([{"epoch": 1}], p), "train_loss"),
    (lambda p: figures.class_counts_bar({"train": {"NORMAL": -1}}, p), "non-negative"),
    (lambda p: figures.image_size_histogram([(10, 20, 30)], p), "width, height"),
    (lambda p: figures.sample_grid({"NORMAL": [np.zeros((4, 4), np.float32)]}, p), "uint8"),
    (lambda p: figures.sample_grid({"NORMAL": []}, p), "no images"),
    (lambda p: figures.gradcam_grid([{"image": _gray(0), "heatmap": np.full((4, 4), 2.0)}], p),
     r"\[0, 1\]"),
    (lambda p: figures.gradcam_grid([{"image": _gray(0)}], p), "heatmap"),
])
def test_bad_input_raises_value_error(call, match, tmp_path):
  path = tmp_path / "bad.png"
  with pytest.raises(ValueError, match=match):
    call(str(path))
  assert not path.exists()
