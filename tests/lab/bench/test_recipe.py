"""The recipe benchmark reads the recipe from the config and does its roof arithmetic right."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from configs import cnn_v3
from configs import mobilenet
from cxr_lab.bench import network
from cxr_lab.bench import recipe
from cxr_lab.bench import timing
from cxr_jax.models import mobilenet_v2


def test_costly_phase_is_the_backbone_phase_not_the_cached_head():
  phase = recipe.costly_phase(mobilenet.get_config())
  assert phase.name == "fine_tune" and phase.trainable == 14 and phase.train_batch_norm
  assert recipe.costly_phase(mobilenet.get_config("freeze3")).trainable == 16
  assert recipe.costly_phase(mobilenet.get_config("full")).trainable == "all"
  assert recipe.costly_phase(cnn_v3.get_config()).name == "train"  # One-phase configs.
  only_head = mobilenet.get_config()
  only_head.phases = [only_head.phases[0]]
  with pytest.raises(ValueError, match="no phase that trains the backbone"):
    recipe.costly_phase(only_head)


@pytest.mark.parametrize("variant,n_groups", [("freeze3", 3), ("", 5), ("full", 0)])
def test_frozen_layers_are_the_first_groups(variant, n_groups):
  config = mobilenet.get_config(variant)
  model = recipe._model(config)  # pylint: disable=protected-access
  variables = network.random_variables(model, 32)
  frozen = recipe.frozen_layer_names(model, variables["params"], recipe.costly_phase(config))
  expected = sum(mobilenet_v2.block_layer_names()[:n_groups], [])
  assert sorted(frozen) == sorted(expected)


def test_roofs_are_the_step_bounded_by_compute_or_memory_alone():
  step = {"flops": 4e9, "bytes": 6e9, "step_s": 0.5}
  machine = {"matmul_flop_s": 100e9, "stream_bytes_s": 20e9}
  r = recipe.roofs(step, machine)
  assert r["compute_roof_s"] == pytest.approx(0.04) and r["memory_roof_s"] == pytest.approx(0.3)
  assert r["compute_fraction"] == pytest.approx(0.08)
  assert r["memory_fraction"] == pytest.approx(0.6)
  assert r["bytes_s"] == pytest.approx(12e9)


def test_cost_analysis_counts_a_matmul():
  a = jnp.ones((64, 32), jnp.float32)
  b = jnp.ones((32, 16), jnp.float32)
  compiled = jax.jit(jnp.matmul).lower(a, b).compile()
  cost = timing.cost(compiled)
  assert cost["flops"] == pytest.approx(2 * 64 * 32 * 16, rel=0.05)
  assert cost["bytes"] >= 4 * (64 * 32 + 32 * 16 + 64 * 16)


def test_machine_roofs_are_measured():
  m = timing.machine_roofs(matmul_side=128, stream_mib=4, repeats=1)
  assert m["matmul_flop_s"] > 1e6 and m["stream_bytes_s"] > 1e6


def test_split_sizes_follow_the_config():
  config = ml_collections.ConfigDict({"data": {"val_fraction": 0.25}})
  assert recipe.split_sizes(config, 1000) == (750, 250)


def test_keras_peer_freezes_the_same_layers():
  from cxr_lab.bench import keras_peer  # pylint: disable=g-import-not-at-top
  tf, keras, note = keras_peer.import_keras()
  if tf is None:
    pytest.skip(note)
  frozen = sum(mobilenet_v2.block_layer_names()[:3], [])
  whole = keras_peer.keras_model(keras, 0.35, 32)
  part = keras_peer.keras_model(keras, 0.35, 32, frozen_layers=frozen)
  n_frozen = sum(int(w.numpy().size) for name in frozen
                 for w in part.get_layer(index=1).get_layer(name).weights)
  count = lambda m: sum(int(w.numpy().size) for w in m.trainable_weights)
  assert n_frozen > 0 and count(whole) > count(part)
  with pytest.raises(ValueError):
    keras_peer.keras_model(keras, 0.35, 32, frozen_layers=["no_such_layer"])


def _fake_recipe(name, step_ms, epoch_s):
  return {"config": name, "phase": "fine_tune", "trainable": "all", "train_batch_norm": True,
          "image_size": 160, "batch_size": 32, "dtype": "float32", "step_ms": step_ms,
          "train_img_s": 32e3 / step_ms, "compile_s": 1.0, "flops_per_step": 8e9,
          "bytes_per_step": 8e9, "frozen_layers": [], "train_images": 4432, "val_images": 784,
          "validation_s": 1.0, "checkpoint_s": 0.5, "epoch_s": epoch_s, "epochs": 12,
          "phase_s": 12 * epoch_s, "compute_roof_s": 0.05, "memory_roof_s": 0.3,
          "compute_fraction": 0.1, "memory_fraction": 0.6,
          "machine": {"matmul_flop_s": 1e11, "stream_bytes_s": 2e10, "how": "x; y"}}


def test_the_table_gives_each_compared_recipe_its_speed_up_over_the_first():
  from cxr_lab.bench import table  # pylint: disable=g-import-not-at-top
  lines = table._other_recipe_lines(  # pylint: disable=protected-access
      _fake_recipe("before", 300.0, 45.0), [_fake_recipe("after", 120.0, 20.0)])
  text = "\n".join(lines)
  assert "(after)" in text and "against before in this run: step 2.50x faster, epoch 2.25x" in text
  assert "memory roof: 8.00 GB/step" in text and "60% reached" in text


def test_a_memory_fraction_over_one_is_explained_not_claimed():
  from cxr_lab.bench import table  # pylint: disable=g-import-not-at-top
  over = dict(_fake_recipe("x", 100.0, 15.0), memory_fraction=2.07)
  assert "stays in cache" in "\n".join(table.recipe_lines(over))
  assert "stays in cache" not in "\n".join(table.recipe_lines(_fake_recipe("x", 100.0, 15.0)))


def test_the_table_gives_the_interleaved_ratio_with_its_spread():
  from cxr_lab.bench import table  # pylint: disable=g-import-not-at-top
  keras = {"frozen_layers": ["a"], "train_step_ms": 150.0, "train_img_s": 213.3,
           "train_way": "tf.function", "ratio": 1.09, "ratio_iqr": [1.05, 1.125],
           "ratio_range": [1.01, 1.2],
           "interleaved": {"repeats": 7, "steps": 10, "flax_step_ms": 137.6}}
  text = "\n".join(table.recipe_lines(dict(_fake_recipe("x", 100.0, 15.0), keras=keras)))
  assert "Flax 137.6 ms beside it (medians of chunks of 10 steps)" in text
  assert ("Flax/Keras ratio median 1.09 (IQR 1.05\u20131.12, range 1.01\u20131.20, "
          "7 repeats interleaved)") in text
  old = {k: v for k, v in keras.items() if k != "interleaved"}  # A result from before.
  assert "): Flax/Keras 1.09" in "\n".join(table.keras_lines(old))


def test_keras_peer_interleaves_its_chunks_with_the_flax_step(monkeypatch):
  # Fakes for both sides (the real Keras step compiles for minutes on CPU): the wiring,
  # the alternation and the summary are what is checked; speed is not.
  from cxr_lab.bench import keras_peer  # pylint: disable=g-import-not-at-top
  calls = []

  def fake_chunks(tf, keras, alpha, image_size, batch_size, warmup, frozen_layers=()):
    del tf, keras, alpha, image_size, batch_size, warmup
    calls.append(("built", list(frozen_layers)))
    return (lambda n: calls.append(("keras", n)) or 0.5), {"train_way": "tf.function",
                                                            "train_probe_ms": {}}

  monkeypatch.setattr(keras_peer, "train_chunks", fake_chunks)
  frozen = mobilenet_v2.block_layer_names()[0]
  flax_run = lambda n: calls.append(("flax", n)) or jnp.zeros(())
  out = recipe.keras_peer(mobilenet.get_config(), {"frozen_layers": frozen + ["head"]},
                          flax_run, None, None, warmup=1, steps=4, repeats=3)
  assert calls == [("built", frozen)] + [("flax", 4), ("keras", 4)] * 3
  i = out["interleaved"]
  assert i["repeats"] == 3 and i["steps"] == 4 and out["frozen_layers"] == frozen
  assert len(i["flax_s"]) == len(i["keras_s"]) == len(i["ratios"]) == 3
  assert out["ratio"] == pytest.approx(sorted(i["ratios"])[1])
  assert out["ratio_range"][0] <= out["ratio_iqr"][0] <= out["ratio"] <= out["ratio_range"][1]
  assert out["train_step_ms"] == pytest.approx(i["keras_step_ms"]) and out["train_img_s"] > 0


def test_keras_trains_in_chunks_by_its_faster_way(monkeypatch):
  import time  # pylint: disable=g-import-not-at-top
  from cxr_lab.bench import keras_peer  # pylint: disable=g-import-not-at-top
  counts = {"slow": 0, "fast": 0}

  def way(name, sleep_s):
    def step():
      counts[name] += 1
      time.sleep(sleep_s)
      return float(counts[name])
    return step

  monkeypatch.setattr(keras_peer, "_ways", lambda *a: ({"slow": way("slow", 0.01),
                                                        "fast": way("fast", 0.0)}, {}))
  run, fields = keras_peer.train_chunks(None, None, 0.35, 32, 2, warmup=2, probe_steps=2)
  assert fields["train_way"] == "fast" and set(fields["train_probe_ms"]) == {"slow", "fast"}
  assert counts == {"slow": 3, "fast": 6}  # Probes: 1 + 2 each; then 1 + 2 warmup on fast.
  assert run(4) == 10.0 and counts["slow"] == 3
