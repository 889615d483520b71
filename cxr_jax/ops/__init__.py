"""Ops: layers written to train fast on XLA:CPU, each with the plain XLA op beside it.

One implementation policy for all of them (`config.model.ops`, a layer's `impl`):
  "cpu"  the hand-written forms (shifted depthwise, matmul 1x1 and kernel gradients,
         fused BatchNorm+ReLU6 backward, reshape max-pool): fastest on XLA:CPU;
  "xla"  the textbook ops (grouped / dense convolutions, autodiff BatchNorm,
         nn.max_pool): what cuDNN and the TPU convolution unit run fastest;
  "auto" "cpu" on the CPU backend inside jit, "xla" otherwise (on accelerators, and in
         eager calls, where the CPU forms would compile dozens of tiny ops each).
Both forms of every layer compute the same function with the same parameters
(tests/ops compares them in values and gradients).
"""

from __future__ import annotations

import jax

IMPLS = ("auto", "xla", "cpu")
# Names of earlier versions (layers' native/cpu, depthwise's grouped/shifted), still read
# from the config.json of older workdirs.
_LEGACY = {"native": "xla", "grouped": "xla", "shifted": "cpu"}


def normalize(impl: str) -> str:
  impl = _LEGACY.get(impl, impl)
  if impl not in IMPLS:
    raise ValueError(f"ops implementation must be one of {IMPLS}; got {impl!r} "
                     "(config.model.ops).")
  return impl


def use_cpu_kernels(impl: str, x=None) -> bool:
  """Whether a layer given `impl` (and, for "auto", its input `x`) takes the CPU forms."""
  impl = normalize(impl)
  if impl != "auto":
    return impl == "cpu"
  if jax.default_backend() != "cpu":
    return False
  return x is None or isinstance(x, jax.core.Tracer)
