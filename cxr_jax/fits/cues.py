"""Acquisition cues: what in a folder separates the classes without looking at the lungs.

For any labelled set: per image, simple acquisition cues (border brightness per side,
black and white level, contrast, sharpness, the file's size, aspect and JPEG quality);
per cue, its per-class distribution and its single-feature ROC AUC for the label (0.5:
no information; a cue with AUC far from 0.5 on training is a shortcut a model can learn).
With a model, its sensitivity to each cue by intervention: each image's cue is set to
the other class's median and the answers that change are counted.

  report = cue_report(train, val, predictor)   # tools/cue_report writes it with plots
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter
from sklearn import metrics as skm

from cxr_jax.fits import perturbations

SIDES = ("left", "right", "top", "bottom")
INTERVENTIONS = ("border_left", "border_right", "border_top", "border_bottom", "median",
                 "black_level", "contrast", "sharpness")
_BLUR_RADII = (0.4, 0.7, 1.0, 1.5, 2.0)
_SHARPEN = (0.5, 1.0, 2.0, 3.0)


def side_band(h: int, w: int, side: str, fraction: float = perturbations.BORDER) -> tuple:
  """The index of one side's band (the outer `fraction` of the columns or rows)."""
  bh, bw = max(1, round(h * fraction)), max(1, round(w * fraction))
  return {"left": np.s_[:, :, :bw], "right": np.s_[:, :, w - bw:],
          "top": np.s_[:, :bh, :], "bottom": np.s_[:, h - bh:, :]}[side]


def _side_means(g: np.ndarray) -> dict[str, np.ndarray]:
  return {f"border_{side}": g[side_band(*g.shape[1:], side)].mean(axis=(1, 2))
          for side in SIDES}


def scale_side(g: np.ndarray, side: str, target: np.ndarray) -> np.ndarray:
  """One side's band scaled so its mean is `target` (per image)."""
  band = side_band(*g.shape[1:], side)
  current = np.maximum(g[band].mean(axis=(1, 2)), 1e-3)
  out = g.copy()
  out[band] = np.clip(g[band] * (np.asarray(target) / current)[:, None, None], 0.0, 1.0)
  return out


def jpeg_quality(path: str) -> float:
  """libjpeg's quality estimate from the luma quantisation table; NaN if not a JPEG."""
  try:
    with Image.open(path) as img:
      tables = getattr(img, "quantization", None)
  except (OSError, ValueError):
    return float("nan")
  if not tables or 0 not in tables:
    return float("nan")
  # The standard luma table scaled by quality q: mean ratio s = 50/q (q<50) or 2 - q/50.
  standard = np.array([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
                       14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
                       18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
                       49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99])
  scale = float(np.mean(np.sort(np.asarray(tables[0], float)) / np.sort(standard)))
  quality = 50.0 / scale if scale > 1 else 50.0 * (2.0 - scale)
  return float(np.clip(quality, 1, 100))


def file_cues(paths) -> dict[str, np.ndarray]:
  """The file's own pixel size, aspect (width / height) and JPEG quality (NaN: unreadable)."""
  sizes = []
  for path in paths:
    try:
      with Image.open(path) as img:
        sizes.append(img.size)
    except (OSError, ValueError):
      sizes.append((np.nan, np.nan))
  sizes = np.asarray(sizes, float).reshape(-1, 2)
  return {"file_pixels": sizes[:, 0] * sizes[:, 1], "file_aspect": sizes[:, 0] / sizes[:, 1],
          "jpeg_quality": np.array([jpeg_quality(p) for p in paths])}


def measure(images: np.ndarray, paths=None) -> dict[str, np.ndarray]:
  """Every cue of every image (uint8 [N, H, W, C]); file cues when `paths` are given."""
  out = {**_side_means(perturbations.gray(images)), **perturbations.cues(images)}
  if paths is not None:
    out.update(file_cues(paths))
  return out


def single_cue_auc(values: np.ndarray, labels: np.ndarray) -> float | None:
  """ROC AUC of the cue alone for PNEUMONIA (None when undefined: one class, or no spread)."""
  ok = np.isfinite(values)
  values, labels = values[ok], np.asarray(labels)[ok]
  if len(np.unique(labels)) < 2 or np.ptp(values) == 0:
    return None
  return float(skm.roc_auc_score(labels, values))


def per_class(values: np.ndarray, labels: np.ndarray) -> dict:
  out = {}
  for c, name in enumerate(("NORMAL", "PNEUMONIA")):
    v = values[(np.asarray(labels) == c) & np.isfinite(values)]
    out[name] = ({"median": float(np.median(v)), "p5": float(np.quantile(v, 0.05)),
                  "p95": float(np.quantile(v, 0.95)), "n": int(len(v))} if len(v) else None)
  return out


def summarise(cues: dict, labels) -> dict:
  """{cue: {"auc", "NORMAL": {...}, "PNEUMONIA": {...}}}."""
  return {name: {"auc": single_cue_auc(v, labels), **per_class(v, labels)}
              for name, v in cues.items()}


def _filtered(images: np.ndarray, make_filter) -> np.ndarray:
  out = np.empty_like(images)
  for i, image in enumerate(images):
    img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    out[i] = np.asarray(img.filter(make_filter())).reshape(out[i].shape)
  return out


def set_sharpness(images: np.ndarray, target: np.ndarray) -> np.ndarray:
  """Each image blurred or sharpened (from a fixed grid) to the sharpness nearest `target`."""
  candidates = ([images]
                + [_filtered(images, lambda r=r: ImageFilter.GaussianBlur(r)) for r in _BLUR_RADII]
                + [_filtered(images, lambda a=a: ImageFilter.UnsharpMask(2, int(a * 100), 0))
                   for a in _SHARPEN])
  sharpness = np.stack([perturbations.sharpness(perturbations.gray(c)) for c in candidates])
  best = np.argmin(np.abs(sharpness - np.asarray(target)[None]), axis=0)
  return np.stack([candidates[b][i] for i, b in enumerate(best)])


def intervene(images: np.ndarray, cue: str, target: np.ndarray) -> np.ndarray:
  """`images` with one cue moved to per-image `target` values, the rest kept."""
  g = perturbations.gray(images)
  channels = images.shape[-1]
  setters = {**{f"border_{side}": lambda g, t, side=side: scale_side(g, side, t)
                for side in SIDES}, "median": perturbations.set_median,
             "black_level": perturbations.set_black_level, "contrast": perturbations.set_contrast}
  if cue == "sharpness":
    return set_sharpness(images, target)
  if cue not in setters:
    raise ValueError(f"No intervention for cue {cue!r}; choose from {INTERVENTIONS}.")
  return perturbations.to_uint8(setters[cue](g, np.asarray(target, np.float32)), channels)


def sensitivity(predictor, images: np.ndarray, labels: np.ndarray, threshold: float,
                reference_cues: dict) -> dict:
  """Per cue: the share of answers that change when each image takes the other class's
  median of the cue (medians from `reference_cues`, e.g. the training split's)."""
  labels = np.asarray(labels)
  base = predictor.predict(images).probs >= threshold
  out = {}
  for cue in INTERVENTIONS:
    ref_labels = reference_cues["_labels"]
    medians = [float(np.median(reference_cues[cue][ref_labels == c])) for c in (0, 1)]
    target = np.where(labels == 0, medians[1], medians[0])
    moved = predictor.predict(intervene(images, cue, target)).probs >= threshold
    changed = moved != base
    out[cue] = {"changed": float(changed.mean()),
                **{f"changed_{name}": float(changed[labels == c].mean())
                   if (labels == c).any() else None
                   for c, name in enumerate(("NORMAL", "PNEUMONIA"))},
                "NORMAL_set_to": medians[1], "PNEUMONIA_set_to": medians[0]}
  return out


def cue_report(sets: dict, predictor=None, threshold: float | None = None,
               reference: str = "train") -> dict:
  """{"sets": {name: summarise(...)}, "sensitivity": {name: ...}} of labelled DecodedSets.

  `reference` names the set whose per-class medians the interventions move cues to.
  """
  measured = {name: measure(d.images, d.paths) for name, d in sets.items()}
  out = {"sets": {name: summarise(c, sets[name].labels) for name, c in measured.items()}}
  if predictor is not None:
    ref = {**measured[reference], "_labels": np.asarray(sets[reference].labels)}
    out["sensitivity"] = {name: sensitivity(predictor, d.images, d.labels, threshold, ref)
                          for name, d in sets.items() if name != reference}
  out["cues"] = {name: {k: v.tolist() for k, v in c.items()} for name, c in measured.items()}
  return out
