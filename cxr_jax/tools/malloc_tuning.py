"""glibc malloc settings that stop XLA:CPU from page-faulting its buffers on every step.

XLA:CPU allocates an executable's temporaries with malloc on every call (2.0 GB for a
MobileNetV2 alpha 0.35 training step at batch 32), and glibc serves such blocks with
fresh `mmap`s, so each step first faults in, and the kernel zeroes, every 4 KiB page
again: measured here, writing 51 MB into a fresh output takes 24 ms, into a reused
one 5 ms. Transparent huge pages for malloc's mmaps (`glibc.malloc.hugetlb=1`) and
large blocks kept on the heap (mmap and trim thresholds of 4 GiB) take that training
step from ~2.3 s to ~1.4 s on 2 cores. TensorFlow gains as well; `python -m
cxr_lab.tools.bench` runs Flax and Keras in one process, under the same settings.

glibc reads GLIBC_TUNABLES only when a process starts, so every command-line entry point
(cxr_jax/tools/*.py, launch.py) begins, before its heavy imports, with

  from cxr_jax.tools import malloc_tuning
  malloc_tuning.prepare_main(__name__)

which, run as a program, adds the settings to the environment and re-executes the same
command, once (`startup.run` checks again, for a command that missed the line). Settings the user already chose win. It does
nothing off Linux/glibc or with CXR_JAX_MALLOC_TUNING=0. Importing this module
imports nothing heavy.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Mapping

TUNABLES = (
    ("glibc.malloc.hugetlb", "1"),
    ("glibc.malloc.mmap_threshold", "4294967296"),
    ("glibc.malloc.trim_threshold", "4294967296"),
)
OPT_OUT_VARIABLE = "CXR_JAX_MALLOC_TUNING"


def tunables_value(current: str) -> str:
  """`current` GLIBC_TUNABLES plus ours, keeping any setting already there."""
  items = [item for item in current.split(":") if item]
  present = {item.split("=", 1)[0] for item in items}
  items += [f"{name}={value}" for name, value in TUNABLES if name not in present]
  return ":".join(items)


def needs_reexec(environ: Mapping[str, str], system: str | None = None,
                 libc: str | None = None) -> bool:
  """Whether a process with `environ` would gain from restarting with our tunables."""
  if environ.get(OPT_OUT_VARIABLE, "1").strip().lower() in ("0", "false", "no", "off"):
    return False
  system = sys.platform if system is None else system
  libc = platform.libc_ver()[0] if libc is None else libc
  if system != "linux" or libc != "glibc":
    return False
  current = environ.get("GLIBC_TUNABLES", "")
  return tunables_value(current) != current


def prepare_main(module_name: str) -> None:
  """`prepare_process()` where `module_name` (the caller's __name__) is "__main__": what an
  entry point runs first; imported (by a test, another module), it does nothing."""
  if module_name == "__main__":
    prepare_process()


def prepare_process() -> None:
  """What every command does first: quiet native start-up logs, then the malloc settings."""
  # TensorFlow's C++ start-up lines (oneDNN, CPU features) are printed when it is
  # imported, before any Python logging is set up; real errors still show.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  reexec_with_tunables()


def reexec_with_tunables() -> None:
  """Re-executes this command with the tunables set, if they are missing (else returns).

  Call it before doing any work: the process is replaced, so nothing it did survives.
  """
  if not needs_reexec(os.environ):
    return
  env = dict(os.environ)
  env["GLIBC_TUNABLES"] = tunables_value(env.get("GLIBC_TUNABLES", ""))
  sys.stdout.flush()
  sys.stderr.flush()
  # orig_argv keeps `-m module` and interpreter options, unlike sys.argv.
  os.execve(sys.executable, list(sys.orig_argv), env)
