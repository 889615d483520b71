"""Training of every model kind, one end of every run, the Flax loop, ensembles.

    train_and_evaluate(config, workdir) -> summary dict   (any kind: config.model.name)
    create_ensemble(workdir, members) -> summary dict     (cxr_jax.tools.ensemble)

Each kind trains as its `models.ModelKind.train` says; this module provides the built-in
kinds' trainers (the Flax loop, the scikit-learn fit, an ensemble's threshold), and
`finish_run` then ends every run alike: the calibration and OOD detector fitted on
validation, train_summary.json and the model card.

The loop runs one or more phases (config.phases; the small CNNs have one, the
MobileNetV2 a frozen-backbone phase then a fine-tuning phase). Each phase has its
own optimizer and early stopping; a later phase starts from the best weights so
far. The best epoch is chosen by `config.selection_metric` on the patient-grouped
validation split. Every epoch ends in one atomic resume point (`checkpoints`):
re-running the same command on a stopped workdir continues to the same result as an
uninterrupted run. A workdir records its config; another config is refused unless
`allow_config_change` (then the change is recorded in config_history.json).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import time

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cxr_jax import checkpoints
from cxr_jax import config_checks
from cxr_jax import data as data_lib
from cxr_jax.runtime import faults
from cxr_jax import model_card
from cxr_jax import models
from cxr_jax.runtime import progress as progress_lib
from cxr_jax import sharding
from cxr_jax.runtime import summaries
from cxr_jax import train_step as steps
from cxr_jax import workdir as workdir_lib
from cxr_jax.data import augment
from cxr_jax.data import batches
from cxr_jax.evaluation import fit
from cxr_jax.evaluation import inference
from cxr_jax.evaluation import metrics as metrics_lib
from cxr_jax.evaluation import predictor as predictor_lib
from cxr_jax.models import batch_norm
from cxr_jax.models import kinds
from cxr_jax.models import pca_logreg

CONFIG_HISTORY_FILE = "config_history.json"
# Per-step lines go to the workdir's log file; the console shows one line per epoch.
STEP_LOG = logging.getLogger("cxr_jax.steps")
# Settings that change no number of the run: a resumed workdir may differ in them.
OPERATIONAL_KEYS = ("log_every_steps", "eval_batch_size")


class NonFiniteLossError(FloatingPointError):
  """The training loss or the validation predictions became NaN or inf."""


class ConfigChangedError(ValueError):
  """The workdir was trained with another config."""


def get_phases(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
  """The config's training phases; a single 'train' phase of all parameters by default."""
  if config.get("phases"):
    return [ml_collections.ConfigDict(p) for p in config.phases]
  return [ml_collections.ConfigDict(dict(
      name="train", num_epochs=config.num_epochs, learning_rate=config.learning_rate,
      trainable="all", train_batch_norm=True))]


# ---------------------------------------------------------------------------
# The workdir's config.


def _flatten(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(_flatten(value, name + "."))
    else:
      out[name] = value
  return out


def config_differences(old: dict, new: dict) -> dict[str, tuple]:
  """{dotted key: (old, new)} of every value that differs (operational keys left out)."""
  a, b = _flatten(old), _flatten(new)
  return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
          if a.get(k) != b.get(k) and k not in OPERATIONAL_KEYS}


def check_config_matches(config, workdir: str, allow_change: bool) -> None:
  """Refuses (ConfigChangedError naming the keys) to resume a workdir trained otherwise."""
  path = workdir_lib.path(workdir, workdir_lib.CONFIG_FILE)
  if not os.path.exists(path):
    return
  old = workdir_lib.load_config(workdir).to_dict()
  new = json.loads(config.to_json_best_effort())
  diff = config_differences(old, new)
  if not diff:
    return
  shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(diff.items())[:8])
  more = f" and {len(diff) - 8} more" if len(diff) > 8 else ""
  if not allow_change:
    raise ConfigChangedError(
        f"{workdir} was trained with another config ({shown}{more}). Use a fresh --workdir, "
        "or pass --allow_config_change to continue this one with the new settings.")
  logging.warning("Continuing %s with a changed config: %s%s.", workdir, shown, more)
  history_path = workdir_lib.path(workdir, CONFIG_HISTORY_FILE)
  history = workdir_lib.read_json(history_path, [])
  history.append({"time": time.strftime("%Y-%m-%d %H:%M:%S"), "previous": old,
                  "changed": {k: {"from": a, "to": b} for k, (a, b) in diff.items()}})
  workdir_lib.write_json(history_path, history)


# ---------------------------------------------------------------------------
# Evaluation during training.


def validation_metrics(labels, probs) -> dict:
  """binary_metrics at 0.5, with its log loss also as "loss" (the summaries' name for it)."""
  m = metrics_lib.binary_metrics(labels, probs, threshold=0.5)
  m["loss"] = m["log_loss"]
  return m


def evaluate_split(predict_fn, variables, data, batch_size: int, mesh=None
                   ) -> tuple[dict, np.ndarray]:
  probs = inference.predict_batched(predict_fn, variables, data.images, batch_size, mesh)
  if not np.all(np.isfinite(probs)):
    raise NonFiniteLossError("Validation predictions became NaN or inf")
  return validation_metrics(data.labels, probs), probs


def selection_value(metric: str, val_metrics: dict) -> float:
  """The validation number the best epoch maximises (log loss is negated)."""
  if metric == "loss":
    return -val_metrics["loss"]
  if metric == "auc":
    return val_metrics["roc_auc"] if val_metrics["roc_auc"] is not None else -1.0
  return val_metrics["f1"]


def make_features_fn(model):
  """features_fn(variables, uint8 images) -> pooled backbone features, jitted."""
  return jax.jit(lambda v, images: model.apply(v, augment.to_float(images),
                                               method=model.features))


def make_head_predict_fn(model):
  @jax.jit
  def predict(variables, features):
    return jax.nn.sigmoid(model.apply({"params": variables["params"]}, features,
                                      method=model.classify))
  return predict


def cached_features(model, variables, train_data, val_data, batch_size: int, mesh=None
                    ) -> tuple[data_lib.DecodedSet, data_lib.DecodedSet, float]:
  """Train/val sets whose "images" are the frozen backbone's pooled features, and seconds.

  Valid only while nothing below the head trains and BatchNorm is frozen; the training
  images are then seen without augmentation (the price of computing the backbone once
  instead of every epoch).
  """
  features_fn = make_features_fn(model)
  start = time.time()
  out = [dataclasses.replace(d, images=inference.predict_batched(
      features_fn, variables, d.images, batch_size, mesh, desc=f"caching {name} features"))
         for d, name in ((train_data, "train"), (val_data, "validation"))]
  seconds = time.time() - start
  logging.info("Cached backbone features of %d train + %d validation images (%d-d) in %.1fs; "
               "the head trains on them without augmentation.", len(train_data),
               len(val_data), out[0].images.shape[1], seconds)
  return out[0], out[1], seconds


# ---------------------------------------------------------------------------
# Loop bookkeeping, saved with every resume point.


@dataclasses.dataclass
class Progress:
  phase: int = 0
  epoch: int = 0  # Epochs completed within `phase`.
  global_epoch: int = 0
  stopped_early: bool = False  # Early stopping ended `phase`.
  best_value: float | None = None  # Over every phase: picks the saved model.
  best_global_epoch: int = -1
  # Early stopping judges a phase by its own best: a fine-tuning phase starts below the
  # head it continues (BatchNorm switches to batch statistics) and needs epochs to pass it.
  phase_best_value: float | None = None
  epochs_without_improvement: int = 0
  train_seconds: float = 0.0
  history: list = dataclasses.field(default_factory=list)

  def start_phase(self, index: int) -> None:
    self.phase, self.epoch, self.stopped_early, self.epochs_without_improvement = index, 0, False, 0
    self.phase_best_value = None

  def phase_done(self, phase) -> bool:
    """Whether `phase` (the running one) has ended: early stopping or its last epoch."""
    return self.stopped_early or self.epoch >= phase.num_epochs


@dataclasses.dataclass
class Run:
  """What every epoch of a training run needs (one per train_and_evaluate call)."""
  config: ml_collections.ConfigDict
  workdir: str
  model: object
  train_data: data_lib.DecodedSet
  val_data: data_lib.DecodedSet
  loss_weights: np.ndarray
  mesh: object
  ckpt: checkpoints.RunCheckpoints
  writer: object
  rng: jax.Array
  progress: Progress
  best_variables: dict | None = None
  best_record: dict | None = None

  @property
  def use_ema(self) -> bool:
    return self.config.get("ema_decay", 0.0) > 0


def _fetch_mean(device_metrics: list[dict]) -> dict:
  stacked = jax.device_get(device_metrics)
  return {k: float(np.mean([m[k] for m in stacked])) for k in stacked[0]}


def _check_finite(train_metrics: dict, run: Run) -> None:
  if not np.isfinite(train_metrics["loss"]):
    raise NonFiniteLossError(f"Training loss became {train_metrics['loss']}")


def _nonfinite_message(error: NonFiniteLossError, run: Run) -> str:
  kept = (f"the resume point of epoch {run.progress.global_epoch} is kept"
          if run.progress.global_epoch else "no epoch had finished, so nothing was kept")
  return (f"{error} in epoch {run.progress.global_epoch + 1} ({run.config.name or 'run'}); "
          f"stopping: {kept}. Lower the learning rate or check the data.")


def _summary_writer(workdir: str) -> summaries.ScalarWriter | None:
  if jax.process_index() != 0:  # One set of files, however many processes.
    return None
  return summaries.ScalarWriter(workdir_lib.path(workdir, workdir_lib.TENSORBOARD_DIR))


def _write_summaries(writer, record: dict, step: int) -> None:
  if writer is None or jax.process_index() != 0:
    return
  for key, value in record.items():
    if isinstance(value, (int, float)) and value is not None and key != "epoch":
      writer.scalar(key, value, step)
  writer.flush()


# ---------------------------------------------------------------------------
# One epoch.


def _train_epoch(run: Run, phase, state, train_step, train_data) -> tuple[object, dict, float]:
  config, progress = run.config, run.progress
  steps_per_epoch = len(train_data) // config.batch_size
  epoch_start = time.time()
  device_metrics = []
  epoch_batches = progress_lib.bar(
      batches.train_batches(train_data, config.batch_size, config.seed, progress.global_epoch),
      steps_per_epoch, f"epoch {progress.global_epoch + 1} ({phase.name})", unit="step")
  for step_in_epoch, batch in enumerate(epoch_batches):
    state, step_metrics = train_step(state, sharding.shard_batch(batch, run.mesh), run.rng)
    device_metrics.append(step_metrics)  # Stays on device until the next log step.
    faults.point("step")
    if (step_in_epoch + 1) % config.log_every_steps == 0:
      recent = _fetch_mean(device_metrics[-config.log_every_steps:])
      _check_finite(recent, run)
      STEP_LOG.info("  epoch %d step %d/%d: loss %.4f, accuracy %.3f (%.1f img/s)",
                   progress.global_epoch + 1, step_in_epoch + 1, steps_per_epoch,
                   recent["loss"], recent["accuracy"],
                   (step_in_epoch + 1) * config.batch_size / (time.time() - epoch_start))
  train_metrics = _fetch_mean(device_metrics)
  _check_finite(train_metrics, run)
  return state, train_metrics, time.time() - epoch_start


def _end_epoch(run: Run, phase, state, predict_fn, val_data, train_metrics: dict,
               seconds: float) -> None:
  """Validation, best model, early stopping, history and the resume point."""
  config, progress = run.config, run.progress
  variables = steps.variables_of(state, ema=run.use_ema)
  val_metrics, val_probs = evaluate_split(predict_fn, variables, val_data,
                                          config.eval_batch_size, run.mesh)
  progress.train_seconds += seconds
  progress.epoch += 1
  progress.global_epoch += 1
  record = {"epoch": progress.global_epoch, "phase": phase.name,
            "train_loss": train_metrics["loss"], "train_accuracy": train_metrics["accuracy"],
            "val_loss": val_metrics["loss"], "val_f1": val_metrics["f1"],
            "val_accuracy": val_metrics["accuracy"], "val_auc": val_metrics["roc_auc"],
            "seconds": round(seconds, 1)}
  progress.history.append(record)
  _write_summaries(run.writer, record, progress.global_epoch)

  metric = config.get("selection_metric", "f1")
  value = selection_value(metric, val_metrics)
  if progress.phase_best_value is None or value > progress.phase_best_value:
    progress.phase_best_value = value
    progress.epochs_without_improvement = 0
  else:
    progress.epochs_without_improvement += 1
  improved = progress.best_value is None or value > progress.best_value
  if improved:
    progress.best_value, progress.best_global_epoch = value, progress.global_epoch
    threshold = metrics_lib.f1_optimal_threshold(run.val_data.labels, val_probs)
    run.best_variables = sharding.to_host(variables)
    run.best_record = {
        "global_epoch": progress.global_epoch, "phase": phase.name,
        "selection_metric": metric, "val_metrics": val_metrics, "threshold": threshold,
        "val_f1_at_threshold": metrics_lib.binary_metrics(run.val_data.labels, val_probs,
                                                          threshold)["f1"]}
  stop = progress.epochs_without_improvement >= config.early_stopping_patience
  progress.stopped_early = stop and progress.epoch < phase.num_epochs
  faults.point("before_checkpoint")
  run.ckpt.save(progress.global_epoch, sharding.to_host(flax.serialization.to_state_dict(state)),
                run.best_variables, {"progress": dataclasses.asdict(progress),
                                     "best": run.best_record})
  faults.point("after_checkpoint")
  workdir_lib.write_json(workdir_lib.path(run.workdir, workdir_lib.HISTORY_FILE),
                         progress.history)
  logging.info("Epoch %d (%s %d/%d): train loss %.4f acc %.3f | val loss %.4f F1 %.4f "
               "acc %.3f AUC %.4f%s | %.1fs", progress.global_epoch, phase.name,
               progress.epoch, phase.num_epochs, train_metrics["loss"],
               train_metrics["accuracy"], val_metrics["loss"], val_metrics["f1"],
               val_metrics["accuracy"], val_metrics["roc_auc"] or float("nan"),
               f" (best by validation {metric})" if improved else "", seconds)
  if progress.stopped_early:
    logging.info("Early stopping: validation %s has not improved on this phase's best for %d "
                 "epochs (best overall at epoch %d).", metric,
                 progress.epochs_without_improvement, progress.best_global_epoch)


# ---------------------------------------------------------------------------
# One phase.


def _phase_programs(run: Run, phase, state, mask):
  """(train_step, train set, val set, predict_fn) of a phase: cached features or images."""
  config = run.config
  if phase.get("cached_features", False):
    # The frozen backbone's features are computed once; the head trains on them.
    train_f, val_f, seconds = cached_features(run.model, steps.variables_of(state),
                                              run.train_data, run.val_data,
                                              config.eval_batch_size, run.mesh)
    run.progress.train_seconds += seconds
    step = jax.jit(steps.make_head_step(run.model, mask), donate_argnums=(0,))
    return step, train_f, val_f, make_head_predict_fn(run.model)
  step = steps.jit_phase_step(run.model, mask, phase, config)
  return step, run.train_data, run.val_data, predictor_lib.make_probs_fn(run.model)


def _run_phase(run: Run, index: int, phase, variables: dict, resume_state: dict | None):
  config, progress = run.config, run.progress
  steps_per_epoch = len(run.train_data) // config.batch_size
  hparams = steps.phase_hparams(config, phase, steps_per_epoch, run.loss_weights)
  state = steps.create_state(run.model, variables, hparams)
  if resume_state is not None:  # Same phase: the optimizer state has the saved structure.
    state = flax.serialization.from_state_dict(state, resume_state)
  mask = steps.trainable_mask(state.params, phase, run.model)
  n_trained = sum(p.size for p, m in zip(jax.tree_util.tree_leaves(state.params),
                                         jax.tree_util.tree_leaves(mask)) if m) if mask \
      else models.param_count(state.params)
  logging.info("Phase %d/%d %r: %d epochs, lr %g, %s parameters trained, BatchNorm %s.",
               index + 1, len(get_phases(config)), phase.name, phase.num_epochs,
               phase.learning_rate, f"{n_trained:,}",
               "updating" if phase.train_batch_norm else "frozen (inference mode)")
  state = sharding.replicate(state, run.mesh)
  train_step, train_set, val_set, predict_fn = _phase_programs(run, phase, state, mask)
  while not progress.phase_done(phase):
    state, train_metrics, seconds = _train_epoch(run, phase, state, train_step, train_set)
    _end_epoch(run, phase, state, predict_fn, val_set, train_metrics, seconds)


# ---------------------------------------------------------------------------
# The whole run.


# Training images whose BatchNorm inputs `config.model.refit_batch_norm` measures.
REFIT_IMAGES = 512


def _initial_variables(model, config, train_images: np.ndarray) -> dict:
  rng = jax.random.PRNGKey(config.seed)
  init_rng, _ = jax.random.split(rng)
  sample = jnp.zeros((1,) + train_images.shape[1:], jnp.float32)
  variables = jax.jit(lambda r, x: model.init(r, x, train=False))(init_rng, sample)
  variables = flax.core.unfreeze(variables)
  variables.pop("intermediates", None)
  variables = models.load_pretrained(model, config.model, variables)
  if config.model.get("refit_batch_norm"):
    every = max(1, len(train_images) // REFIT_IMAGES)
    images = augment.to_float(train_images[::every][:REFIT_IMAGES])
    variables = batch_norm.refit(model, variables, np.asarray(images), config.eval_batch_size)
    logging.info("BatchNorm statistics measured on %d training images (function kept).",
                 len(images))
  return variables


def _resume(run: Run) -> dict | None:
  """Loads the newest resume point into run; returns the running phase's state dict."""
  restored = run.ckpt.restore_latest()
  if restored is None:
    return None
  state_dict, best_variables, meta = restored
  run.progress = Progress(**meta["progress"])
  run.best_variables, run.best_record = best_variables, meta["best"]
  p = run.progress
  logging.info("Resuming %s after epoch %d (phase %d, epoch %d of it).", run.workdir,
               p.global_epoch, p.phase + 1, p.epoch)
  return state_dict


def _train_phases(run: Run, variables: dict) -> None:
  phases = get_phases(run.config)
  resume_state = _resume(run)
  progress = run.progress
  for index in range(progress.phase, len(phases)):
    if index == progress.phase and progress.phase_done(phases[index]):
      continue  # Resumed after this phase had ended.
    if index != progress.phase:  # A new phase starts from the best weights so far.
      progress.start_phase(index)
      resume_state = None
      if run.best_variables is not None:
        variables = jax.tree_util.tree_map(jnp.asarray, run.best_variables)
      faults.point("phase_start")
    _run_phase(run, index, phases[index], variables, resume_state)
    resume_state = None


def _summary(run: Run) -> dict:
  record = run.best_record
  return {
      "model": run.config.model.name, "name": run.config.get("name", ""),
      "params": int(models.param_count(run.best_variables["params"])),
      "best_epoch": record["global_epoch"], "selection_metric": record["selection_metric"],
      "val": record["val_metrics"], "val_threshold": record["threshold"],
      "train_seconds": round(run.progress.train_seconds, 1),
      "epochs_run": run.progress.global_epoch, "skipped_files": run.train_data.skipped,
  }


def _trained(run: Run) -> models.Trained:
  # Again: a stop between the last resume point and its history write loses nothing.
  workdir_lib.write_json(workdir_lib.path(run.workdir, workdir_lib.HISTORY_FILE),
                         run.progress.history)
  record = run.best_record
  done = ("Done. Best epoch %d by validation %s: validation loss %.4f, F1 %.4f (threshold "
          "0.5), AUC %.4f; threshold %.3f maximises validation F1 (%.4f). Training time "
          "%.1fs." % (record["global_epoch"], record["selection_metric"],
                      record["val_metrics"]["loss"], record["val_metrics"]["f1"],
                      record["val_metrics"]["roc_auc"] or float("nan"), record["threshold"],
                      record["val_f1_at_threshold"], run.progress.train_seconds))
  return models.Trained(_summary(run), run.val_data, run.train_data, done)


def finish_run(workdir: str, trained: models.Trained) -> dict:
  """The end of every run, whatever its kind; returns the summary.

  The calibration and OOD detector are fitted on validation once, beside the model
  (predict and evaluate reuse them), then train_summary.json and the model card written.
  """
  predictor = predictor_lib.load_predictor(workdir)
  fit.load_or_fit(predictor, validation=trained.validation, train=trained.train)
  workdir_lib.write_json(workdir_lib.path(workdir, workdir_lib.SUMMARY_FILE), trained.summary)
  model_card.write(workdir)
  if trained.done:
    logging.info("%s", trained.done)
  return trained.summary


def prepare_workdir(config, workdir: str, allow_config_change: bool) -> None:
  """Checks the workdir (its lock held) before any data is read, then records the config."""
  check_config_matches(config, workdir, allow_config_change)
  workdir_lib.save_config(workdir, config)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       allow_config_change: bool = False, datasets=None,
                       command: str | None = None, on_start=None) -> dict:
  """Trains config.model on the patient-grouped train split, selects on validation.

  Any kind (config.model.name): its `train`, then `finish_run`.
  datasets: (train, validation) already decoded for config.data (a sweep decodes once).
  command: how the workdir's lock names this run to a refused second writer.
  on_start(): called once the config and the workdir are checked, before any data is read.
  Returns a summary dict (also written to workdir/train_summary.json).
  """
  config_checks.check(config)  # Before the workdir exists: a refused config creates nothing.
  kind = models.get(config.model.name)
  with workdir_lib.writer_lock(workdir, command):
    prepare_workdir(config, workdir, allow_config_change)
    if on_start is not None:
      on_start()
    return finish_run(workdir, kind.train(config, workdir, datasets))


def _train_flax(kind: models.FlaxKind, config: ml_collections.ConfigDict, workdir: str,
                datasets=None) -> models.Trained:
  """The Flax loop (the phases above), from the newest resume point if there is one."""
  train_data, val_data = datasets or data_lib.load_train_val(config.data)
  if len(train_data) < config.batch_size:
    raise ValueError(f"Training set has {len(train_data)} images, fewer than "
                     f"config.batch_size={config.batch_size}.")
  model = kind.create_module(config.model)
  mesh = sharding.data_mesh()
  if mesh.devices.size > 1:
    logging.info("Data parallel over %d %s devices.", mesh.devices.size, jax.default_backend())
  variables = _initial_variables(model, config, train_data.images)
  n = models.param_count(variables["params"])
  logging.info("Model %s: %s parameters.", type(model).__name__, f"{n:,}")
  loss_weights = steps.class_weights(train_data.labels, config.class_weight)
  logging.info("Class weights in the loss (NORMAL, PNEUMONIA): %s", loss_weights.tolist())
  run = Run(config, workdir, model, train_data, val_data, loss_weights, mesh,
            checkpoints.RunCheckpoints(workdir), _summary_writer(workdir),
            sharding.replicate(jax.random.split(jax.random.PRNGKey(config.seed))[1], mesh),
            Progress())
  try:
    _train_phases(run, variables)
  except NonFiniteLossError as e:
    raise NonFiniteLossError(_nonfinite_message(e, run)) from None
  except KeyboardInterrupt:
    logging.warning("Interrupted during epoch %d; %s holds the resume point of epoch %d.",
                    run.progress.global_epoch + 1, workdir, run.progress.global_epoch)
    raise
  finally:
    run.ckpt.close()
    if run.writer is not None:
      run.writer.close()
  return _trained(run)


def _train_sklearn(kind: models.SklearnKind, config: ml_collections.ConfigDict, workdir: str,
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
    val = validation_metrics(val_data.labels, probs)
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
  summary = {"model": config.model.name, "name": config.get("name", ""), "params": params,
             "best_epoch": None, "val": val, "val_threshold": threshold,
             "train_seconds": round(seconds, 1), "skipped_files": train_data.skipped, "C": c}
  done = (f"Done. C={c:g}: validation F1 {val['f1']:.4f} (threshold 0.5); PCA keeps "
          f"{100 * explained:.1f}% of the variance; {params:,} parameters; {seconds:.1f}s.")
  return models.Trained(summary, val_data, train_data, done)


# ---------------------------------------------------------------------------
# Ensembles: a kind whose training is the choice of its members.


def _member_path(workdir: str, member: str) -> str:
  """`member` relative to the ensemble's workdir (absolute if that climbs far)."""
  rel = os.path.relpath(os.path.abspath(member), os.path.abspath(workdir))
  return rel if not rel.startswith(os.pardir + os.sep + os.pardir + os.sep + os.pardir) \
      else os.path.abspath(member)


def check_ensemble_members(workdir: str, members: list[str]) -> None:
  """Refuses, before anything is written, members that are not finished or the output itself."""
  if len(members) < 2:
    raise ValueError("An ensemble needs at least two member workdirs.")
  for member in members:
    if os.path.realpath(member) == os.path.realpath(workdir):
      raise ValueError(f"--workdir={workdir} is also a member; an ensemble needs a workdir "
                       "of its own.")
    trained, reason = workdir_lib.status(member)
    if not trained:
      raise ValueError(f"Ensemble member {member!r} is not a finished workdir ({reason}).")
  if os.path.exists(workdir_lib.path(workdir, workdir_lib.CONFIG_FILE)):
    kind = workdir_lib.load_config(workdir).model.get("name")
    if kind != models.ensemble_kind().name:  # Its config and model card would be replaced.
      raise ValueError(f"{workdir} is a training workdir of {kind}; an ensemble needs a "
                       "workdir of its own.")


def ensemble_config(workdir: str, members: list[str], name: str | None = None
                    ) -> ml_collections.ConfigDict:
  """The first member's data and evaluation settings; config.model names the members."""
  config = copy.deepcopy(workdir_lib.load_config(members[0]))
  config.name = name or os.path.basename(os.path.normpath(workdir))
  config.description = f"ensemble of {len(members)}: " + ", ".join(
      workdir_lib.load_config(m).get("name", m) for m in members)
  config.model = models.ensemble_kind().model_config([_member_path(workdir, m) for m in members])
  return config


def create_ensemble(workdir: str, members: list[str], name: str | None = None) -> dict:
  """Writes an ensemble workdir of trained `members`; returns its summary.

  Made again with other members, the workdir takes them (recorded in config_history.json).
  """
  check_ensemble_members(workdir, members)
  return train_and_evaluate(ensemble_config(workdir, members, name), workdir,
                            allow_config_change=True)


def _train_ensemble(kind: models.EnsembleKind, config: ml_collections.ConfigDict, workdir: str,
                    datasets=None) -> models.Trained:
  """The members' averaged probabilities: their validation-F1 threshold and metrics."""
  check_ensemble_members(workdir, kind.member_dirs(workdir, config.model.members))
  record = {"members": list(config.model.members), "threshold": 0.5}
  record_path = workdir_lib.path(workdir, kinds.ENSEMBLE_FILE)
  workdir_lib.write_json(record_path, record)
  train_data, val = datasets or (None, data_lib.load(config.data, "validation"))
  probs = predictor_lib.load_predictor(workdir).probs(val.images)
  record["threshold"] = metrics_lib.f1_optimal_threshold(val.labels, probs)
  record["val_metrics"] = validation_metrics(val.labels, probs)
  workdir_lib.write_json(record_path, record)
  summary = {"model": config.model.name, "name": config.name, "members": record["members"],
             "params": None, "best_epoch": None, "val": record["val_metrics"],
             "val_threshold": record["threshold"], "train_seconds": None}
  return models.Trained(summary, val, train_data)


# The built-in kinds' trainers (models/ may not import this module: see models/kinds.py).
models.FlaxKind.provide(train=_train_flax)
models.SklearnKind.provide(train=_train_sklearn)
models.EnsembleKind.provide(train=_train_ensemble)
