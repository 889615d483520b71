"""Keras MobileNetV2 .h5 weights: find them, read them, port them onto Flax, strictly.

Needs only h5py and numpy (no TensorFlow/Keras import).

  path = find_keras_weights(alpha=0.35, size=224, include_top=False)
  variables = MobileNetV2(alpha=0.35, include_top=False, pooling="avg").init(key, x)
  variables = port_mobilenet_v2(path, variables)

`port_mobilenet_v2` never falls back to random weights silently: every tensor of
the template must come from the file and every tensor of the file must be used,
with equal shapes, except for the layers named in `exclude`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import h5py
import numpy as np

KERAS_WEIGHT_PREFIX = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels"
KERAS_WEIGHT_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
KERAS_WEIGHT_SIZES = (96, 128, 160, 192, 224)

# Flax (collection, variable) -> accepted Keras weight names, tried in order.
# Keras 2 names the depthwise weight `depthwise_kernel`, Keras 3 `kernel`.
_BN_NAMES = {("params", "scale"): ("gamma",), ("params", "bias"): ("beta",),
             ("batch_stats", "mean"): ("moving_mean",),
             ("batch_stats", "var"): ("moving_variance",)}
_OTHER_NAMES = {("params", "kernel"): ("kernel",),
                ("params", "depthwise_kernel"): ("depthwise_kernel", "kernel"),
                ("params", "bias"): ("bias",)}

# Keras 3 `.weights.h5` stores variables by position; their names per layer class.
_KERAS3_VAR_NAMES = {
    "conv2d": ("kernel", "bias"),
    "depthwise_conv2d": ("kernel", "bias"),
    "dense": ("kernel", "bias"),
    "batch_normalization": ("gamma", "beta", "moving_mean", "moving_variance"),
}


def keras_weights_filename(alpha: float, size: int = 224, include_top: bool = True) -> str:
  """The file name Keras downloads and caches MobileNetV2 ImageNet weights under."""
  if float(alpha) not in KERAS_WEIGHT_ALPHAS:
    raise ValueError(f"Keras has MobileNetV2 ImageNet weights only for alpha in "
                     f"{KERAS_WEIGHT_ALPHAS}; got {alpha}")
  if int(size) not in KERAS_WEIGHT_SIZES:
    raise ValueError(f"Keras has MobileNetV2 ImageNet weights only for sizes "
                     f"{KERAS_WEIGHT_SIZES}; got {size}")
  # Same f-string as keras/src/applications/mobilenet_v2.py.
  suffix = "" if include_top else "_no_top"
  return f"{KERAS_WEIGHT_PREFIX}_{float(alpha)}_{int(size)}{suffix}.h5"


def default_search_dirs() -> list[Path]:
  """Where `find_keras_weights` looks, in order: the project's weights/, Keras's caches."""
  dirs = [Path("weights")]
  if os.environ.get("KERAS_HOME"):
    dirs.append(Path(os.environ["KERAS_HOME"]).expanduser() / "models")
  dirs.append(Path("~/.keras/models").expanduser())
  # Keras caches here when ~/.keras is not writable.
  dirs.append(Path("/tmp/.keras/models"))
  return dirs


def _download_hint(alpha: float, size: int, include_top: bool) -> str:
  return (f"On a machine with internet, `python -c \"import keras; "
          f"keras.applications.MobileNetV2(input_shape=({int(size)}, {int(size)}, 3), "
          f"alpha={float(alpha)}, include_top={bool(include_top)}, weights='imagenet')\"` "
          f"downloads it into ~/.keras/models; copy it into weights/ (or pass its path).")


def find_keras_weights(alpha: float, size: int = 224, include_top: bool = True,
                       path: str | os.PathLike = "",
                       search_dirs: Sequence[str | os.PathLike] | None = None) -> Path:
  """Path of the Keras MobileNetV2 ImageNet weights file, or FileNotFoundError.

  `path`: an explicit file (must exist; any name, any alpha) or a folder holding
  the file under Keras's name. Otherwise the first of `search_dirs` (default
  `default_search_dirs()`: `weights/` relative to the working directory,
  `$KERAS_HOME/models`, `~/.keras/models`, `/tmp/.keras/models`) that holds it.
  """
  if path:
    p = Path(path).expanduser()
    if p.is_file():
      return p
    if not p.is_dir():
      hint = ""
      if float(alpha) in KERAS_WEIGHT_ALPHAS and int(size) in KERAS_WEIGHT_SIZES:
        hint = (f" Keras's file for alpha={float(alpha)}, size {int(size)}, include_top="
                f"{bool(include_top)} is {keras_weights_filename(alpha, size, include_top)}. "
                + _download_hint(alpha, size, include_top))
      raise FileNotFoundError(f"MobileNetV2 weights file {str(p)!r} does not exist.{hint}")
  name = keras_weights_filename(alpha, size, include_top)
  if path:
    if not (p / name).is_file():
      raise FileNotFoundError(f"MobileNetV2 weights file {name} is not in the folder {str(p)!r}. "
                              + _download_hint(alpha, size, include_top))
    return p / name
  dirs = [Path(d).expanduser() for d in (default_search_dirs() if search_dirs is None else search_dirs)]
  for d in dirs:
    if (d / name).is_file():
      return d / name
  looked = "\n  ".join(str((d / name).resolve()) for d in dirs)
  raise FileNotFoundError(f"MobileNetV2 weights file {name} not found; looked in:\n  {looked}\n"
                          + _download_hint(alpha, size, include_top))


def _attr_strings(group: h5py.Group, name: str) -> list[str] | None:
  """A list-of-strings attribute, also when Keras split it into `name0`, `name1`, ..."""
  if name in group.attrs:
    values = list(group.attrs[name])
  elif f"{name}0" in group.attrs:
    values, i = [], 0
    while f"{name}{i}" in group.attrs:
      values.extend(group.attrs[f"{name}{i}"])
      i += 1
  else:
    return None
  return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _short_name(weight_name: str) -> str:
  # 'Conv1/kernel:0' / 'mobilenetv2_1.00_224/Conv1/kernel:0' / 'Conv1/kernel' -> 'kernel'
  return weight_name.split("/")[-1].split(":")[0]


def _read_legacy(path: str, root: h5py.Group) -> dict[str, dict[str, np.ndarray]]:
  layers: dict[str, dict[str, np.ndarray]] = {}
  names = _attr_strings(root, "layer_names") or []
  if "top_level_model_weights" in root and "top_level_model_weights" not in names:
    names.append("top_level_model_weights")
  for layer in names:
    if layer not in root:
      raise ValueError(f"{path}: layer {layer!r} is listed in layer_names but has no group")
    group = root[layer]
    weights = {}
    for weight_name in _attr_strings(group, "weight_names") or []:
      short = _short_name(weight_name)
      if short in weights:
        raise ValueError(f"{path}: layer {layer!r} has two weights named {short!r}")
      weights[short] = np.asarray(group[weight_name])
    if weights:
      layers[layer] = weights
  return layers


def _read_keras3(path: str, root: h5py.Group) -> dict[str, dict[str, np.ndarray]]:
  layers: dict[str, dict[str, np.ndarray]] = {}

  def visit(group: h5py.Group):
    for key, child in group.items():
      if not isinstance(child, h5py.Group):
        continue
      if "vars" in child and len(child["vars"]):
        vars_group = child["vars"]
        layer = vars_group.attrs.get("name")
        if layer is None:
          raise ValueError(f"{path}: Keras 3 weights group {child.name!r} does not record its "
                           f"layer name (older Keras 3 file); cannot map it to layers")
        layer = layer.decode("utf8") if isinstance(layer, bytes) else str(layer)
        cls = re.sub(r"_\d+$", "", key)
        var_names = _KERAS3_VAR_NAMES.get(cls, ())
        weights = {}
        for i in sorted(vars_group, key=int):
          short = var_names[int(i)] if int(i) < len(var_names) else f"{cls}_var{i}"
          weights[short] = np.asarray(vars_group[i])
        if layer in layers:
          raise ValueError(f"{path}: two weight groups for layer {layer!r}")
        layers[layer] = weights
      if "layers" in child:
        visit(child["layers"])

  visit(root["layers"])
  return layers


def read_keras_h5(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
  """Weights of a Keras .h5 file: `{layer_name: {weight_name: array}}`.

  Reads the legacy HDF5 weights layout of Keras's downloadable application files
  (root attribute `layer_names`, per-layer `weight_names` such as `Conv1/kernel:0`),
  the same layout inside a full-model .h5 (`model_weights` group), and Keras 3's
  `.weights.h5` layout. Weight names are shortened to `kernel`, `gamma`, ...
  Layers without weights are left out.
  """
  path = str(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Keras weights file {path!r} does not exist")
  try:
    f = h5py.File(path, "r")
  except OSError as e:
    raise ValueError(f"{path} is not a Keras .h5 weights file (not HDF5: {e})") from None
  with f:
    root = f
    if "layer_names" not in f.attrs and "layer_names0" not in f.attrs and "model_weights" in f:
      root = f["model_weights"]
    if "layer_names" in root.attrs or "layer_names0" in root.attrs:
      layers = _read_legacy(path, root)
    elif "layers" in f and isinstance(f["layers"], h5py.Group):
      layers = _read_keras3(path, f)
    else:
      raise ValueError(f"{path} is not a Keras weights file: no `layer_names` attribute "
                       f"(legacy .h5) and no `layers` group (Keras 3 .weights.h5); "
                       f"top-level keys {list(f.keys())[:10]}")
  if not layers:
    raise ValueError(f"{path} is a Keras weights file without any weights")
  return layers


def _keras_names(collection: str, name: str, layer_vars: Iterable[tuple[str, str]]) -> tuple[str, ...]:
  is_bn = ("params", "scale") in layer_vars or ("batch_stats", "mean") in layer_vars
  table = _BN_NAMES if is_bn else _OTHER_NAMES
  if (collection, name) not in table:
    raise ValueError(f"don't know which Keras weight Flax variable {collection}/{name} is")
  return table[(collection, name)]


def port_mobilenet_v2(h5_path: str | os.PathLike, variables: Mapping[str, Any],
                      exclude: Sequence[str] = (), *, scope: str | Sequence[str] = ()) -> Any:
  """Copies Keras MobileNetV2 weights from `h5_path` onto a Flax variables template.

  `variables`: e.g. `MobileNetV2(...).init(key, x)`, or the much cheaper
  `jax.eval_shape(model.init, key, x)`: only shapes and dtypes are read (excluded
  layers then stay abstract). The result has its structure and dtypes (a
  FrozenDict stays one). Keras `kernel`/`depthwise_kernel`/`bias`
  map to the Flax variables of the same layer name, BatchNorm `gamma`, `beta`,
  `moving_mean`, `moving_variance` to `params/scale`, `params/bias`,
  `batch_stats/mean`, `batch_stats/var`.

  Strict: a template tensor missing from the file, a file tensor left unused, or a
  shape mismatch raises ValueError listing every such tensor, with shapes.

  `exclude`: layer names neither loaded nor required, on both sides: a template
  layer keeps its initial value, a file layer is ignored. E.g. `('predictions',)`
  to put a fresh classifier on a with-top file, or to load a no-top file into a
  with-top model.

  `scope`: where MobileNetV2 sits inside the template (e.g. `'backbone'` or
  `('model', 'backbone')` when it is a submodule); variables outside are untouched.
  """
  from flax import traverse_util
  from flax.core import FrozenDict, freeze, unfreeze

  scope = (scope,) if isinstance(scope, str) else tuple(scope)
  exclude = set(exclude)
  file_layers = read_keras_h5(h5_path)
  frozen = isinstance(variables, FrozenDict)
  flat = traverse_util.flatten_dict(unfreeze(variables) if frozen else dict(variables))
  template = _template_layers(flat, scope)
  errors, used = _copy_file_weights(flat, template, file_layers, exclude)
  errors += _unused_file_weights(file_layers, template, used, exclude)
  if errors:
    shown = errors[:25] + ([f"... and {len(errors) - 25} more"] if len(errors) > 25 else [])
    raise ValueError(f"Keras weights {h5_path} do not match the MobileNetV2 template "
                     f"({len(errors)} problems; pass exclude=(layer names,) to skip layers on "
                     f"purpose):\n  " + "\n  ".join(shown))
  out = traverse_util.unflatten_dict(flat)
  return freeze(out) if frozen else out


def _template_layers(flat: dict, scope: tuple) -> dict[str, dict[tuple[str, str], tuple]]:
  """layer -> {(collection, variable name): flat key} of the template under `scope`."""
  template: dict[str, dict[tuple[str, str], tuple]] = {}
  for key in flat:
    if tuple(key[1:1 + len(scope)]) != scope:
      continue
    rest = key[1 + len(scope):]
    if len(rest) != 2:
      raise ValueError(f"template variable {'/'.join(map(str, key))} is not <layer>/<variable> "
                       f"under scope {scope}: not a MobileNetV2 template (wrong scope?)")
    template.setdefault(rest[0], {})[(key[0], rest[1])] = key
  if not template:
    raise ValueError(f"template has no variables under scope {scope}")
  return template


def _copy_file_weights(flat: dict, template: dict, file_layers: dict, exclude: set
                       ) -> tuple[list[str], set[tuple[str, str]]]:
  """Writes each template variable's file tensor into `flat`; returns (errors, used)."""
  import jax.numpy as jnp
  errors: list[str] = []
  used: set[tuple[str, str]] = set()
  for layer, layer_vars in template.items():
    if layer in exclude:
      continue
    file_weights = file_layers.get(layer)
    for (collection, name), key in layer_vars.items():
      where = f"{layer}/{name} ({collection})"
      want = tuple(flat[key].shape)
      candidates = _keras_names(collection, name, layer_vars)
      if file_weights is None:
        errors.append(f"missing: layer {layer!r} is not in the file (template {where}, shape {want})")
        continue
      found = [c for c in candidates if c in file_weights]
      if not found:
        errors.append(f"missing: {layer}/{candidates[0]} is not in the file (template {where}, "
                      f"shape {want}); the file's {layer} has {sorted(file_weights)}")
        continue
      value = file_weights[found[0]]
      used.add((layer, found[0]))
      if tuple(value.shape) != want:
        errors.append(f"shape mismatch: file {layer}/{found[0]} has shape {tuple(value.shape)}, "
                      f"template {where} has shape {want}")
        continue
      flat[key] = jnp.asarray(value, dtype=flat[key].dtype)
  return errors, used


def _unused_file_weights(file_layers: dict, template: dict, used: set, exclude: set
                         ) -> list[str]:
  """An error per file tensor that no template variable took."""
  errors = []
  for layer, weights in file_layers.items():
    if layer in exclude:
      continue
    for name, value in weights.items():
      if (layer, name) not in used:
        why = "no such layer in the template" if layer not in template else "no such variable"
        errors.append(f"unused: file tensor {layer}/{name} shape {tuple(value.shape)} ({why})")
  return errors
