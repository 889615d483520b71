"""Latency of exported files and the cost of the out-of-distribution score."""

from __future__ import annotations

import numpy as np

from cxr_lab.bench import timing
from cxr_jax.inference import batching
from cxr_jax.inference import predictors as predictor_lib


def bench_exported(serving, runtimes: dict, image_shape: tuple[int, int, int],
                   batch_size: int = 32, repeats: int = 20) -> dict:
  """Latency of one image and images/s at `batch_size`: the exported JAX function (plain
  XLA layers, as converted: "jax_export_fn") and each runtime.

  serving: export.Serving; runtimes: {name: callable on uint8 images}.
  """
  rng = np.random.default_rng(0)
  one = rng.integers(0, 256, (1,) + tuple(image_shape), dtype=np.uint8)
  many = rng.integers(0, 256, (batch_size,) + tuple(image_shape), dtype=np.uint8)
  out = {}
  for name, fn in {"jax_export_fn": serving.fn, **runtimes}.items():
    latency = timing.median_seconds(fn, one, repeats)
    batch = timing.median_seconds(fn, many, max(3, repeats // 4))
    out[name] = {"latency_ms": 1e3 * latency, "img_s": batch_size / batch,
                 "batch_size": batch_size}
  return out


def bench_ood_overhead(predictor, detector, images: np.ndarray, repeats: int = 3) -> dict:
  """Seconds to score `images` without the OOD score (probabilities only) and with it
  (probabilities, features and the detector), best of `repeats` after a warm-up."""
  probs_fn = predictor_lib.make_probs_fn(predictor.model)

  def without():
    return batching.predict_batched(probs_fn, predictor.variables, images,
                                     predictor.batch_size)

  def with_score():
    out = predictor.predict(images)
    return detector.score(out.features, images)

  timings = {"without_ood_s": timing.best_seconds(without, repeats),
             "with_ood_s": timing.best_seconds(with_score, repeats), "images": len(images)}
  timings["overhead"] = timings["with_ood_s"] / timings["without_ood_s"] - 1.0
  return timings
