"""The Flax MobileNetV2 port against keras.applications.MobileNetV2, and the .h5 loader.

Keras models get random weights and random BatchNorm statistics, are saved in the
legacy .h5 layout of Keras's downloadable weight files, ported, and compared on
random inputs. Templates come from `jax.eval_shape(model.init, ...)`: the port only
needs shapes and dtypes, and a real `init` spends ~40 s compiling random initialisers
on a 2-core CPU.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import functools
import json
from pathlib import Path

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import FrozenDict, freeze

from cxr_jax.models import keras_weights as kw
from cxr_jax.models import mobilenet_v2 as mnv2
from cxr_jax.models.mobilenet_v2 import MobileNetV2

keras = pytest.importorskip("keras")
from keras.src.legacy.saving import legacy_h5_format  # noqa: E402

from tests.conftest import SHARED
SHARED_WEIGHTS = SHARED / "weights"
PHOTOS = SHARED / "data" / "imagenet_photos"
TOL = 1e-4
BOTH_IMPLS = ("a0.35_top_45x38",)

# name -> Keras/Flax config; odd and non-square sizes exercise Keras's stride-2 padding.
CASES = {
    "a0.35_top_45x38": dict(alpha=0.35, shape=(45, 38), include_top=True, classes=10, pooling=None),
    "a1.0_notop_64": dict(alpha=1.0, shape=(64, 64), include_top=False, classes=1000, pooling=None),
    "a1.4_top_33": dict(alpha=1.4, shape=(33, 33), include_top=True, classes=10, pooling=None),
    "a0.75_max_40": dict(alpha=0.75, shape=(40, 40), include_top=False, classes=1000, pooling="max"),
}


def keras_model(alpha, shape, include_top, classes=1000, pooling=None):
  # classifier_activation=None: Keras's pre-softmax output, which the Flax port returns.
  return keras.applications.MobileNetV2(
      input_shape=tuple(shape) + (3,), alpha=alpha, include_top=include_top, weights=None,
      pooling=pooling, classes=classes, classifier_activation=None)


def flax_model(alpha, include_top=True, classes=1000, pooling=None, impl="auto"):
  return MobileNetV2(alpha=alpha, include_top=include_top, classes=classes, pooling=pooling,
                     ops=impl)


def abstract_variables(model, shape):
  return _abstract_variables(model.alpha, model.include_top, model.classes, model.pooling,
                             tuple(shape))


@functools.lru_cache(maxsize=None)
def _abstract_variables(alpha, include_top, classes, pooling, shape):
  # Shapes do not depend on the ops policy; tracing costs ~0.5 s, so trace each config once.
  model = MobileNetV2(alpha=alpha, include_top=include_top, classes=classes, pooling=pooling)
  x = jax.ShapeDtypeStruct((1,) + shape + (3,), jnp.float32)
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), x)


def randomize(model, seed=0):
  """Random kernels (He-scaled so activations neither vanish nor all clip at 6) and BN."""
  rng = np.random.default_rng(seed)
  for w in model.weights:
    name, shape = w.path.split("/")[-1], tuple(w.shape)
    if name in ("gamma", "moving_variance"):
      v = rng.uniform(0.5, 1.5, shape)
    elif name in ("beta", "moving_mean", "bias"):
      v = rng.uniform(-0.2, 0.2, shape)
    else:
      fan_in = 9 if "depthwise" in w.path else int(np.prod(shape[:-1]))
      v = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
    w.assign(v.astype(np.float32))


def save_legacy_h5(model, path):
  with h5py.File(path, "w") as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, model)
  return path


def write_legacy_h5(path, layers, keras2_names=False):
  """Legacy layout from `{layer: {name: array}}`; keras2_names: 'depthwise_kernel:0' style."""
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = [n.encode() for n in layers]
    for layer, weights in layers.items():
      g = f.create_group(layer)
      names = []
      for name, value in weights.items():
        if keras2_names:
          name = ("depthwise_kernel" if layer.endswith("depthwise") and name == "kernel" else name) + ":0"
        names.append(f"{layer}/{name}")
        g.create_dataset(names[-1], data=value)
      g.attrs["weight_names"] = [n.encode() for n in names]
  return path


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / np.abs(b).max())


def forward(model, variables, x):
  return np.asarray(jax.jit(lambda v, x: model.apply(v, x))(variables, x))


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
  cfg = dict(CASES[request.param])
  model = keras_model(**cfg)
  randomize(model, seed=len(request.param))
  path = save_legacy_h5(model, tmp_path_factory.mktemp("h5") / "random.h5")
  x = np.random.default_rng(1).uniform(-1, 1, (2,) + cfg["shape"] + (3,)).astype(np.float32)
  y = np.asarray(model(x, training=False))
  # Random weights must give a non-degenerate output, or the comparison proves little.
  assert y.std() > 0.05 * np.abs(y).max()
  return dict(cfg, name=request.param, model=model, path=path, x=x, y=y)


@pytest.fixture(scope="module")
def case035(tmp_path_factory):
  """The alpha=0.35 with-top case, for the strictness tests."""
  cfg = dict(CASES["a0.35_top_45x38"])
  model = keras_model(**cfg)
  randomize(model, seed=3)
  path = save_legacy_h5(model, tmp_path_factory.mktemp("h5") / "a035_top.h5")
  return dict(cfg, model=model, path=path)


# --- numerics against Keras --------------------------------------------------------

def test_matches_keras(case):
  cfg = {k: case[k] for k in ("alpha", "include_top", "classes", "pooling")}
  # 'cpu' is what 'auto' picks under jit on CPU; 'xla' (GPU/TPU) too on the odd, non-square case.
  impls = ("cpu", "xla") if case["name"] in BOTH_IMPLS else ("cpu",)
  outs = {}
  for impl in impls:
    model = flax_model(**cfg, impl=impl)
    variables = kw.port_mobilenet_v2(case["path"], abstract_variables(model, case["shape"]))
    n_params = sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(variables))
    assert n_params == case["model"].count_params()
    outs[impl] = forward(model, variables, case["x"])
    assert outs[impl].shape == case["y"].shape
    err = rel_err(outs[impl], case["y"])
    print(f"{case['name']} {impl}: max rel err {err:.2e}")
    assert err <= TOL
  if len(outs) == 2:
    assert rel_err(outs["cpu"], outs["xla"]) <= 1e-5
  if case["include_top"]:
    # The port returns logits; Keras's default head is their softmax.
    np.testing.assert_allclose(jax.nn.softmax(outs["cpu"]),
                               keras.ops.convert_to_numpy(keras.ops.softmax(case["y"])),
                               atol=1e-4)


def test_train_mode_matches_keras(case035):
  """Batch statistics and the momentum-0.999 moving-average update match Keras."""
  kmodel = case035["model"]
  saved = kmodel.get_weights()
  x = np.random.default_rng(4).uniform(-1, 1, (4,) + case035["shape"] + (3,)).astype(np.float32)
  m = flax_model(0.35, include_top=True, classes=10, impl="cpu")
  v = kw.port_mobilenet_v2(case035["path"], abstract_variables(m, case035["shape"]))
  y, updates = jax.jit(lambda v, x: m.apply(v, x, train=True, mutable=["batch_stats"]))(v, x)
  try:
    y_keras = np.asarray(kmodel(x, training=True))
    assert rel_err(y, y_keras) <= 1e-3  # batch stats of 4 tiny maps: looser than eval
    for layer in ("bn_Conv1", "block_3_depthwise_BN", "Conv_1_bn"):
      bn = kmodel.get_layer(layer)
      np.testing.assert_allclose(updates["batch_stats"][layer]["mean"], bn.moving_mean.numpy(),
                                 rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(updates["batch_stats"][layer]["var"], bn.moving_variance.numpy(),
                                 rtol=1e-5, atol=1e-6)
  finally:
    kmodel.set_weights(saved)


def test_gray_input_is_the_image_in_all_three_channels(case035):
  """A 1-channel image gives Keras's output on that image repeated to RGB, and the same
  gradients as the repeated image (the stem sums its kernel instead). Inference-mode
  BatchNorm: batch statistics of two 45x38 maps amplify rounding differences ~100x."""
  gray = np.random.default_rng(5).uniform(-1, 1, (2,) + case035["shape"] + (1,)).astype(np.float32)
  rgb = np.repeat(gray, 3, axis=-1)
  m = flax_model(0.35, include_top=True, classes=10)
  v = kw.port_mobilenet_v2(case035["path"], abstract_variables(m, case035["shape"]))
  assert rel_err(forward(m, v, gray), np.asarray(case035["model"](rgb, training=False))) <= TOL

  weights = np.random.default_rng(6).standard_normal((2, 10)).astype(np.float32)

  def grads(x):
    loss = lambda params: jnp.sum(m.apply({**v, "params": params}, x) * weights)
    return jax.jit(jax.grad(loss))(v["params"])
  for a, b in zip(jax.tree_util.tree_leaves(grads(gray)), jax.tree_util.tree_leaves(grads(rgb))):
    assert rel_err(a, b) <= TOL


@pytest.mark.parametrize("alpha", [0.5, 1.3])
def test_other_alphas_load_strictly(alpha, tmp_path):
  """Every Keras alpha: same layer names, shapes and parameter count (the strict port checks)."""
  kmodel = keras_model(alpha, (32, 32), include_top=True)
  path = save_legacy_h5(kmodel, tmp_path / "w.h5")
  v = kw.port_mobilenet_v2(path, abstract_variables(flax_model(alpha), (32, 32)))
  assert sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(v)) == kmodel.count_params()


def test_feature_extractor_matches_keras_truncated(case035, tmp_path):
  """A with-top file into a no-top 'avg' model with exclude=('predictions',)."""
  km = case035["model"]
  pooled = keras.Model(km.input, km.get_layer("out_relu").output)
  x = np.random.default_rng(5).uniform(-1, 1, (2,) + case035["shape"] + (3,)).astype(np.float32)
  want = np.asarray(pooled(x, training=False)).mean(axis=(1, 2))
  m = flax_model(0.35, include_top=False, pooling="avg")
  template = abstract_variables(m, case035["shape"])
  with pytest.raises(ValueError, match=r"unused: file tensor predictions/kernel"):
    kw.port_mobilenet_v2(case035["path"], template)
  v = kw.port_mobilenet_v2(case035["path"], template, exclude=("predictions",))
  y = forward(m, v, x)
  assert y.shape == (2, mnv2.feature_dim(0.35))
  assert rel_err(y, want) <= TOL


# --- the loader ----------------------------------------------------------------------

def test_read_keras_h5_layouts(case035, tmp_path):
  legacy = kw.read_keras_h5(case035["path"])
  assert set(legacy["bn_Conv1"]) == {"gamma", "beta", "moving_mean", "moving_variance"}
  assert set(legacy["predictions"]) == {"kernel", "bias"}
  assert "Conv1_relu" not in legacy  # layers without weights are left out
  # Keras 3's own .weights.h5 layout reads to the same tensors.
  case035["model"].save_weights(tmp_path / "m.weights.h5")
  v3 = kw.read_keras_h5(tmp_path / "m.weights.h5")
  assert v3.keys() == legacy.keys()
  for layer in legacy:
    assert v3[layer].keys() == legacy[layer].keys()
    for name in legacy[layer]:
      np.testing.assert_array_equal(v3[layer][name], legacy[layer][name])
  # Keras 2 names ('Conv1/kernel:0', depthwise 'depthwise_kernel:0') port the same.
  k2 = write_legacy_h5(tmp_path / "k2.h5", legacy, keras2_names=True)
  assert "depthwise_kernel" in kw.read_keras_h5(k2)["block_1_depthwise"]
  template = abstract_variables(flax_model(0.35, classes=10), case035["shape"])
  a = kw.port_mobilenet_v2(case035["path"], template)
  b = kw.port_mobilenet_v2(k2, template)
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
  np.testing.assert_array_equal(a["params"]["block_1_depthwise"]["depthwise_kernel"],
                                legacy["block_1_depthwise"]["kernel"])
  np.testing.assert_array_equal(a["batch_stats"]["block_3_expand_BN"]["var"],
                                legacy["block_3_expand_BN"]["moving_variance"])
  assert a["params"]["Conv_1_bn"]["scale"].dtype == jnp.float32


@pytest.mark.parametrize("mutation, pattern", [
    ("missing_tensor", r"missing: block_5_project_BN/moving_variance"),
    ("missing_layer", r"missing: layer 'Conv_1_bn'"),
    ("extra_tensor", r"unused: file tensor block_5_project/bias"),
    ("extra_layer", r"unused: file tensor my_head/kernel"),
    ("bad_shape", r"shape mismatch: file block_2_expand/kernel has shape \(1, 1, 48, 8\), "
                  r"template block_2_expand/kernel \(params\) has shape \(1, 1, 8, 48\)"),
])
def test_port_is_strict(case035, tmp_path, mutation, pattern):
  layers = kw.read_keras_h5(case035["path"])
  if mutation == "missing_tensor":
    del layers["block_5_project_BN"]["moving_variance"]
  elif mutation == "missing_layer":
    del layers["Conv_1_bn"]
  elif mutation == "extra_tensor":
    layers["block_5_project"]["bias"] = np.zeros(8, np.float32)
  elif mutation == "extra_layer":
    layers["my_head"] = {"kernel": np.zeros((3, 2), np.float32)}
  elif mutation == "bad_shape":
    layers["block_2_expand"]["kernel"] = layers["block_2_expand"]["kernel"].transpose(0, 1, 3, 2)
  path = write_legacy_h5(tmp_path / "bad.h5", layers)
  template = abstract_variables(flax_model(0.35, classes=10), case035["shape"])
  with pytest.raises(ValueError, match=pattern):
    kw.port_mobilenet_v2(path, template)


def test_no_top_file_into_new_head(case035, tmp_path):
  """Fine-tuning: a no-top file into a with-top model keeps the head as initialised."""
  layers = kw.read_keras_h5(case035["path"])
  del layers["predictions"]
  path = write_legacy_h5(tmp_path / "no_top.h5", layers)
  m = flax_model(0.35, include_top=True, classes=2)
  rng = np.random.default_rng(0)
  template = jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape).astype(s.dtype),
                                    abstract_variables(m, case035["shape"]))
  with pytest.raises(ValueError, match=r"missing: layer 'predictions'"):
    kw.port_mobilenet_v2(path, template)
  v = kw.port_mobilenet_v2(path, freeze(template), exclude=("predictions",))
  assert isinstance(v, FrozenDict)
  np.testing.assert_array_equal(v["params"]["predictions"]["kernel"],
                                template["params"]["predictions"]["kernel"])
  np.testing.assert_array_equal(v["params"]["Conv1"]["kernel"], layers["Conv1"]["kernel"])


def test_port_under_scope(case035):
  m = flax_model(0.35, include_top=False, pooling="avg")
  inner = abstract_variables(m, case035["shape"])
  head = np.ones((mnv2.feature_dim(0.35), 1), np.float32)
  template = {"params": {"backbone": inner["params"], "head": {"kernel": head}},
              "batch_stats": {"backbone": inner["batch_stats"]}}
  v = kw.port_mobilenet_v2(case035["path"], template, exclude=("predictions",), scope="backbone")
  assert v["params"]["head"]["kernel"] is head
  assert v["batch_stats"]["backbone"]["Conv_1_bn"]["mean"].shape == (1280,)


def test_not_a_keras_file(tmp_path):
  text = tmp_path / "notes.h5"
  text.write_text("hello")
  with pytest.raises(ValueError, match="notes.h5 is not a Keras"):
    kw.read_keras_h5(text)
  other = tmp_path / "other.h5"
  with h5py.File(other, "w") as f:
    f["data"] = np.zeros(3)
  with pytest.raises(ValueError, match="other.h5 is not a Keras weights file"):
    kw.read_keras_h5(other)
  with pytest.raises(FileNotFoundError, match="absent.h5"):
    kw.read_keras_h5(tmp_path / "absent.h5")


# --- finding the file ----------------------------------------------------------------

def test_keras_weights_filename():
  assert (kw.keras_weights_filename(0.35, 224, include_top=False)
          == "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5")
  assert (kw.keras_weights_filename(1, 224, include_top=True)
          == "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5")
  assert (kw.keras_weights_filename(0.5, 96, include_top=True)
          == "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_96.h5")
  with pytest.raises(ValueError, match="alpha"):
    kw.keras_weights_filename(0.6, 224)
  with pytest.raises(ValueError, match="sizes"):
    kw.keras_weights_filename(1.0, 200)


def test_find_keras_weights(tmp_path, monkeypatch):
  name = kw.keras_weights_filename(0.5, 224, include_top=False)
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  with pytest.raises(FileNotFoundError) as info:
    kw.find_keras_weights(0.5, 224, include_top=False)
  msg = str(info.value)
  assert name in msg
  for place in (tmp_path / "weights", tmp_path / "kh" / "models", tmp_path / "home" / ".keras" / "models"):
    assert str(place / name) in msg
  assert "weights='imagenet'" in msg and "alpha=0.5" in msg and "include_top=False" in msg

  (tmp_path / "home" / ".keras" / "models").mkdir(parents=True)
  (tmp_path / "home" / ".keras" / "models" / name).write_bytes(b"")
  assert kw.find_keras_weights(0.5, 224, False).parent == tmp_path / "home" / ".keras" / "models"
  (tmp_path / "kh" / "models").mkdir(parents=True)
  (tmp_path / "kh" / "models" / name).write_bytes(b"")
  assert kw.find_keras_weights(0.5, 224, False) == tmp_path / "kh" / "models" / name
  (tmp_path / "weights").mkdir()
  (tmp_path / "weights" / name).write_bytes(b"")
  assert kw.find_keras_weights(0.5, 224, False) == Path("weights") / name

  assert kw.find_keras_weights(0.5, 224, False, path=tmp_path / "kh" / "models") == tmp_path / "kh" / "models" / name
  odd = tmp_path / "my_alpha_0.6.h5"
  odd.write_bytes(b"")
  assert kw.find_keras_weights(0.6, 200, path=odd) == odd  # explicit files need no Keras name
  with pytest.raises(FileNotFoundError, match="nowhere.h5"):
    kw.find_keras_weights(0.5, 224, False, path=tmp_path / "nowhere.h5")
  with pytest.raises(FileNotFoundError, match="empty_dir"):
    kw.find_keras_weights(1.0, 224, True, search_dirs=[tmp_path / "empty_dir"])


# --- model structure -----------------------------------------------------------------

def test_make_divisible_and_widths_match_keras():
  from keras.src.applications.mobilenet_v2 import _make_divisible as keras_make_divisible
  for v in np.arange(1, 2000, 0.35):
    assert mnv2._make_divisible(v, 8) == keras_make_divisible(v, 8)
  assert mnv2.last_block_filters(1.4) == 1792 and mnv2.last_block_filters(1.0) == 1280
  assert mnv2.last_block_filters(0.35) == 1280 and mnv2.first_block_filters(0.35) == 16
  assert mnv2.correct_pad((224, 45)) == ((0, 1), (1, 1))


def test_layer_names_and_blocks():
  groups = mnv2.block_layer_names(include_top=True)
  assert len(groups) == 20 and groups[0] == ["Conv1", "bn_Conv1"] and groups[-1] == ["predictions"]
  assert groups[1] == ["expanded_conv_depthwise", "expanded_conv_depthwise_BN",
                       "expanded_conv_project", "expanded_conv_project_BN"]
  assert groups[17][0] == "block_16_expand" and groups[18] == ["Conv_1", "Conv_1_bn"]
  v = abstract_variables(flax_model(1.0), (32, 32))
  flat = [n for g in groups for n in g]
  assert sorted(v["params"]) == sorted(flat)  # flat top-level keys, Keras's names
  assert sorted(v["batch_stats"]) == sorted(n for n in flat if "BN" in n or "bn" in n)
  assert v["params"]["block_3_expand"]["kernel"].shape == (1, 1, 24, 144)
  assert v["params"]["block_3_depthwise"]["depthwise_kernel"].shape == (3, 3, 144, 1)
  assert mnv2.last_blocks_layer_names(2) == [
      "block_16_expand", "block_16_expand_BN", "block_16_depthwise", "block_16_depthwise_BN",
      "block_16_project", "block_16_project_BN", "Conv_1", "Conv_1_bn"]
  assert mnv2.last_blocks_layer_names(0) == []
  assert len(mnv2.last_blocks_layer_names(99)) == len(flat) - 1


def test_rejects_bad_inputs():
  with pytest.raises(ValueError, match="at least 32"):
    abstract_variables(flax_model(1.0), (31, 64))
  with pytest.raises(ValueError, match="pooling"):
    abstract_variables(flax_model(1.0, include_top=False, pooling="mean"), (32, 32))


# --- real ImageNet weights (../shared) -------------------------------------------------

def load_photo(path, size=224):
  from PIL import Image
  img = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
  return np.asarray(img, np.float32) / 127.5 - 1.0  # keras mobilenet_v2.preprocess_input


def test_real_weights_alpha1_top1_matches_keras():
  path = SHARED_WEIGHTS / "mobilenet_v2_1.0_224_imagenet_bnfolded_dequant_from_int8_tflite.h5"
  ref_path = PHOTOS / "keras_top5.json"
  if not (path.is_file() and ref_path.is_file()):
    pytest.skip(f"shared alpha=1.0 weights or photos absent ({path}, {ref_path})")
  ref = json.loads(ref_path.read_text())
  assert ref["preprocess"] == "PIL RGB, resize 224x224 bilinear, x/127.5-1"
  names = sorted(ref["predictions"], key=lambda n: int(n.split(".")[0]))
  x = np.stack([load_photo(PHOTOS / n) for n in names])
  m = flax_model(1.0, include_top=True)
  v = kw.port_mobilenet_v2(path, abstract_variables(m, (224, 224)))
  probs = np.asarray(jax.nn.softmax(forward(m, v, x)))
  for name, p in zip(names, probs):
    want = ref["predictions"][name]
    assert int(p.argmax()) == want["top5"][0], (name, np.argsort(-p)[:5], want)
    assert abs(float(p.max()) - want["top1_prob"]) < 1e-4, (name, p.max(), want["top1_prob"])


def test_real_weights_alpha035_features_match_keras():
  try:
    path = kw.find_keras_weights(0.35, 224, include_top=False, search_dirs=[SHARED_WEIGHTS])
  except FileNotFoundError as e:
    pytest.skip(f"shared alpha=0.35 weights absent: {e}")
  photos = [PHOTOS / "2.jpg", PHOTOS / "7.jpg"]
  if not all(p.is_file() for p in photos):
    pytest.skip(f"shared photos absent ({PHOTOS})")
  x = np.stack([load_photo(p) for p in photos])
  kmodel = keras.applications.MobileNetV2(input_shape=(224, 224, 3), weights=None,
                                          include_top=False, alpha=0.35, pooling="avg")
  kmodel.load_weights(str(path))
  want = np.asarray(kmodel(x, training=False))
  m = flax_model(0.35, include_top=False, pooling="avg")
  v = kw.port_mobilenet_v2(path, abstract_variables(m, (224, 224)))
  y = forward(m, v, x)
  assert y.shape == (2, 1280)
  err = rel_err(y, want)
  print(f"alpha=0.35 ImageNet features: max rel err {err:.2e}")
  assert err <= TOL
