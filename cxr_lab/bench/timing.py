"""Timers, the machine's two roofs, and the environment a benchmark ran in."""

from __future__ import annotations

import os
import platform
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def compile_timed(jitted, *args) -> tuple[Callable, float]:
  """(AOT-compiled function, seconds spent lowering and compiling)."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - start


def rate(images: int, seconds: float) -> float:
  return images / seconds if seconds > 0 else float("inf")


def time_chain(fn: Callable, carry, warmup: int, steps: int) -> tuple[Any, float, float]:
  """Runs carry = fn(carry) warmup then steps times; (carry, warmup_s, steps_s)."""
  start = time.perf_counter()
  for _ in range(warmup):
    carry = fn(carry)
  jax.block_until_ready(carry)
  warm = time.perf_counter()
  for _ in range(steps):
    carry = fn(carry)
  jax.block_until_ready(carry)
  return carry, warm - start, time.perf_counter() - warm


def chained(fn: Callable, carry) -> Callable[[int], Any]:
  """run(n): n more `carry = fn(carry)` from where the last run stopped; returns the carry.

  Lets a chained step (a train state in, a train state out) be timed in chunks.
  """
  box = [carry]

  def run(n: int):
    for _ in range(n):
      box[0] = fn(box[0])
    return box[0]

  return run


def interleaved(fns: Mapping[str, Callable[[], Any]], repeats: int,
                block: Callable[[Any], Any] | Mapping[str, Callable[[Any], Any]]
                = jax.block_until_ready) -> dict[str, list[float]]:
  """{name: seconds of each repeat}, the fns taking turns: a, b, a, b, ...

  Two programs timed one after the other meet different machine loads, so their ratio
  drifts with the load; alternating chunks gives both of a repeat nearly the same load.
  Each fn runs one chunk; block(its result) waits for it to finish (JAX dispatches
  asynchronously). block may be one function or one per name.
  """
  if repeats < 1:
    raise ValueError(f"need repeats >= 1; got {repeats}")
  waits = block if isinstance(block, Mapping) else {name: block for name in fns}
  seconds: dict[str, list[float]] = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      waits[name](fn())
      seconds[name].append(time.perf_counter() - start)
  return seconds


def ratio_summary(a_seconds: Sequence[float], b_seconds: Sequence[float]) -> dict:
  """a's rate over b's in each repeat (the same work each, so b's seconds over a's), and
  the median, interquartile range and range of those ratios: how far one run's ratio can
  be trusted."""
  a, b = np.asarray(a_seconds, np.float64), np.asarray(b_seconds, np.float64)
  if a.shape != b.shape or a.ndim != 1 or not a.size:
    raise ValueError(f"need two equal, non-empty lists of seconds; got {a.shape}, {b.shape}")
  ratios = b / a
  q1, median, q3 = np.percentile(ratios, [25, 50, 75])
  return {"ratios": ratios.tolist(), "median": float(median), "iqr": [float(q1), float(q3)],
          "range": [float(ratios.min()), float(ratios.max())], "repeats": int(ratios.size)}


def time_independent(fn: Callable, warmup: int, steps: int) -> tuple[float, float]:
  """Runs fn() warmup then steps times, blocking on all outputs at the end only."""
  start = time.perf_counter()
  jax.block_until_ready([fn() for _ in range(warmup)])
  warm = time.perf_counter()
  jax.block_until_ready([fn() for _ in range(steps)])
  return warm - start, time.perf_counter() - warm


def best_seconds(fn: Callable, repeats: int) -> float:
  """Fastest of `repeats` blocking calls of fn(), after one untimed call."""
  jax.block_until_ready(fn())
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
  return best


def median_seconds(fn: Callable, arg, repeats: int) -> float:
  """Median seconds of fn(arg) over `repeats` calls, after one warm-up call."""
  jax.block_until_ready(fn(arg))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(arg))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def cost(compiled) -> dict:
  """XLA's own count of a compiled program's FLOPs and bytes accessed (per call).

  "bytes accessed" sums every fused op's operands and outputs: the traffic if nothing
  stayed in cache between ops, so an upper bound on the memory traffic.
  """
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else (analysis or {})
  return {"flops": float(analysis.get("flops", 0.0)),
          "bytes": float(analysis.get("bytes accessed", 0.0))}


def machine_roofs(matmul_side: int = 2048, stream_mib: int = 512, repeats: int = 3) -> dict:
  """This machine's measured peaks: fp32 matmul FLOP/s and streaming bytes/s.

  Measured, not looked up: a square fp32 matmul (the fastest kernel XLA has here) and
  `x * 2 + 1` over an array far larger than any cache (read once, written once).
  """
  key = jax.random.PRNGKey(0)
  a = jax.random.normal(key, (matmul_side, matmul_side), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  matmul_s = best_seconds(lambda: matmul(a), repeats)
  n = stream_mib * 2**20 // 4
  x = jnp.ones((n,), jnp.float32)
  stream = jax.jit(lambda v: v * 2.0 + 1.0)
  stream_s = best_seconds(lambda: stream(x), repeats)
  return {"matmul_flop_s": 2.0 * matmul_side**3 / matmul_s,
          "stream_bytes_s": 2.0 * 4 * n / stream_s,
          "how": f"fp32 {matmul_side}^2 matmul; x*2+1 over {stream_mib} MiB"}


def environment() -> dict:
  dev = jax.devices()[0]
  versions = {"python": platform.python_version(), "jax": jax.__version__}
  for name in ("jaxlib", "flax", "optax", "numpy", "tensorflow", "keras"):
    module = sys.modules.get(name)
    if module is not None:
      versions[name] = getattr(module, "__version__", "?")
  xla_env = {k: v for k, v in os.environ.items()
             if k.startswith(("XLA_", "JAX_", "TF_XLA", "CUDA_VISIBLE", "GLIBC_TUNABLES"))}
  return {"backend": jax.default_backend(), "device_kind": dev.device_kind,
          "device_count": jax.device_count(), "platform": platform.platform(),
          "cpu": cpu_model(), "cpu_count": os.cpu_count(),
          "xla_flags": os.environ.get("XLA_FLAGS", ""), "env": xla_env,
          "matmul_precision": str(jax.config.jax_default_matmul_precision),
          "versions": versions}


def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo (or platform.processor())."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"
