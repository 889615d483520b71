"""Data parallelism: 8 forced CPU devices give the same losses as one device."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO

SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from configs import cnn_v2
from cxr_jax.trainers import phases
from cxr_jax import models, sharding, train
from cxr_jax.trainers import train_step as steps
config = cnn_v2.get_config("debug")
model = models.create_model(config.model)
rng = np.random.default_rng(0)
batch = {"image": rng.integers(0, 256, (16, 32, 32, 1), dtype=np.uint8),
         "label": np.array([0, 1] * 8, np.int32)}
variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)))
phase = phases.get_phases(config)[0]
hparams = steps.phase_hparams(config, phase, 10, np.ones(2, np.float32))
mesh = sharding.data_mesh()
state = sharding.replicate(steps.create_state(model, variables, hparams), mesh)
step = jax.jit(steps.make_train_step(model), donate_argnums=(0,))
losses = []
for _ in range(3):
  sharded = sharding.shard_batch(batch, mesh)
  state, metrics = step(state, sharded, jax.random.PRNGKey(1))
  losses.append(float(metrics["loss"]))
print(json.dumps({"devices": len(jax.devices()), "losses": losses,
                  "image_shards": len(sharded["image"].addressable_shards)}))
"""


def run(device_count: int) -> dict:
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={device_count}"}
  proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_eight_devices_match_one_device():
  one, eight = run(1), run(8)
  assert one["devices"] == 1 and eight["devices"] == 8
  assert eight["image_shards"] == 8  # The batch really is split.
  np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-4)
  assert one["losses"][-1] < one["losses"][0]


def test_batch_size_must_split_evenly():
  from types import SimpleNamespace
  from cxr_jax import sharding
  eight_devices = SimpleNamespace(devices=np.zeros(8))
  sharding.check_batch_size(32, eight_devices)
  with pytest.raises(ValueError, match="config.batch_size=12 must be divisible by the 8"):
    sharding.check_batch_size(12, eight_devices)
