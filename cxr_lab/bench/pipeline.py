"""The input pipeline's rates against training: is data the bottleneck?"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax import data as data_lib
from cxr_lab.bench import timing
from cxr_jax.data import augment
from cxr_jax.data import batches


def bench_input_pipeline(config, n_images: int, image_size: int, batch_size: int,
                         warmup: int, steps: int) -> dict:
  """Host batching (train_batches), + host->device copy, and on-device augmentation alone."""
  rng = np.random.default_rng(2)
  n_images = max(n_images, batch_size)
  images = rng.integers(0, 256, (n_images, image_size, image_size, 1), dtype=np.uint8)
  data = data_lib.DecodedSet(images, (np.arange(n_images) % 2).astype(np.int32),
                             [""] * n_images, [""] * n_images, skipped=[])

  def epoch(copy: bool) -> tuple[int, float]:
    count, start = 0, time.perf_counter()
    last = None
    for b in batches.train_batches(data, batch_size, seed=0, epoch=0):
      last = jax.device_put(b) if copy else b
      count += batch_size
    jax.block_until_ready(last)
    return count, time.perf_counter() - start

  epoch(copy=True)  # First device_put of the shape, page faults.
  host_n, host_s = epoch(copy=False)
  copy_n, copy_s = epoch(copy=True)

  device_images = jax.device_put(images[:batch_size])
  strengths = {k: jnp.float32(v) for k, v in augment.strengths(config.augment).items()}
  aug = jax.jit(lambda key, x: augment.augment(key, x, strengths))
  key = jax.random.PRNGKey(0)
  aug, aug_compile = timing.compile_timed(aug, key, device_images)
  _, aug_s = timing.time_independent(lambda: aug(key, device_images), warmup, steps)
  return {"images": n_images, "host_img_s": timing.rate(host_n, host_s),
          "host_to_device_img_s": timing.rate(copy_n, copy_s),
          "augment_img_s": timing.rate(batch_size * steps, aug_s), "augment_compile_s": aug_compile}
