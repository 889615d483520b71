"""PCA + logistic regression on downsized grayscale pixels: the non-deep baseline.

Trained and evaluated through the same launch.py / evaluate commands as the Flax
models; the fitted pipeline is saved in the workdir with joblib.
"""

from __future__ import annotations

import json
import logging
import os
import time

import joblib
import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from cxr_jax import checkpoints
from cxr_jax import input_pipeline
from cxr_jax import metrics as metrics_lib

MODEL_FILE = "pca_logreg.joblib"
META_FILE = "pca_logreg_meta.json"


def flatten(images: np.ndarray) -> np.ndarray:
  """uint8 [N,H,W,C] -> float32 [N, H*W*C] in [0, 1], the classifier's input."""
  return images.reshape(len(images), -1).astype(np.float32) / 255.0


def build(model_config, c: float, seed: int):
  return make_pipeline(
      PCA(n_components=model_config.n_components, whiten=model_config.whiten, random_state=seed),
      LogisticRegression(C=c, class_weight="balanced", max_iter=2000))


def train_and_evaluate(config, workdir: str) -> dict:
  """Fits one pipeline per C of config.model.c_grid; keeps the best by validation F1."""
  os.makedirs(workdir, exist_ok=True)
  checkpoints.save_config(workdir, config)
  train_data, val_data = input_pipeline.load_train_val(config.data)
  x_train, x_val = flatten(train_data.images), flatten(val_data.images)
  n_components = min(config.model.n_components, *x_train.shape)
  if n_components != config.model.n_components:
    logging.warning("PCA n_components lowered from %d to %d (the training set is small).",
                    config.model.n_components, n_components)
    config.model.n_components = n_components
  start = time.time()
  best = None
  for c in config.model.c_grid:
    pipeline = build(config.model, c, config.seed).fit(x_train, train_data.labels)
    probs = pipeline.predict_proba(x_val)[:, 1]
    val = metrics_lib.binary_metrics(val_data.labels, probs, 0.5)
    logging.info("PCA(%d) + LogisticRegression(C=%g): validation F1 %.4f, AUC %.4f",
                 n_components, c, val["f1"], val["roc_auc"] or float("nan"))
    if best is None or val["f1"] > best[2]["f1"]:
      best = (c, pipeline, val, probs)
  seconds = time.time() - start
  c, pipeline, val, probs = best
  threshold = metrics_lib.f1_optimal_threshold(val_data.labels, probs)
  joblib.dump(pipeline, os.path.join(workdir, MODEL_FILE))
  explained = float(np.sum(pipeline[0].explained_variance_ratio_))
  meta = {"C": c, "threshold": threshold, "val_metrics": val,
          "val_f1_at_threshold": metrics_lib.binary_metrics(
              val_data.labels, probs, threshold)["f1"],
          "explained_variance": explained}
  with open(os.path.join(workdir, META_FILE), "w") as f:
    json.dump(meta, f, indent=2)
  params = int(pipeline[0].components_.size + pipeline[1].coef_.size + 1)
  summary = {"model": "pca_logreg", "params": params, "best_epoch": None, "val": val,
             "val_threshold": threshold, "train_seconds": round(seconds, 1),
             "skipped_files": train_data.skipped, "C": c}
  with open(os.path.join(workdir, "train_summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  logging.info("Done. C=%g: validation F1 %.4f (threshold 0.5); PCA keeps %.1f%% of the "
               "variance; %s parameters; %.1fs.", c, val["f1"], 100 * explained,
               f"{params:,}", seconds)
  return summary


def load(workdir: str):
  """(fitted pipeline, meta) saved by train_and_evaluate."""
  path = os.path.join(workdir, MODEL_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"No fitted model at {path}: train first "
                            f"(python launch.py --config=configs/pca_logreg.py --workdir={workdir}).")
  with open(os.path.join(workdir, META_FILE)) as f:
    return joblib.load(path), json.load(f)
