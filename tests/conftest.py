"""Shared fixtures: paths of ../shared and small generated image folders."""

from __future__ import annotations

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = (REPO / ".." / "shared").resolve()
CHEST_XRAY = SHARED / "data" / "chest_xray"
FULLRES_SAMPLE = SHARED / "data" / "chest_xray_fullres_sample"


def require(path: pathlib.Path) -> pathlib.Path:
  if not path.exists():
    pytest.skip(f"{path} not found (../shared is not beside this checkout)")
  return path


@pytest.fixture(scope="session")
def chest_xray_dir() -> pathlib.Path:
  return require(CHEST_XRAY)


@pytest.fixture(scope="session")
def fullres_dir() -> pathlib.Path:
  return require(FULLRES_SAMPLE)


def write_image(path: pathlib.Path, seed: int, size=(40, 52), mode="L", fmt=None) -> None:
  """A random image file of the given Pillow mode; `fmt` defaults to the extension's."""
  rng = np.random.default_rng(seed)
  h, w = size
  if mode == "I;16":
    img = Image.fromarray(rng.integers(0, 4096, (h, w), dtype=np.uint16))
  else:
    bands = {"L": 1, "RGB": 3, "RGBA": 4, "CMYK": 4}[mode]
    arr = rng.integers(0, 256, (h, w, bands), dtype=np.uint8)
    img = Image.fromarray(arr[..., 0] if bands == 1 else arr, mode=mode)
  path.parent.mkdir(parents=True, exist_ok=True)
  img.save(path, format=fmt)


def make_class_folder(root: pathlib.Path, n_per_class: int = 4, size=(40, 52)) -> pathlib.Path:
  """root/{NORMAL,PNEUMONIA}/ with Kermany-style names, two images per patient."""
  for label, name in enumerate(("NORMAL", "PNEUMONIA")):
    for i in range(n_per_class):
      patient = 100 + i // 2
      fname = (f"IM-{patient:04d}-{i:04d}.jpeg" if label == 0
               else f"person{patient}_bacteria_{i}.jpeg")
      write_image(root / name / fname, seed=label * 1000 + i, size=size)
  return root


@pytest.fixture
def class_folder(tmp_path) -> pathlib.Path:
  return make_class_folder(tmp_path / "folder")
