"""One source for every default: the config. A key missing from it is an error naming the key,
never a default restated in the library; an old workdir's config gets the value it ran with."""

import copy
import json

import pytest

from configs import base, cnn_baseline, cnn_v2, cnn_v3, mobilenet, pca_logreg
from cxr_jax import config_checks
from cxr_jax import workdir as workdir_lib

# Keys of configs/base.py that the scikit-learn kind never reads (training by gradient).
NOT_READ_BY_PCA = ("augment.", "batch_size", "early_stopping_patience", "ema_decay",
                   "eval_batch_size", "label_smoothing", "learning_rate", "log_every_steps",
                   "lr_end_factor", "mixup_", "model.ops", "model.refit_batch_norm",
                   "num_epochs", "warmup_epochs", "weight_decay")


def _keys(tree: dict, prefix: str = ""):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _keys(value, f"{prefix}{key}.")
    elif key != "phases":  # Optional: without it, one phase of every parameter.
      yield prefix + key


def _without(config, key: str):
  config = copy.deepcopy(config)
  *parents, leaf = key.split(".")
  node = config
  for parent in parents:
    node = node[parent]
  del node[leaf]
  return config


@pytest.mark.parametrize("module", [cnn_baseline, cnn_v2, cnn_v3, mobilenet, pca_logreg],
                         ids=lambda m: m.__name__.split(".")[-1])
def test_every_key_the_product_reads_is_required_by_name(module):
  config = module.get_config()
  config_checks.check(config)
  for key in _keys(config.to_dict()):
    if module is pca_logreg and key.startswith(NOT_READ_BY_PCA):
      continue
    with pytest.raises(config_checks.ConfigError, match=rf"config\.{key}\b"):
      config_checks.check(_without(config, key))


def test_an_old_workdirs_config_gets_the_values_it_ran_with(tmp_path):
  """A config saved before keys existed: each is filled with the value the code then used,
  not today's default (data.source was "folder", the operating point validation-F1, ...)."""
  config = mobilenet.get_config()
  old = config.to_dict()
  for key in ("lr_end_factor", "operating_point", "selection_metric"):
    del old[key]
  del old["data"]["source"], old["data"]["split"], old["model"]["intensity"]
  del old["model"]["bn_momentum"], old["augment"]["policy_ops"], old["ood"]
  old["model"]["depthwise_impl"] = old["model"].pop("ops")
  (tmp_path / workdir_lib.CONFIG_FILE).write_text(json.dumps(old))
  loaded = workdir_lib.load_config(str(tmp_path))
  assert (loaded.lr_end_factor, loaded.operating_point, loaded.selection_metric) == (
      0.01, "val_f1", "f1")
  assert (loaded.data.source, loaded.data.split, loaded.model.intensity) == (
      "folder", "random", "none")
  assert loaded.model.bn_momentum == 0.999 and loaded.augment.policy_ops == 0
  assert loaded.model.ops == "auto" and loaded.ood.accept == 0.99
  config_checks.check(loaded)  # Complete again.


def test_every_added_key_has_todays_default_in_base():
  """ADDED_KEYS is history: each key it fills exists in configs/base.py (today's value)."""
  today = dict.fromkeys(_keys(base.get_config().to_dict()))
  today.update(dict.fromkeys(_keys(mobilenet.get_config().to_dict())))
  for group in workdir_lib.ADDED_KEYS.values():
    assert not set(group) - set(today), set(group) - set(today)
