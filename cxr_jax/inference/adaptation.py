"""Label-free adaptation to a new site: uses a folder's images, never its labels.

  adapted = adapt(predictor, images, method="adabn+prior", temperature=T)

- "adabn" (Li et al. 2016): the BatchNorm running statistics re-estimated on the
  folder (each batch normalised with its own statistics, their mean kept), so a
  scanner's other exposure or contrast is normalised away. Models without BatchNorm
  are left as they are (said in the result).
- "prior" (Saerens, Latinne & Decaestecker 2002): the folder's pneumonia rate
  estimated by EM on the model's temperature-calibrated posteriors, and the
  posteriors re-weighted to it. Under the balanced loss the model's own prior is 0.5.
- "balanced+prior": AdaBN on the folder resampled, by the model's own predicted labels, to
  the training split's class mix, then the prior. A folder that differs only in its mix of
  classes then leaves the statistics where they were: plain AdaBN moves them, and with
  them answers that were right (label shift).
- "auto": decided per folder by `resolve` (docs/results.md, "--adapt=auto").

Adapted numbers are reported beside the unadapted ones, never mixed with them.
"""

from __future__ import annotations

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax.data import augment
from cxr_jax.data import batches
from cxr_jax.inference import predictors as predictor_lib
from cxr_jax.metrics import scoring

METHODS = ("none", "prior", "adabn", "adabn+prior", "balanced+prior")
AUTO = "auto"
CHOICES = (AUTO,) + METHODS  # What --adapt takes.
# Kaggle train/'s share of PNEUMONIA images (3875 of 5216): the class mix every model's
# BatchNorm statistics were accumulated on.
TRAIN_PNEUMONIA_SHARE = 3875 / 5216


# What --adapt=auto applies, and from how many images of a folder the folder test calls
# shifted, by the rule of docs/results.md ("--adapt=auto") on folders generated from
# validation (python -m cxr_lab.tools.adapt_study; benchmarks/adapt_auto/ADAPT.md). The rule
# chose none: under a changed class mix adabn+prior lost up to 0.15 accuracy and
# balanced+prior 0.012, above the 0.005 allowed, so auto never adapts.
AUTO_METHOD: str | None = None
AUTO_MIN_IMAGES: int | None = None


def resolve(method: str, n_images: int, shifted: bool | None) -> tuple[str, str]:
  """(the method to apply, why) for --adapt=`method` on a folder of n_images that the
  folder test called `shifted` (None: no verdict)."""
  if method != AUTO:
    return method, f"--adapt={method}"
  if AUTO_METHOD is None:
    return "none", ("auto: no method was safe under a changed class mix on the generated "
                    "folders; --adapt=METHOD applies one anyway")
  if not shifted:
    return "none", "auto: the folder test does not call this folder shifted"
  if n_images < AUTO_MIN_IMAGES:
    return "none", (f"auto: {n_images} images, fewer than the {AUTO_MIN_IMAGES} that "
                    "adaptation needs")
  return AUTO_METHOD, (f"auto: the folder test calls these {n_images} images shifted "
                       f"(at least {AUTO_MIN_IMAGES})")


def source_prior(config) -> float:
  """The pneumonia prior the model's posteriors assume: 0.5 under the balanced loss."""
  return 0.5 if config.class_weight == "balanced" else TRAIN_PNEUMONIA_SHARE


def balanced_indices(probs, share: float = TRAIN_PNEUMONIA_SHARE, seed: int = 0
                     ) -> np.ndarray:
  """As many indices as images, drawn within each predicted class (with replacement where a
  class is short) so that the predicted-PNEUMONIA share is `share`; all of them, in order,
  when one predicted class is empty (nothing to rebalance with)."""
  predicted = np.asarray(probs) >= 0.5
  positive, negative = np.flatnonzero(predicted), np.flatnonzero(~predicted)
  n = len(predicted)
  if not len(positive) or not len(negative):
    return np.arange(n)
  k = int(round(share * n))
  rng = np.random.default_rng(seed)
  return np.sort(np.concatenate([rng.choice(positive, k, replace=len(positive) < k),
                                 rng.choice(negative, n - k, replace=len(negative) < n - k)]))


def reweight(probs, source: float, target: float) -> np.ndarray:
  """Posteriors under prior `source` turned into posteriors under prior `target`."""
  probs = np.asarray(probs, np.float64)
  up = target / source * probs
  down = (1 - target) / (1 - source) * (1 - probs)
  return up / np.maximum(up + down, 1e-300)


def em_prior(probs, source: float, iterations: int = 1000, tol: float = 1e-8) -> float:
  """The target prior of the EM of Saerens et al. (2002) from posteriors under `source`."""
  target = source
  for _ in range(iterations):
    new = float(np.mean(reweight(probs, source, target)))
    if abs(new - target) < tol:
      return new
    target = new
  return target


def _bn_train_kwargs(predictor) -> dict:
  # The MobileNetV2 classifier switches BatchNorm alone; the CNNs switch it with dropout,
  # which comes after their last BatchNorm and so leaves the statistics untouched.
  if "train_batch_norm" in predictor.model.__call__.__code__.co_varnames:
    return {"train": False, "train_batch_norm": True}
  return {"train": True}


@functools.lru_cache(maxsize=16)
def _statistics_fn(model, kwargs: tuple):
  """The jitted training-mode pass that returns a model's updated BatchNorm statistics:
  compiled once per model (Flax modules compare by their fields) and input shape."""

  @jax.jit
  def batch_statistics(v, x):
    _, state = model.apply(v, augment.to_float(x), mutable=["batch_stats"],
                           rngs={"dropout": jax.random.PRNGKey(0)}, **dict(kwargs))
    return state["batch_stats"]

  return batch_statistics


def adabn(predictor: predictor_lib.FlaxPredictor, images: np.ndarray,
          batch_size: int = 64) -> predictor_lib.FlaxPredictor | None:
  """A copy of `predictor` with BatchNorm statistics of `images`; None without BatchNorm."""
  variables = predictor.variables
  if "batch_stats" not in variables:
    return None
  batch_statistics = _statistics_fn(predictor.model, tuple(_bn_train_kwargs(predictor).items()))
  full = [b for b in batches.eval_batches(images, batch_size) if b["mask"].all()]
  if not full:  # Fewer images than a batch: one batch of exactly them.
    full = [{"image": images}]
  # A training-mode pass updates running = m * running + (1 - m) * batch. From running = 0
  # it returns a = (1 - m) * batch, from running = 1 it returns a + m: whatever each layer's
  # momentum m, batch = a / (1 - m). The folder's statistics are the batches' mean.
  zeros = jax.tree_util.tree_map(jnp.zeros_like, variables["batch_stats"])
  ones = jax.tree_util.tree_map(jnp.ones_like, variables["batch_stats"])
  stats = []
  for b in full:
    a = batch_statistics({**variables, "batch_stats": zeros}, b["image"])
    a_plus_m = batch_statistics({**variables, "batch_stats": ones}, b["image"])
    stats.append(jax.tree_util.tree_map(lambda x, y: x / (1.0 - (y - x)), a, a_plus_m))
  adapted = copy.copy(predictor)
  adapted.variables = {**variables, "batch_stats": jax.tree_util.tree_map(
      lambda *s: jnp.mean(jnp.stack(s), axis=0), *stats)}
  return adapted


def adapt(predictor, images: np.ndarray, method: str, temperature: float) -> dict:
  """{"probs" (adapted, calibrated), "prior", "adabn" (applied?), "method"} of a folder."""
  if method not in METHODS:
    raise ValueError(f"adaptation must be one of {METHODS} (or {AUTO!r}, resolved first); "
                     f"got {method!r}.")
  applied_adabn = False
  if "adabn" in method or "balanced" in method:
    statistics_of = images
    if "balanced" in method:
      statistics_of = images[balanced_indices(predictor.probs(images))]
    # A Flax network's own statistics, or every Flax member's of an ensemble; None if none.
    adapted = predictor.with_batch_norm_of(statistics_of, adabn)
    if adapted is not None:
      predictor, applied_adabn = adapted, True
  probs = scoring.calibrate_probs(predictor.probs(images), temperature)
  source = source_prior(predictor.config)
  prior = None
  if "prior" in method:
    prior = em_prior(probs, source)
    probs = reweight(probs, source, prior)
  return {"method": method, "probs": probs, "prior": prior, "source_prior": source,
          "adabn": applied_adabn}
