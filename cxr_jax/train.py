"""Training loop: one pure jitted Optax step, early stopping on validation F1, Orbax checkpoints.

    train_and_evaluate(config, workdir) -> summary dict

The loop runs one or more phases (config.phases; the small CNNs have one, the
MobileNetV2 has a frozen-backbone phase then a fine-tuning phase). Each phase has
its own optimizer and early stopping; a later phase starts from the best weights of
the earlier ones. Re-running on a workdir that holds a checkpoint resumes from it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state
from sklearn import metrics as skm

from cxr_jax import checkpoints
from cxr_jax import data as data_lib
from cxr_jax import models
from cxr_jax import sharding
from cxr_jax import workdir as workdir_lib
from cxr_jax.data import augment
from cxr_jax.data import batches
from cxr_jax.evaluation import inference
from cxr_jax.evaluation import metrics as metrics_lib
from cxr_jax.evaluation import predictor as predictor_lib
from cxr_jax.models import pca_logreg


class TrainState(train_state.TrainState):
  batch_stats: Any = None


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or inf."""


# ---------------------------------------------------------------------------
# Phases, optimizer and loss.


def get_phases(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
  """The config's training phases; a single 'train' phase of all parameters by default."""
  if config.get("phases"):
    return [ml_collections.ConfigDict(p) for p in config.phases]
  return [ml_collections.ConfigDict(dict(
      name="train", num_epochs=config.num_epochs, learning_rate=config.learning_rate,
      trainable="all", train_batch_norm=True))]


def trainable_mask(params, phase, model) -> Any:
  """A pytree of bools over params: which parameters this phase updates.

  phase.trainable: "all", "head" (only the classifier head), or an int N (the head
  plus the last N feature blocks, for models exposing `fine_tune_prefixes(N)`).
  """
  trainable = phase.trainable
  if trainable == "all":
    return jax.tree_util.tree_map(lambda _: True, params)
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
    keys = [getattr(k, "key", str(k)) for k in path]
    return any(k in prefixes for k in keys)

  return jax.tree_util.tree_map_with_path(is_trainable, params)


def make_optimizer(config, phase, params, model, steps_per_epoch: int) -> optax.GradientTransformation:
  total_steps = max(1, phase.num_epochs * steps_per_epoch)
  warmup_steps = min(int(config.warmup_epochs * steps_per_epoch), total_steps - 1)
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0 if warmup_steps else phase.learning_rate, peak_value=phase.learning_rate,
      warmup_steps=warmup_steps, decay_steps=total_steps, end_value=phase.learning_rate * 0.01)
  tx = optax.adamw(schedule, weight_decay=config.weight_decay)
  mask = trainable_mask(params, phase, model)
  if all(jax.tree_util.tree_leaves(mask)):
    return tx
  labels = jax.tree_util.tree_map(lambda m: "train" if m else "frozen", mask)
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


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


def weighted_bce(logits, labels, weights):
  per_example = optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype))
  w = weights[labels]
  return jnp.sum(per_example * w) / jnp.sum(w)


# ---------------------------------------------------------------------------
# The train step.


def _step_metrics(loss, logits, labels, grads) -> dict:
  """Per-step scalars; they stay on device until a log step fetches them."""
  return {"loss": loss,
          "accuracy": jnp.mean((logits > 0).astype(jnp.float32) == labels),
          "grad_norm": optax.global_norm(grads)}


def make_train_step(model, aug_config, loss_weights, train_batch_norm: bool, mask=None):
  """Builds train_step(state, batch, rng) -> (state, metrics), pure, jit it with donation.

  `mask` (bool pytree over params, None = all trainable): frozen parameters are
  wrapped in stop_gradient, so neither their gradients nor the backward pass below
  the lowest trainable layer are computed.
  """
  loss_weights = jnp.asarray(loss_weights)

  def train_step(state: TrainState, batch: dict, rng: jax.Array):
    rng = jax.random.fold_in(rng, state.step)
    aug_rng, dropout_rng = jax.random.split(rng)
    images = augment.augment(aug_rng, batch["image"], aug_config)
    labels = batch["label"]

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
      return weighted_bce(logits, labels, loss_weights), (logits, new_stats)

    (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=new_stats)
    return state, _step_metrics(loss, logits, labels, grads)

  return train_step


# ---------------------------------------------------------------------------
# Head training on cached backbone features (frozen-backbone phase).


def make_features_fn(model):
  """features_fn(variables, uint8 images) -> pooled backbone features, jitted."""
  return jax.jit(lambda v, images: model.apply(v, augment.to_float(images),
                                               method=model.features))


def cached_features(model, state, phase, train_data, val_data, batch_size: int,
                    progress) -> tuple[data_lib.DecodedSet, data_lib.DecodedSet]:
  """Train/val sets whose "images" are the frozen backbone's pooled features.

  Valid only while nothing below the head trains and BatchNorm is frozen; the
  training images are then seen without augmentation (the price of computing the
  backbone once instead of every epoch).
  """
  if phase.trainable != "head" or phase.train_batch_norm or not hasattr(model, "features"):
    raise ValueError(f"phase {phase.name!r}: cached_features needs trainable='head', "
                     "train_batch_norm=False and a model with features()/classify().")
  variables = _variables(state)
  features_fn = make_features_fn(model)
  start = time.time()
  # The same padded, masked batching as predictions: no image is dropped.
  out = [dataclasses.replace(data, images=inference.predict_batched(features_fn, variables,
                                                                    data.images, batch_size))
         for data in (train_data, val_data)]
  seconds = time.time() - start
  progress.train_seconds += seconds
  logging.info("Cached backbone features of %d train + %d validation images (%d-d) in %.1fs "
               "(%.1f img/s); the head trains on them without augmentation.",
               len(train_data), len(val_data), out[0].images.shape[1], seconds,
               (len(train_data) + len(val_data)) / seconds)
  return out[0], out[1]


def make_head_step(model, loss_weights):
  """train_step on cached features: same state structure as a full step, head grads only."""
  loss_weights = jnp.asarray(loss_weights)

  def head_step(state: TrainState, batch: dict, rng: jax.Array):
    dropout_rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params):
      logits = model.apply({"params": params}, batch["image"], train=True,
                           method=model.classify, rngs={"dropout": dropout_rng})
      return weighted_bce(logits, batch["label"], loss_weights), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads)
    return state, _step_metrics(loss, logits, batch["label"], grads)

  return head_step


def make_head_predict_fn(model):
  @jax.jit
  def predict(variables, features):
    return jax.nn.sigmoid(model.apply({"params": variables["params"]}, features,
                                      method=model.classify))
  return predict


# ---------------------------------------------------------------------------
# Evaluation during training.


def evaluate_split(predict_fn, variables, data, batch_size: int, mesh=None
                   ) -> tuple[dict, np.ndarray]:
  probs = inference.predict_batched(predict_fn, variables, data.images, batch_size, mesh)
  m = metrics_lib.binary_metrics(data.labels, probs, threshold=0.5)
  m["loss"] = float(skm.log_loss(data.labels, probs, labels=[0, 1]))
  return m, probs


def _variables(state: TrainState) -> dict:
  v = {"params": state.params}
  if state.batch_stats is not None:
    v["batch_stats"] = state.batch_stats
  return v


@dataclasses.dataclass
class Progress:
  """Loop bookkeeping saved with every checkpoint, so a resumed run continues exactly."""
  phase: int = 0
  epoch: int = 0  # Epochs completed within `phase`.
  global_epoch: int = 0
  best_f1: float = -1.0
  best_global_epoch: int = -1
  epochs_without_improvement: int = 0
  stopped_early: bool = False
  train_seconds: float = 0.0
  history: list = dataclasses.field(default_factory=list)


def _log_params(model, variables) -> int:
  n = models.param_count(variables["params"])
  logging.info("Model %s: %s trainable parameters (%s with BatchNorm statistics).",
               type(model).__name__, f"{n:,}", f"{models.param_count(variables):,}")
  return n


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains config.model on the patient-grouped train split, selects on validation F1.

  Returns a summary dict (also written to workdir/train_summary.json).
  """
  if not models.is_flax(config.model.name):
    return train_sklearn(config, workdir)

  os.makedirs(workdir, exist_ok=True)
  _check_config_matches(config, workdir)
  workdir_lib.save_config(workdir, config)
  train_data, val_data = data_lib.load_train_val(config.data)
  model = models.create_model(config.model)
  steps_per_epoch = len(train_data) // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"Training set has {len(train_data)} images, fewer than "
                     f"config.batch_size={config.batch_size}.")

  mesh = sharding.data_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  sharding.check_batch_size(config.eval_batch_size, mesh, "config.eval_batch_size")
  if mesh.devices.size > 1:
    logging.info("Data parallel over %d %s devices.", mesh.devices.size, jax.default_backend())
  rng = jax.random.PRNGKey(config.seed)
  init_rng, train_rng = jax.random.split(rng)
  sample = jnp.zeros((1,) + train_data.images.shape[1:], jnp.float32)
  variables = jax.jit(functools.partial(model.init, train=False))(init_rng, sample)
  variables = flax.core.unfreeze(variables)
  variables = models.load_pretrained(model, config.model, variables)
  _log_params(model, variables)
  loss_weights = class_weights(train_data.labels, config.class_weight)
  logging.info("Class weights in the loss (NORMAL, PNEUMONIA): %s", loss_weights.tolist())

  phases = get_phases(config)
  predict_fn = predictor_lib.make_probs_fn(model)
  ckpt = checkpoints.Checkpointer(workdir)
  writer = _summary_writer(workdir)
  progress, resume_pending = Progress(), False
  resumed = _read_resume_point(ckpt)
  if resumed is not None:
    progress, resume_pending = resumed

  try:
    for phase_index in range(progress.phase, len(phases)):
      phase = phases[phase_index]
      if phase_index > progress.phase:  # A new phase starts from the best weights so far.
        progress.phase, progress.epoch, progress.epochs_without_improvement = phase_index, 0, 0
        progress.stopped_early = False
        best_vars, _ = checkpoints.restore_best(workdir)
        variables = jax.tree_util.tree_map(jnp.asarray, best_vars)
      if progress.stopped_early or progress.epoch >= phase.num_epochs:
        continue  # Resumed after this phase had ended.
      tx = make_optimizer(config, phase, variables["params"], model, steps_per_epoch)
      state = TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                                batch_stats=variables.get("batch_stats"))
      if resume_pending:  # Same phase, so the optimizer state has the saved structure.
        state_dict, _ = ckpt.restore_latest(flax.serialization.to_state_dict(state))
        state = flax.serialization.from_state_dict(state, state_dict)
        resume_pending = False
      state = sharding.replicate(state, mesh)
      mask = trainable_mask(state.params, phase, model)
      trainable = sum(p.size for p, m in zip(jax.tree_util.tree_leaves(state.params),
                                             jax.tree_util.tree_leaves(mask)) if m)
      logging.info("Phase %d/%d %r: %d epochs, lr %g, %s parameters trained, BatchNorm %s.",
                   phase_index + 1, len(phases), phase.name, phase.num_epochs,
                   phase.learning_rate, f"{trainable:,}",
                   "updating" if phase.train_batch_norm else "frozen (inference mode)")
      if phase.get("cached_features", False):
        # The frozen backbone's features are computed once; the head trains on them.
        train_step = jax.jit(make_head_step(model, loss_weights), donate_argnums=(0,))
        phase_train, phase_val = cached_features(model, state, phase, train_data, val_data,
                                                 config.eval_batch_size, progress)
        phase_predict = make_head_predict_fn(model)
      else:
        train_step = jax.jit(
            make_train_step(model, config.augment, loss_weights, phase.train_batch_norm,
                            None if all(jax.tree_util.tree_leaves(mask)) else mask),
            donate_argnums=(0,))
        phase_train, phase_val, phase_predict = train_data, val_data, predict_fn
      state = _run_phase(config, phase, state, train_step, train_rng, phase_predict,
                         phase_train, phase_val, ckpt, writer, progress, mesh)
      variables = _variables(state)
  finally:
    ckpt.close()
    writer.close()

  _, best_meta = checkpoints.restore_best(workdir)
  summary = {
      "model": config.model.name,
      "params": int(models.param_count(variables["params"])),
      "best_epoch": best_meta["global_epoch"],
      "val": best_meta["val_metrics"],
      "val_threshold": best_meta["threshold"],
      "train_seconds": round(progress.train_seconds, 1),
      "epochs_run": progress.global_epoch,
      "skipped_files": train_data.skipped,
  }
  workdir_lib.write_json(workdir_lib.path(workdir, workdir_lib.SUMMARY_FILE), summary)
  logging.info("Done. Best epoch %d: validation F1 %.4f (threshold 0.5), threshold %.3f "
               "maximises validation F1 (%.4f). Training time %.1fs.", summary["best_epoch"],
               summary["val"]["f1"], summary["val_threshold"], best_meta["val_f1_at_threshold"],
               progress.train_seconds)
  return summary


def _run_phase(config, phase, state, train_step, train_rng, predict_fn,
               train_data, val_data, ckpt, writer, progress: Progress, mesh) -> TrainState:
  steps_per_epoch = len(train_data) // config.batch_size
  while progress.epoch < phase.num_epochs:
    epoch_start = time.time()
    device_metrics = []
    for step_in_epoch, batch in enumerate(batches.train_batches(
        train_data, config.batch_size, config.seed, progress.global_epoch)):
      state, step_metrics = train_step(state, sharding.shard_batch(batch, mesh), train_rng)
      device_metrics.append(step_metrics)  # Stays on device until the next log step.
      if (step_in_epoch + 1) % config.log_every_steps == 0:
        recent = _fetch_mean(device_metrics[-config.log_every_steps:])
        _check_finite(recent, progress)
        logging.info("  epoch %d step %d/%d: loss %.4f, accuracy %.3f (%.1f img/s)",
                     progress.global_epoch + 1, step_in_epoch + 1, steps_per_epoch,
                     recent["loss"], recent["accuracy"],
                     (step_in_epoch + 1) * config.batch_size / (time.time() - epoch_start))
    train_metrics = _fetch_mean(device_metrics)
    _check_finite(train_metrics, progress)
    train_seconds = time.time() - epoch_start
    progress.train_seconds += train_seconds

    variables = _variables(state)
    val_metrics, val_probs = evaluate_split(predict_fn, variables, val_data,
                                            config.eval_batch_size, mesh)
    progress.epoch += 1
    progress.global_epoch += 1
    record = {"epoch": progress.global_epoch, "phase": phase.name,
              "train_loss": train_metrics["loss"], "train_accuracy": train_metrics["accuracy"],
              "val_loss": val_metrics["loss"], "val_f1": val_metrics["f1"],
              "val_accuracy": val_metrics["accuracy"], "val_auc": val_metrics["roc_auc"],
              "seconds": round(train_seconds, 1)}
    progress.history.append(record)
    _write_summaries(writer, record, progress.global_epoch)

    improved = val_metrics["f1"] > progress.best_f1
    if improved:
      progress.best_f1 = val_metrics["f1"]
      progress.best_global_epoch = progress.global_epoch
      progress.epochs_without_improvement = 0
      threshold = metrics_lib.f1_optimal_threshold(val_data.labels, val_probs)
      at_threshold = metrics_lib.binary_metrics(val_data.labels, val_probs, threshold)
      ckpt.save_best(progress.global_epoch, jax.device_get(variables), {
          "global_epoch": progress.global_epoch, "phase": phase.name,
          "val_metrics": val_metrics, "threshold": threshold,
          "val_f1_at_threshold": at_threshold["f1"]})
    else:
      progress.epochs_without_improvement += 1
    stop = progress.epochs_without_improvement >= config.early_stopping_patience
    progress.stopped_early = stop and progress.epoch < phase.num_epochs
    ckpt.save_latest(progress.global_epoch, flax.serialization.to_state_dict(state),
                     _progress_meta(progress))
    logging.info("Epoch %d (%s %d/%d): train loss %.4f acc %.3f | val loss %.4f F1 %.4f "
                 "acc %.3f AUC %.4f%s | %.1fs", progress.global_epoch, phase.name,
                 progress.epoch, phase.num_epochs, train_metrics["loss"],
                 train_metrics["accuracy"], val_metrics["loss"], val_metrics["f1"],
                 val_metrics["accuracy"], val_metrics["roc_auc"] or float("nan"),
                 " (best)" if improved else "", train_seconds)
    workdir_lib.write_json(workdir_lib.path(ckpt.workdir, workdir_lib.HISTORY_FILE),
                           progress.history)
    if stop:
      logging.info("Early stopping: validation F1 has not improved for %d epochs (best %.4f "
                   "at epoch %d).", progress.epochs_without_improvement, progress.best_f1,
                   progress.best_global_epoch)
      break
  return state


def _fetch_mean(device_metrics: list[dict]) -> dict:
  stacked = jax.device_get(device_metrics)
  return {k: float(np.mean([m[k] for m in stacked])) for k in stacked[0]}


def _check_finite(metrics: dict, progress: Progress) -> None:
  if not np.isfinite(metrics["loss"]):
    raise NonFiniteLossError(
        f"Training loss became {metrics['loss']} in epoch {progress.global_epoch + 1}. "
        "Stopping; the last good checkpoint (end of epoch "
        f"{progress.global_epoch}) is kept. Lower config.learning_rate or check the data.")


def _progress_meta(progress: Progress) -> dict:
  return dataclasses.asdict(progress)


def _summary_writer(workdir: str):
  from flax.metrics import tensorboard  # pylint: disable=g-import-not-at-top
  return tensorboard.SummaryWriter(workdir_lib.path(workdir, workdir_lib.TENSORBOARD_DIR))


def _write_summaries(writer, record: dict, step: int) -> None:
  if jax.process_index() != 0:
    return
  for key, value in record.items():
    if isinstance(value, (int, float)) and value is not None and key != "epoch":
      writer.scalar(key, value, step)
  writer.flush()


def _read_resume_point(ckpt):
  """(progress, True) from the latest checkpoint's bookkeeping, or None for a fresh start."""
  meta = ckpt.latest_meta()
  if meta is None:
    return None
  progress = Progress(**meta)
  logging.info("Resuming from %s: phase %d epoch %d (global epoch %d), best validation F1 "
               "%.4f at epoch %d.", ckpt.workdir, progress.phase + 1, progress.epoch,
               progress.global_epoch, progress.best_f1, progress.best_global_epoch)
  return progress, True


def _check_config_matches(config, workdir: str) -> None:
  """Warns when resuming a workdir that was trained with a different config."""
  path = workdir_lib.path(workdir, workdir_lib.CONFIG_FILE)
  if not os.path.exists(path):
    return
  old = workdir_lib.load_config(workdir).to_dict()
  new = json.loads(config.to_json_best_effort())
  if old != new:
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    logging.warning("%s was trained with a different config (differs in %s); resuming "
                    "from its checkpoint anyway. Use a fresh --workdir to start over.",
                    workdir, diff)


def train_sklearn(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Fits a scikit-learn model kind (PCA + logistic regression): C chosen by validation F1."""
  os.makedirs(workdir, exist_ok=True)
  workdir_lib.save_config(workdir, config)
  train_data, val_data = data_lib.load_train_val(config.data)
  x_train, x_val = pca_logreg.flatten(train_data.images), pca_logreg.flatten(val_data.images)
  n_components = pca_logreg.n_components(config.model, *x_train.shape)
  start = time.time()
  best = None
  for c in config.model.c_grid:
    pipeline = pca_logreg.build(config.model, c, config.seed, n_components)
    pipeline.fit(x_train, train_data.labels)
    probs = pipeline.predict_proba(x_val)[:, 1]
    val = metrics_lib.binary_metrics(val_data.labels, probs, 0.5)
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
  summary = {"model": config.model.name, "params": params, "best_epoch": None, "val": val,
             "val_threshold": threshold, "train_seconds": round(seconds, 1),
             "skipped_files": train_data.skipped, "C": c}
  workdir_lib.write_json(workdir_lib.path(workdir, workdir_lib.SUMMARY_FILE), summary)
  logging.info("Done. C=%g: validation F1 %.4f (threshold 0.5); PCA keeps %.1f%% of the "
               "variance; %s parameters; %.1fs.", c, val["f1"], 100 * explained,
               f"{params:,}", seconds)
  return summary
