"""Label-free adaptation to a new site: uses a folder's images, never its labels.

  adapted = adapt(predictor, images, method="adabn+prior", temperature=T)

- "adabn" (Li et al. 2016): the BatchNorm running statistics re-estimated on the
  folder (each batch normalised with its own statistics, their mean kept), so a
  scanner's other exposure or contrast is normalised away. Models without BatchNorm
  are left as they are (said in the result).
- "prior" (Saerens, Latinne & Decaestecker 2002): the folder's pneumonia rate
  estimated by EM on the model's temperature-calibrated posteriors, and the
  posteriors re-weighted to it. Under the balanced loss the model's own prior is 0.5.

Adapted numbers are reported beside the unadapted ones, never mixed with them.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax.data import augment
from cxr_jax.data import batches
from cxr_jax.evaluation import predictor as predictor_lib
from cxr_jax.evaluation import scoring

METHODS = ("none", "prior", "adabn", "adabn+prior")


def source_prior(config, train_pneumonia_fraction: float | None = None) -> float:
  """The pneumonia prior the model's posteriors assume: 0.5 under the balanced loss."""
  if config.get("class_weight", "balanced") == "balanced":
    return 0.5
  return 0.742 if train_pneumonia_fraction is None else train_pneumonia_fraction


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


def adabn(predictor: predictor_lib.FlaxPredictor, images: np.ndarray,
          batch_size: int = 64) -> predictor_lib.FlaxPredictor | None:
  """A copy of `predictor` with BatchNorm statistics of `images`; None without BatchNorm."""
  variables = predictor.variables
  if "batch_stats" not in variables:
    return None
  model, kwargs = predictor.model, _bn_train_kwargs(predictor)

  @jax.jit
  def batch_statistics(v, x):
    _, state = model.apply(v, augment.to_float(x), mutable=["batch_stats"],
                           rngs={"dropout": jax.random.PRNGKey(0)}, **kwargs)
    return state["batch_stats"]

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
    raise ValueError(f"adaptation must be one of {METHODS}; got {method!r}.")
  applied_adabn = False
  if "adabn" in method:
    # A Flax network's own statistics, or every Flax member's of an ensemble; None if none.
    adapted = predictor.with_batch_norm_of(images, adabn)
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
