"""Export: a trained workdir as one function for the runtimes deployers use.

  serving = serving_function(predictor, fitted)   # jitted JAX reference
  export_onnx(serving, "model.onnx")               # ONNX Runtime (jax2onnx)
  export_saved_model(serving, "saved_model/")      # TensorFlow Serving (jax2tf)
  export_tflite("saved_model/", "model.tflite")    # LiteRT, float32 or int8 weights
  export_workdir("workdirs/x", "workdirs/x/export")  # all of it, checked on test (the command)

The function takes uint8 images [N, S, S, C] at the config's input size (files are
decoded, cropped and resized on the host as by `data.decode.Preprocess`; a batch of
any N) and returns the temperature-calibrated PNEUMONIA probability [N] and the
out-of-distribution score [N]; the operating threshold and the OOD acceptance
threshold are in the metadata (`metadata()`, written beside every file as JSON and,
in ONNX, as metadata_props). The layers take their plain XLA forms (config.model.ops
"xla"), which every converter maps to the runtime's own convolutions.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax import data as data_lib
from cxr_jax import model_card
from cxr_jax import models
from cxr_jax.runtime import onnx_logs
from cxr_jax.runtime import tf_import
from cxr_jax import workdir as workdir_lib
from cxr_jax.data import augment
from cxr_jax.fits import fit
from cxr_jax.fits import ood
from cxr_jax.fits import ood_signals
from cxr_jax import registry

FORMATS = ("onnx", "saved_model", "tflite", "tflite_int8")


@dataclasses.dataclass
class Serving:
  fn: object  # jitted: uint8 [N, S, S, C] -> (probability [N], ood_score [N])
  shape: tuple[int, int, int]  # (S, S, C)
  metadata: dict


def _ood_score(detector, features, images):
  """The detector's score in jnp: ood_signals.Combined's largest signal ratio, or
  ood.Detector.score (their formulas, in jax.numpy: see fits/ood*.py)."""
  if not isinstance(detector, ood_signals.Combined):
    return _detector_score(detector, features)
  inputs = {"features": features, "thumbnail": ood_signals.thumbnails(images, xp=jnp)}
  ratios = [_detector_score(d, inputs[name]) / float(t)
            for (name, d), t in zip(detector.detectors.items(), detector.thresholds)]
  return jnp.max(jnp.stack(ratios, axis=1), axis=1)


def _detector_score(detector, features):
  """ood.Detector.score, in jnp."""
  scores, start = [], 0
  for i, width in enumerate(detector.layout):
    a = {k[len(f"l{i}_"):]: v for k, v in detector.arrays.items() if k.startswith(f"l{i}_")}
    block = jax.lax.slice_in_dim(features, start, start + width, axis=1)  # No gather: LiteRT.
    ratio = _layer_score(detector.kind, a, block) / a["scale"]
    if detector.kind in ood.TWO_SIDED:
      ratio = jnp.abs(jnp.log(jnp.maximum(ratio, 1e-12)))
    scores.append(jnp.reshape(ratio, (ratio.shape[0], -1)))
    start += width
  return jnp.max(jnp.concatenate(scores, axis=1), axis=1)


def _layer_score(kind: str, a: dict, features):
  k = int(a.get("k", 0))
  a = {key: jnp.asarray(v) for key, v in a.items()}
  if kind == "mahalanobis":
    return ood.mahalanobis_distance(a, features, jnp)
  if kind == "knn":
    similarity = ood.normalise(features @ a["components"].T, jnp) @ a["bank"].T
    return 1.0 - jax.lax.top_k(similarity, k)[0][:, -1]  # Cosine distance, k-th neighbour.
  if kind == "pca_reconstruction":
    return ood.reconstruction_statistics(a, features, jnp)
  raise ValueError(f"No export for the {kind} detector.")


def _signals(detector) -> list[str]:
  return list(getattr(detector, "signals", ("features",)))


def metadata(predictor, fitted: fit.Fitted) -> dict:
  cal = fitted.calibration
  name, threshold = fit.operating_point(cal, predictor.config)
  temperature = cal["temperature"]
  calibrated = float(jax.nn.sigmoid(jnp.log(threshold / (1 - threshold)) / temperature)) \
      if 0 < threshold < 1 else threshold
  prep = predictor.preprocess
  return {
      "model": predictor.model_name, "name": predictor.config.name,
      "input": {"dtype": "uint8", "shape": ["N", *prep.shape], "range": [0, 255],
                "preprocessing": {"image_size": prep.image_size, "channels": prep.channels,
                                  "crop_border": prep.crop_border,
                                  "resize": "Pillow bilinear (antialiased) to image_size",
                                  "gray": "Pillow 'L' (ITU-R 601 luma)",
                                  "dicom": "windowed to 8 bits, MONOCHROME1 inverted",
                                  # Inside the exported graph: the file's caller does nothing.
                                  "intensity": model_card.intensity(predictor.config.model)}},
      "outputs": {"probability": "temperature-calibrated P(PNEUMONIA)",
                  "ood_score": "out-of-distribution score: the largest of "
                               f"{', '.join(_signals(fitted.detector))} over its threshold"},
      "operating_point": {"rule": name, "threshold_on_probability": calibrated},
      "temperature": temperature,
      "ood": {"kind": fitted.detector.kind, "threshold": fitted.detector.threshold,
              "accept": fitted.detector.accept, "signals": _signals(fitted.detector),
              "rule": "ood_score > threshold: OUT_OF_DISTRIBUTION, give no diagnosis"},
      "labels": {"0": "NORMAL", "1": "PNEUMONIA"},
  }


def serving_function(predictor, fitted: fit.Fitted) -> Serving:
  """The whole scoring function of a Flax workdir's model, with its plain-XLA layers."""
  if not predictor.kind.supports.export:
    raise ValueError(f"Export is for the neural networks; {predictor.model_name} is not one.")
  predictor = predictor.one_view  # Exported files are the network, without test-time views.
  model_config = copy.deepcopy(predictor.config.model)
  model_config.ops = "xla"
  model = models.create_model(model_config)
  variables = jax.tree_util.tree_map(jnp.asarray, predictor.variables)
  temperature = float(fitted.calibration["temperature"])
  detector = fitted.detector

  @jax.jit
  def fn(images):
    logits, features = models.apply_with_features(model, variables, augment.to_float(images))
    return (jax.nn.sigmoid(logits.astype(jnp.float32) / temperature),
            _ood_score(detector, features.astype(jnp.float32), images))

  return Serving(fn, predictor.preprocess.shape, metadata(predictor, fitted))


def _write_metadata(serving: Serving, path: str) -> str:
  meta_path = os.path.splitext(path.rstrip("/"))[0] + ".json"
  with open(meta_path, "w") as f:
    json.dump(serving.metadata, f, indent=2)
  return meta_path


def export_onnx(serving: Serving, path: str) -> str:
  """An ONNX model (jax2onnx) with a dynamic batch; metadata as metadata_props too."""
  import onnx  # pylint: disable=g-import-not-at-top
  from jax2onnx import to_onnx  # pylint: disable=g-import-not-at-top
  spec = jax.ShapeDtypeStruct(("N",) + serving.shape, jnp.uint8)
  with onnx_logs.untyped_shape_warnings_dropped():
    model = to_onnx(serving.fn, [spec], model_name="cxr_jax", return_mode="proto")
  for key, value in serving.metadata.items():
    entry = model.metadata_props.add()
    entry.key, entry.value = key, json.dumps(value)
  onnx.save(model, path)
  _write_metadata(serving, path)
  return path


def export_saved_model(serving: Serving, path: str) -> str:
  """A TensorFlow SavedModel (jax2tf, native serialization) with a dynamic batch."""
  tf = tf_import.tensorflow()
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  converted = jax2tf.convert(serving.fn, polymorphic_shapes=["(b, ...)"], with_gradient=False)
  module = tf.Module()
  module.f = tf.function(
      lambda images: dict(zip(("probability", "ood_score"), converted(images))),
      input_signature=[tf.TensorSpec((None,) + serving.shape, tf.uint8, name="images")],
      autograph=False)
  tf.saved_model.save(module, path, signatures={"serving_default": module.f})
  _write_metadata(serving, path)
  return path


class ExportError(RuntimeError):
  """A runtime's converter refused the model; the message says which file and why."""


def _converter_reason(error: Exception) -> str:
  """The first 'error:' of a converter's long MLIR dump, on one line."""
  text = str(error)
  reasons = [p.strip() for p in text.split("error:")[1:] if p.strip()]
  return " ".join((reasons[0] if reasons else text).split())[:160]


def export_tflite(saved_model: str, path: str, int8_weights: bool = False) -> str:
  """A LiteRT flatbuffer of a SavedModel; int8_weights: dynamic-range weight quantisation.

  Raises ExportError naming the path and the first op LiteRT cannot convert (a sort, say).
  """
  tf = tf_import.tensorflow()
  converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS,
                                         tf.lite.OpsSet.SELECT_TF_OPS]
  if int8_weights:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  try:
    flatbuffer = converter.convert()
  except Exception as error:  # pylint: disable=broad-except
    if type(error).__name__ != "ConverterError":
      raise
    raise ExportError(f"{path}: LiteRT cannot convert this model: "
                      f"{_converter_reason(error)}") from None
  with open(path, "wb") as f:
    f.write(flatbuffer)
  meta = saved_model.rstrip("/") + ".json"
  if os.path.exists(meta):
    with open(meta) as src, open(os.path.splitext(path)[0] + ".json", "w") as dst:
      dst.write(src.read())
  return path


class Runtime:
  """Runs an exported file in the runtime a deployer would use; __call__(images) -> (p, ood)."""

  def __init__(self, path: str):
    self.path = path
    if path.endswith(".onnx"):
      import onnxruntime as ort  # pylint: disable=g-import-not-at-top
      self._session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
      self._call = self._onnx
    elif path.endswith(".tflite"):
      self._interpreter = tf_import.litert_interpreter(path)
      self._call = self._tflite
    else:
      tf = tf_import.tensorflow()
      self._fn = tf.saved_model.load(path).signatures["serving_default"]
      self._call = self._saved_model

  def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return self._call(np.ascontiguousarray(images, np.uint8))

  def _onnx(self, images):
    name = self._session.get_inputs()[0].name
    probability, ood_score = self._session.run(None, {name: images})
    return np.asarray(probability), np.asarray(ood_score)

  def _saved_model(self, images):
    out = self._fn(images=images)
    return out["probability"].numpy(), out["ood_score"].numpy()

  def _tflite(self, images):
    interp = self._interpreter
    index = interp.get_input_details()[0]["index"]
    interp.resize_tensor_input(index, images.shape)
    interp.allocate_tensors()
    out = interp.get_signature_runner("serving_default")(images=images)
    return np.asarray(out["probability"]), np.asarray(out["ood_score"])


def parity(serving: Serving, runtime: Runtime, images: np.ndarray, labels: np.ndarray,
           batch_size: int = 64) -> dict:
  """How close an exported file's outputs are to the JAX function's on labelled images."""
  from sklearn import metrics as skm  # pylint: disable=g-import-not-at-top
  ref_p, ref_o, got_p, got_o = [], [], [], []
  for start in range(0, len(images), batch_size):
    batch = images[start:start + batch_size]
    p, o = serving.fn(batch)
    ref_p.append(np.asarray(p))
    ref_o.append(np.asarray(o))
    p, o = runtime(batch)
    got_p.append(p)
    got_o.append(o)
  ref_p, ref_o, got_p, got_o = map(np.concatenate, (ref_p, ref_o, got_p, got_o))
  threshold = serving.metadata["operating_point"]["threshold_on_probability"]
  both = len(np.unique(labels)) == 2
  return {
      "n": int(len(images)),
      "max_abs_probability_difference": float(np.max(np.abs(got_p - ref_p))),
      "max_relative_ood_difference": float(np.max(np.abs(got_o - ref_o)
                                                  / np.maximum(np.abs(ref_o), 1e-6))),
      "label_agreement": float(np.mean((got_p >= threshold) == (ref_p >= threshold))),
      "ood_flag_agreement": float(np.mean((got_o > serving.metadata["ood"]["threshold"])
                                          == (ref_o > serving.metadata["ood"]["threshold"]))),
      "auc_jax": float(skm.roc_auc_score(labels, ref_p)) if both else None,
      "auc_exported": float(skm.roc_auc_score(labels, got_p)) if both else None,
  }


def export_all(serving: Serving, output_dir: str, formats=FORMATS,
               skipped: dict | None = None) -> dict[str, str]:
  """{format: path} of every requested format under output_dir.

  A LiteRT format its converter refuses is left out, its one-line reason logged and put
  in `skipped` ({format: reason}) when given; the other formats are still written.
  """
  os.makedirs(output_dir, exist_ok=True)
  out = {}
  saved_model = os.path.join(output_dir, "saved_model")
  if "onnx" in formats:
    out["onnx"] = export_onnx(serving, os.path.join(output_dir, "model.onnx"))
  if {"saved_model", "tflite", "tflite_int8"} & set(formats):
    out["saved_model"] = export_saved_model(serving, saved_model)
  for fmt, name, int8 in (("tflite", "model.tflite", False),
                          ("tflite_int8", "model_int8.tflite", True)):
    if fmt not in formats:
      continue
    try:
      out[fmt] = export_tflite(saved_model, os.path.join(output_dir, name), int8)
    except ExportError as error:
      logging.warning("%s skipped: %s", fmt, error)
      if skipped is not None:
        skipped[fmt] = str(error)
  return out


def export_workdir(workdir: str, output_dir: str, formats=FORMATS, check: bool = True,
                   max_per_class: int = 0) -> tuple[dict[str, str], dict | None]:
  """({format: path}, {format: parity on test} or None) of a workdir exported to output_dir.

  The output is checked before any work (not the workdir itself nor its checkpoints, and
  writable); exporting into the workdir holds its lock.
  """
  workdir_lib.load_config(workdir)  # Not a workdir: refused before anything is created.
  workdir_lib.check_output(output_dir, inputs=(workdir,), flag="--output_dir", folder=True)
  inside = workdir_lib.is_inside(output_dir, workdir)
  with workdir_lib.writer_lock(workdir) if inside else contextlib.nullcontext():
    predictor = registry.load_predictor(workdir)  # serving_function takes its one view.
    serving = serving_function(predictor, fit.load_or_fit(predictor))
    skipped: dict = {}
    paths = export_all(serving, output_dir, formats, skipped)
    if not check:
      return paths, ({"skipped": skipped} if skipped else None)
    test = data_lib.load_folder(os.path.join(predictor.config.data.data_dir, "test"),
                                predictor.preprocess, max_per_class)
    results = {fmt: parity(serving, Runtime(path), test.images, test.labels)
               for fmt, path in paths.items() if fmt in formats}
    if skipped:
      results["skipped"] = skipped
    workdir_lib.write_json(os.path.join(output_dir, "parity.json"), results)
    return paths, results
