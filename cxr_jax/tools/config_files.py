"""Loading a config file by path (`configs/x.py[:variant]`), as --config does."""

from __future__ import annotations

import ast
import importlib.util
import os

import ml_collections


def load(spec: str) -> ml_collections.ConfigDict:
  """get_config(variant) of the config file `spec` = "path.py" or "path.py:variant"."""
  path, _, variant = spec.partition(":")
  if not os.path.exists(path):
    raise FileNotFoundError(f"Config file {path!r} not found.")
  module_spec = importlib.util.spec_from_file_location(
      "cxr_config_" + os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


def override(config: ml_collections.ConfigDict, assignment: str) -> None:
  """Applies "dotted.key=value" (a Python literal, else a string) to an existing key."""
  key, sep, text = assignment.partition("=")
  if not sep:
    raise ValueError(f"Expected key=value, got {assignment!r}.")
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  *parents, leaf = key.split(".")
  node = config
  for part in parents:
    node = node[part]
  if leaf not in node:
    raise ValueError(f"config.{key} does not exist (from {assignment!r}).")
  node[leaf] = value
