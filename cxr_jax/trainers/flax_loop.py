"""The training loop of a Flax network: phases, epochs, selection, early stopping, resume.

    trained = train(kind, config, workdir, datasets)   -> models.Trained

The loop runs one or more phases (config.phases; the small CNNs have one, the MobileNetV2 a
frozen-backbone phase then a fine-tuning phase). Each phase has its own optimizer and early
stopping; a later phase starts from the best weights so far. The best epoch is chosen by
`config.selection_metric` on the patient-grouped validation split. Every epoch ends in one
atomic resume point (`checkpoints`): re-running the same command on a stopped workdir
continues to the same result as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cxr_jax import checkpoints
from cxr_jax import data as data_lib
from cxr_jax import models
from cxr_jax import sharding
from cxr_jax import workdir as workdir_lib
from cxr_jax.data import batches
from cxr_jax.inference import predictors as predictor_lib
from cxr_jax.metrics import classification as metrics_lib
from cxr_jax.runtime import faults
from cxr_jax.runtime import progress as progress_lib
from cxr_jax.runtime import summaries
from cxr_jax.trainers import phases
from cxr_jax.trainers import train_step as steps

# Per-step lines go to the workdir's log file; the console shows one line per epoch.
STEP_LOG = logging.getLogger("cxr_jax.steps")


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
    return self.config.ema_decay > 0


def _fetch_mean(device_metrics: list[dict]) -> dict:
  stacked = jax.device_get(device_metrics)
  return {k: float(np.mean([m[k] for m in stacked])) for k in stacked[0]}


def _check_finite(train_metrics: dict, run: Run) -> None:
  if not np.isfinite(train_metrics["loss"]):
    raise phases.NonFiniteLossError(f"Training loss became {train_metrics['loss']}")


def _nonfinite_message(error: phases.NonFiniteLossError, run: Run) -> str:
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
  val_metrics, val_probs = phases.evaluate_split(predict_fn, variables, val_data,
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

  metric = config.selection_metric
  value = phases.selection_value(metric, val_metrics)
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
  if phase.cached_features:
    # The frozen backbone's features are computed once; the head trains on them.
    train_f, val_f, seconds = phases.cached_features(run.model, steps.variables_of(state),
                                              run.train_data, run.val_data,
                                              config.eval_batch_size, run.mesh)
    run.progress.train_seconds += seconds
    step = jax.jit(steps.make_head_step(run.model, mask), donate_argnums=(0,))
    return step, train_f, val_f, phases.make_head_predict_fn(run.model)
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
               index + 1, len(phases.get_phases(config)), phase.name, phase.num_epochs,
               phase.learning_rate, f"{n_trained:,}",
               "updating" if phase.train_batch_norm else "frozen (inference mode)")
  state = sharding.replicate(state, run.mesh)
  train_step, train_set, val_set, predict_fn = _phase_programs(run, phase, state, mask)
  while not progress.phase_done(phase):
    state, train_metrics, seconds = _train_epoch(run, phase, state, train_step, train_set)
    _end_epoch(run, phase, state, predict_fn, val_set, train_metrics, seconds)


# ---------------------------------------------------------------------------
# The whole run.

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
  all_phases = phases.get_phases(run.config)
  resume_state = _resume(run)
  progress = run.progress
  for index in range(progress.phase, len(all_phases)):
    if index == progress.phase and progress.phase_done(all_phases[index]):
      continue  # Resumed after this phase had ended.
    if index != progress.phase:  # A new phase starts from the best weights so far.
      progress.start_phase(index)
      resume_state = None
      if run.best_variables is not None:
        variables = jax.tree_util.tree_map(jnp.asarray, run.best_variables)
      faults.point("phase_start")
    _run_phase(run, index, all_phases[index], variables, resume_state)
    resume_state = None


def _summary(run: Run) -> dict:
  record = run.best_record
  return {
      "model": run.config.model.name, "name": run.config.name,
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


def train(kind: models.FlaxKind, config: ml_collections.ConfigDict, workdir: str,
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
  variables = phases.initial_variables(model, config, train_data.images)
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
  except phases.NonFiniteLossError as e:
    raise phases.NonFiniteLossError(_nonfinite_message(e, run)) from None
  except KeyboardInterrupt:
    logging.warning("Interrupted during epoch %d; %s holds the resume point of epoch %d.",
                    run.progress.global_epoch + 1, workdir, run.progress.global_epoch)
    raise
  finally:
    run.ckpt.close()
    if run.writer is not None:
      run.writer.close()
  return _trained(run)
