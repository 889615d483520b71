"""The train state, optimizer, loss and the pure steps `train_step(state, batch, rng)`.

Every recipe knob that is a number (learning rate and schedule, weight decay, label
smoothing, mixup, class weights, EMA decay, augmentation strengths) lives in
`state.hparams` as a traced scalar, not in the compiled program: recipes and seeds
that share a model, an input size and a set of trained parameters run one compiled
step (and hit XLA's compilation cache across processes).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from cxr_jax.data import augment

class TrainState(train_state.TrainState):
  batch_stats: Any = None
  ema: Any = None  # {"params", "batch_stats"}: exponential moving average of the weights.
  hparams: Any = None  # {name: float32 scalar}, see `phase_hparams`.


def class_weights(labels: np.ndarray, mode: str) -> np.ndarray:
  """Per-class loss weights [w_normal, w_pneumonia]."""
  if mode == "none":
    return np.ones(2, np.float32)
  if mode == "balanced":
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    if np.any(counts == 0):
      raise ValueError(f"Training set lacks a class (counts {counts.tolist()}).")
    return (counts.sum() / (2.0 * counts)).astype(np.float32)
  raise ValueError(f"config.class_weight must be 'balanced' or 'none'; got {mode!r}.")


def phase_hparams(config, phase, steps_per_epoch: int, loss_weights) -> dict[str, np.ndarray]:
  """The traced hyperparameters of one phase."""
  total = max(1, int(phase.num_epochs) * steps_per_epoch)
  warmup = min(int(config.warmup_epochs * steps_per_epoch), total - 1)
  values = {
      "peak_lr": phase.learning_rate, "warmup_steps": warmup, "total_steps": total,
      "end_lr_factor": config.lr_end_factor,
      "weight_decay": config.weight_decay,
      "label_smoothing": config.label_smoothing,
      "mixup_prob": config.mixup_prob,
      "mixup_alpha": config.mixup_alpha,
      "ema_decay": config.ema_decay,
      "weight_normal": loss_weights[0], "weight_pneumonia": loss_weights[1],
      **augment.strengths(config.augment),
  }
  return {k: np.float32(v) for k, v in values.items()}


def learning_rate(step, hp) -> jax.Array:
  """Linear warmup to peak_lr, then cosine decay to end_lr_factor * peak_lr at total_steps."""
  step = jnp.asarray(step, jnp.float32)
  warm = hp["warmup_steps"]
  warmup_lr = hp["peak_lr"] * step / jnp.maximum(warm, 1.0)
  progress = jnp.clip((step - warm) / jnp.maximum(hp["total_steps"] - warm, 1.0), 0.0, 1.0)
  end = hp["end_lr_factor"]
  cosine = end + (1 - end) * 0.5 * (1 + jnp.cos(jnp.pi * progress))
  return jnp.where(step < warm, warmup_lr, hp["peak_lr"] * cosine)


def make_optimizer() -> optax.GradientTransformation:
  """AdamW whose learning rate and weight decay are set by the step (traced, not constants)."""
  return optax.inject_hyperparams(optax.adamw)(learning_rate=0.0, weight_decay=0.0)


def variables_of(state: TrainState, ema: bool = False) -> dict:
  """{"params", "batch_stats"} of the state, or of its moving average."""
  if ema and state.ema is not None:
    return dict(state.ema)
  v = {"params": state.params}
  if state.batch_stats is not None:
    v["batch_stats"] = state.batch_stats
  return v


def create_state(model, variables: dict, hparams: dict) -> TrainState:
  params = variables["params"]
  stats = variables.get("batch_stats")
  ema = {"params": params, **({"batch_stats": stats} if stats is not None else {})}
  return TrainState.create(apply_fn=model.apply, params=params, tx=make_optimizer(),
                           batch_stats=stats, ema=jax.tree_util.tree_map(jnp.copy, ema),
                           hparams={k: jnp.asarray(v) for k, v in hparams.items()})


def trainable_mask(params, phase, model) -> Any:
  """A pytree of bools over params: which parameters this phase updates (None: all).

  phase.trainable: "all", "head" (only the classifier head), or an int N (the head
  plus the last N feature blocks, for models exposing `fine_tune_prefixes(N)`).
  """
  trainable = phase.trainable
  if trainable == "all":
    return None
  if trainable == "head":
    prefixes = ("head",)
  elif isinstance(trainable, int):
    if not hasattr(model, "fine_tune_prefixes"):
      raise ValueError(f"Model {type(model).__name__} cannot fine-tune its last {trainable} "
                       "blocks (no fine_tune_prefixes); use trainable='all' or 'head'.")
    prefixes = tuple(model.fine_tune_prefixes(trainable))
  else:
    raise ValueError(f"phase {phase.name!r}: trainable must be 'all', 'head' or an int; "
                     f"got {trainable!r}.")

  def is_trainable(path, _):
    return any(getattr(k, "key", str(k)) in prefixes for k in path)

  return jax.tree_util.tree_map_with_path(is_trainable, params)


def weighted_bce(logits, targets, weights) -> jax.Array:
  per_example = optax.sigmoid_binary_cross_entropy(logits, targets)
  return jnp.sum(per_example * weights) / jnp.sum(weights)


def _targets(rng, images, labels, hp):
  """(images, soft targets, per-example loss weights) after mixup and label smoothing."""
  labels = labels.astype(jnp.float32)
  weights = jnp.where(labels > 0.5, hp["weight_pneumonia"], hp["weight_normal"])
  perm_key, lam_key, use_key = jax.random.split(rng, 3)
  batch = labels.shape[0]
  perm = jax.random.permutation(perm_key, batch)
  lam = jax.random.beta(lam_key, hp["mixup_alpha"], hp["mixup_alpha"], (batch,))
  lam = jnp.maximum(lam, 1.0 - lam)  # The first image stays the larger part.
  lam = jnp.where(jax.random.bernoulli(use_key, hp["mixup_prob"], (batch,)), lam, 1.0)
  images = lam[:, None, None, None] * images + (1 - lam)[:, None, None, None] * images[perm]
  targets = lam * labels + (1 - lam) * labels[perm]
  weights = lam * weights + (1 - lam) * weights[perm]
  eps = hp["label_smoothing"]
  return images, targets * (1 - eps) + 0.5 * eps, weights


def _apply_updates(state: TrainState, grads, mask, new_stats) -> TrainState:
  """One AdamW update at the scheduled rate; frozen parameters (mask False) unchanged."""
  hp = state.hparams
  opt_state = state.opt_state
  opt_state = opt_state._replace(hyperparams={
      **opt_state.hyperparams, "learning_rate": learning_rate(state.step, hp),
      "weight_decay": hp["weight_decay"]})
  updates, opt_state = state.tx.update(grads, opt_state, state.params)
  if mask is not None:
    updates = jax.tree_util.tree_map(lambda u, m: u if m else jnp.zeros_like(u), updates, mask)
  params = optax.apply_updates(state.params, updates)
  # EMA with timm's warm-up, so early epochs are not dominated by the initial weights.
  decay = jnp.minimum(hp["ema_decay"], (1.0 + state.step) / (10.0 + state.step))
  current = {"params": params, **({"batch_stats": new_stats} if new_stats is not None else {})}
  ema = jax.tree_util.tree_map(lambda e, c: decay * e + (1 - decay) * c, state.ema, current)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                       batch_stats=new_stats, ema=ema)


def _step_metrics(loss, logits, labels, grads, state) -> dict:
  """Per-step scalars; they stay on device until a log step fetches them."""
  return {"loss": loss,
          "accuracy": jnp.mean((logits > 0).astype(jnp.float32) == labels),
          "grad_norm": optax.global_norm(grads),
          "learning_rate": learning_rate(state.step, state.hparams)}


def make_train_step(model, mask=None, train_batch_norm: bool = True,
                    horizontal_flip: bool = False):
  """train_step(state, batch, rng) -> (state, metrics): pure; jit it with donated state.

  `mask` (bool pytree over params, None = all trainable): frozen parameters are
  wrapped in stop_gradient, so neither their gradients nor the backward pass below
  the lowest trainable layer are computed.
  """

  def train_step(state: TrainState, batch: dict, rng: jax.Array):
    hp = state.hparams
    aug_rng, mix_rng, dropout_rng = jax.random.split(jax.random.fold_in(rng, state.step), 3)
    images = augment.augment(aug_rng, batch["image"], hp, horizontal_flip)
    images, targets, weights = _targets(mix_rng, images, batch["label"], hp)

    def loss_fn(params):
      if mask is not None:
        params = jax.tree_util.tree_map(
            lambda p, trainable: p if trainable else jax.lax.stop_gradient(p), params, mask)
      variables = {"params": params}
      kwargs = {"train": True}
      if state.batch_stats is not None:
        variables["batch_stats"] = state.batch_stats
        if not train_batch_norm:  # Frozen BatchNorm: inference statistics, no update.
          kwargs["train_batch_norm"] = False
      update_stats = state.batch_stats is not None and train_batch_norm
      out = model.apply(variables, images, rngs={"dropout": dropout_rng},
                        mutable=["batch_stats"] if update_stats else False, **kwargs)
      logits, new_stats = (out[0], out[1]["batch_stats"]) if update_stats else (
          out, state.batch_stats)
      return weighted_bce(logits, targets, weights), (logits, new_stats)

    (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = _step_metrics(loss, logits, batch["label"], grads, state)
    return _apply_updates(state, grads, mask, new_stats), metrics

  return train_step


def jit_phase_step(model, mask, phase, config):
  """The jitted, state-donating train step of one (non-cached) phase, exactly as the
  training loop runs it; the benchmark times this same program."""
  return jax.jit(make_train_step(model, mask, phase.train_batch_norm,
                                 config.augment.horizontal_flip),
                 donate_argnums=(0,))


def make_head_step(model, mask):
  """train_step on cached backbone features: same state structure, head gradients only."""

  def head_step(state: TrainState, batch: dict, rng: jax.Array):
    hp = state.hparams
    dropout_rng = jax.random.fold_in(rng, state.step)
    labels = batch["label"].astype(jnp.float32)
    weights = jnp.where(labels > 0.5, hp["weight_pneumonia"], hp["weight_normal"])
    targets = labels * (1 - hp["label_smoothing"]) + 0.5 * hp["label_smoothing"]

    def loss_fn(params):
      logits = model.apply({"params": params}, batch["image"], train=True,
                           method=model.classify, rngs={"dropout": dropout_rng})
      return weighted_bce(logits, targets, weights), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = _step_metrics(loss, logits, batch["label"], grads, state)
    return _apply_updates(state, grads, mask, state.batch_stats), metrics

  return head_step
