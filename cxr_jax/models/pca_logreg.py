"""PCA + logistic regression on downsized grayscale pixels: the non-deep baseline.

Trained and evaluated through the same commands as the Flax models (`train`,
`evaluation.predictor`); the fitted pipeline is saved in the workdir with joblib.
"""

from __future__ import annotations

import json
import logging
import os

import joblib
import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

MODEL_FILE = "pca_logreg.joblib"
META_FILE = "pca_logreg_meta.json"


def flatten(images: np.ndarray) -> np.ndarray:
  """uint8 [N,H,W,C] -> float32 [N, H*W*C] in [0, 1], the classifier's input."""
  return images.reshape(len(images), -1).astype(np.float32) / 255.0


def build(model_config, c: float, seed: int, n_components: int):
  return make_pipeline(
      PCA(n_components=n_components, whiten=model_config.whiten, random_state=seed),
      LogisticRegression(C=c, class_weight="balanced", max_iter=2000))


def n_components(model_config, n_train: int, n_pixels: int) -> int:
  """config.model.n_components, lowered to what the training set allows (with a warning)."""
  n = min(model_config.n_components, n_train, n_pixels)
  if n != model_config.n_components:
    logging.warning("PCA n_components lowered from %d to %d (the training set is small).",
                    model_config.n_components, n)
  return n


def param_count(pipeline) -> int:
  return int(pipeline[0].components_.size + pipeline[1].coef_.size + 1)


def save(workdir: str, pipeline, meta: dict) -> None:
  joblib.dump(pipeline, os.path.join(workdir, MODEL_FILE))
  with open(os.path.join(workdir, META_FILE), "w") as f:
    json.dump(meta, f, indent=2)


def is_saved(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, MODEL_FILE))


def load(workdir: str):
  """(fitted pipeline, meta) saved by `save`."""
  path = os.path.join(workdir, MODEL_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"No fitted model at {path}: train first "
                            f"(python launch.py --config=configs/pca_logreg.py --workdir={workdir}).")
  with open(os.path.join(workdir, META_FILE)) as f:
    return joblib.load(path), json.load(f)
