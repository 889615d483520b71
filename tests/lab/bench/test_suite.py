"""Smoke tests of `python -m cxr_lab.tools.bench` on tiny settings (speed is not checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from cxr_lab.bench import network
from cxr_lab.bench import suite
from cxr_jax.models import mobilenet

from tests.conftest import FAST_COMPILE_FLAGS, REPO


def _run_python(args: list[str], env_extra: dict | None = None, timeout: int = 240):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env_extra or {}))
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
  return subprocess.run([sys.executable] + args, cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=timeout, check=False)


def test_bench_tiny_run(tmp_path):
  # Only checks that every measurement works, so it compiles as the tests' own programs do
  # (FAST_COMPILE_FLAGS); the grouped depthwise form (--ops=xla) compiles faster than the
  # shifted one.
  out = tmp_path / "benchmarking.json"
  proc = _run_python(
      ["-m", "cxr_lab.tools.bench", "--alphas=0.35", "--image_size=32", "--batch_size=2",
       "--steps=1", "--warmup=1", "--keras=off", "--ops=xla",
       "--cached_features", "--cf_images=8", "--cf_epochs=2", "--eval_images=3",
       "--pipeline_images=4", "--config=configs/cnn_v2.py:debug",
       f"--json={out}"],
      env_extra={"XLA_FLAGS": FAST_COMPILE_FLAGS})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Flax/Keras" in proc.stdout and "input pipeline" in proc.stdout
  assert "The recipe `make train` runs" in proc.stdout and "memory roof" in proc.stdout
  assert FAST_COMPILE_FLAGS in proc.stdout  # The XLA flags in effect are reported.
  result = json.loads(out.read_text())

  (entry,) = result["models"]
  assert entry["alpha"] == 0.35 and entry["params"] > 0 and "keras" not in entry
  for key in ("train_img_s", "infer_img_s", "train_compile_s", "infer_compile_s"):
    assert entry["flax"][key] > 0, key
  assert entry["eval"]["images"] == 3 and entry["eval"]["seconds"] > 0
  pipeline = result["input_pipeline"]
  for key in ("host_img_s", "host_to_device_img_s", "augment_img_s"):
    assert pipeline[key] > 0, key
  cached = result["cached_features"]
  assert cached["epochs"] == 2 and cached["speedup"] > 0 and cached["full_s"] > 0
  assert result["settings"]["ops"] == "xla" and not result["settings"]["cpu_kernels"]
  recipe = result["recipe"]  # The config's own size and batch, not the width table's.
  assert recipe["config"] == "cnn_v2" and recipe["image_size"] == 64
  assert recipe["batch_size"] == 8 and recipe["frozen_layers"] == [] and "keras" not in recipe
  assert recipe["flops_per_step"] > 0 and recipe["bytes_per_step"] > 0
  assert recipe["epoch_s"] > recipe["validation_s"] > 0 and recipe["checkpoint_s"] > 0
  env = result["env"]
  assert env["backend"] == jax.default_backend() and env["device_kind"]
  assert {"jax", "flax", "optax"} <= set(env["versions"])


def test_imports_and_skips_keras_without_tensorflow():
  # None in sys.modules makes `import tensorflow` raise ImportError, as if not installed.
  code = ("import sys\n"
          "sys.modules['tensorflow'] = None\n"
          "sys.modules['keras'] = None\n"
          "from cxr_lab.bench import keras_peer\n"
          "tf, keras, note = keras_peer.import_keras()\n"
          "assert tf is None and keras is None, note\n"
          "print(note)\n")
  proc = _run_python(["-c", code], timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Keras baseline skipped" in proc.stdout


def test_bfloat16_classifier_has_the_registry_parameters():
  x = jax.ShapeDtypeStruct((1, 32, 32, 1), jnp.float32)
  key = jax.random.PRNGKey(0)
  fp32, _ = network.make_model(0.35, "float32")
  bf16, how = network.make_model(0.35, "bfloat16")
  assert isinstance(fp32, mobilenet.MobileNetV2Classifier) and "bfloat16" in how
  shapes = lambda m: jax.tree_util.tree_map(lambda a: (a.shape, a.dtype),
                                            jax.eval_shape(m.init, key, x))
  assert shapes(bf16) == shapes(fp32)  # Same names, shapes and fp32 parameters.
  variables = network.random_variables(bf16, 32)
  features = jax.eval_shape(lambda v, im: bf16.apply(v, im, method=bf16.features), variables, x)
  logits = jax.eval_shape(bf16.apply, variables, x)
  assert features.dtype == jnp.bfloat16 and logits.dtype == jnp.float32
  assert logits.shape == (1,)


def test_rejects_bad_settings():
  with pytest.raises(ValueError, match="keras"):
    suite.run(None, alphas=(0.35,), keras="maybe")
  with pytest.raises(ValueError, match="alphas"):
    suite.run(None, alphas=())
  with pytest.raises(ValueError, match="dtype"):
    suite.run(None, alphas=(0.35,), dtype="float16")
