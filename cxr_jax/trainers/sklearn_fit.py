"""The fit of a scikit-learn model kind (PCA + logistic regression, models/pca_logreg.py)."""

from __future__ import annotations

import logging
import time

import ml_collections
import numpy as np

from cxr_jax import data as data_lib
from cxr_jax import models
from cxr_jax.metrics import classification as metrics_lib
from cxr_jax.models import pca_logreg


def train(kind: models.SklearnKind, config: ml_collections.ConfigDict, workdir: str,
          datasets=None) -> models.Trained:
  """Fits a scikit-learn model kind (PCA + logistic regression): C chosen by validation F1."""
  del kind
  train_data, val_data = datasets or data_lib.load_train_val(config.data)
  x_train, x_val = pca_logreg.flatten(train_data.images), pca_logreg.flatten(val_data.images)
  n_components = pca_logreg.n_components(config.model, *x_train.shape)
  start = time.time()
  best = None
  for c in config.model.c_grid:
    pipeline = pca_logreg.build(config.model, c, config.seed, n_components)
    pipeline.fit(x_train, train_data.labels)
    probs = pipeline.predict_proba(x_val)[:, 1]
    val = metrics_lib.validation_metrics(val_data.labels, probs)
    logging.info("PCA(%d) + LogisticRegression(C=%g): validation F1 %.4f, AUC %.4f",
                 n_components, c, val["f1"], val["roc_auc"] or float("nan"))
    if best is None or val["f1"] > best[2]["f1"]:
      best = (c, pipeline, val, probs)
  seconds = time.time() - start
  c, pipeline, val, probs = best
  threshold = metrics_lib.f1_optimal_threshold(val_data.labels, probs)
  explained = float(np.sum(pipeline[0].explained_variance_ratio_))
  pca_logreg.save(workdir, pipeline, {
      "C": c, "threshold": threshold, "val_metrics": val,
      "val_f1_at_threshold": metrics_lib.binary_metrics(val_data.labels, probs, threshold)["f1"],
      "explained_variance": explained})
  params = pca_logreg.param_count(pipeline)
  summary = {"model": config.model.name, "name": config.name, "params": params,
             "best_epoch": None, "val": val, "val_threshold": threshold,
             "train_seconds": round(seconds, 1), "skipped_files": train_data.skipped, "C": c}
  done = (f"Done. C={c:g}: validation F1 {val['f1']:.4f} (threshold 0.5); PCA keeps "
          f"{100 * explained:.1f}% of the variance; {params:,} parameters; {seconds:.1f}s.")
  return models.Trained(summary, val_data, train_data, done)
