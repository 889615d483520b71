"""Does a model read the image border (markers, text, collimator edges) instead of the lungs?

  result = border_probe(predictor, data, fraction=0.08)

Scores a labelled set as it is and with a band of `fraction` of each side replaced by the
mean intensity of the image's own inner region (a flat band: no marker, text or edge
left, and no bright or dark frame drawn). A model that reads the lungs barely changes;
one that leans on the "R" marker or burnt-in text changes its answers. With Grad-CAM,
it also reports the share of the heatmap that falls in the band, beside the band's share
of the image's area (what an evenly spread map would give). Nothing is fitted: a
measurement, not a selection.
"""

from __future__ import annotations

import numpy as np

from cxr_jax.metrics import classification as metrics_lib


def border_mask(size: int, fraction: float) -> np.ndarray:
  """[size, size] bool: True in the band of `fraction` of each side."""
  if not 0 < fraction < 0.5:
    raise ValueError(f"The border fraction must be in (0, 0.5); got {fraction}.")
  band = max(1, round(size * fraction))
  mask = np.ones((size, size), bool)
  mask[band:size - band, band:size - band] = False
  return mask


def mask_border(images: np.ndarray, fraction: float) -> np.ndarray:
  """uint8 [N, S, S, C] with the border band filled by each image's inner mean."""
  mask = border_mask(images.shape[1], fraction)
  fill = np.rint(images[:, ~mask].mean(axis=1))  # [N, C]: each image's inner mean.
  out = images.copy()
  out[:, mask] = fill[:, None, :].astype(np.uint8)
  return out


def heat_in_border(heatmaps: np.ndarray, fraction: float) -> np.ndarray:
  """[N]: the share of each Grad-CAM map's mass that falls in the border band."""
  mask = border_mask(heatmaps.shape[1], fraction)
  total = heatmaps.reshape(len(heatmaps), -1).sum(axis=1)
  return heatmaps[:, mask].sum(axis=1) / np.maximum(total, 1e-12)


def _changes(labels, before, after, threshold) -> dict:
  flipped = (before >= threshold) != (after >= threshold)
  return {
      "mean_abs_prob_change": float(np.mean(np.abs(after - before))),
      "flipped": float(np.mean(flipped)),
      "flipped_normal": float(np.mean(flipped[labels == 0])) if np.any(labels == 0) else None,
      "flipped_pneumonia": (float(np.mean(flipped[labels == 1])) if np.any(labels == 1)
                            else None),
  }


def border_probe(predictor, data, fraction: float = 0.08, threshold: float = 0.5,
                 gradcam_images: int = 64, seed: int = 0) -> dict:
  """Metrics with and without the border, the answers that change, and Grad-CAM's share.

  data: a DecodedSet (images at the predictor's input size, labels).
  gradcam_images: how many images (a fixed random sample) get Grad-CAM; 0 for none.
  """
  labels = np.asarray(data.labels)
  before = predictor.predict(data.images).probs
  after = predictor.predict(mask_border(data.images, fraction)).probs
  band_area = float(border_mask(data.images.shape[1], fraction).mean())
  result = {
      "model": predictor.model_name, "n": int(len(labels)), "fraction": fraction,
      "threshold": threshold,
      "border_area_share": band_area,
      "original": metrics_lib.binary_metrics(labels, before, threshold),
      "border_masked": metrics_lib.binary_metrics(labels, after, threshold),
      **_changes(labels, before, after, threshold),
  }
  if gradcam_images > 0 and predictor.supports_gradcam:
    pick = np.random.default_rng(seed).permutation(len(labels))[:gradcam_images]
    share = heat_in_border(predictor.gradcam(data.images[pick]), fraction)
    result["gradcam"] = {"n": int(len(pick)), "mean_border_share": float(share.mean()),
                         "images_over_half_in_border": float(np.mean(share > 0.5))}
  return result


SUMMARY_COLUMNS = (("accuracy", ("original", "accuracy")),
                   ("accuracy masked", ("border_masked", "accuracy")),
                   ("specificity", ("original", "specificity")),
                   ("specificity masked", ("border_masked", "specificity")),
                   ("ROC AUC", ("original", "roc_auc")),
                   ("ROC AUC masked", ("border_masked", "roc_auc")),
                   ("NORMAL changed", ("flipped_normal",)),
                   ("PNEUMONIA changed", ("flipped_pneumonia",)),
                   ("Grad-CAM in border", ("gradcam", "mean_border_share")))


def summarize(results: dict) -> dict:
  """{model: {column: (mean, std, n)}} over the runs (seeds) of each model.

  results: {workdir: border_probe result with a "model" entry}. std is the sample std
  (0 for one run); a column a model lacks (Grad-CAM of PCA) is left out.
  """
  by_model: dict[str, list[dict]] = {}
  for r in results.values():
    by_model.setdefault(r["model"], []).append(r)
  out = {}
  for model, runs in by_model.items():
    out[model] = {}
    for column, path in SUMMARY_COLUMNS:
      values = [_get(r, path) for r in runs]
      values = np.array([v for v in values if v is not None], np.float64)
      if len(values):
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out[model][column] = (float(values.mean()), std, int(len(values)))
  return out


def _get(record: dict, path: tuple):
  for key in path:
    record = record.get(key) if isinstance(record, dict) else None
  return record


def format_summary(summary: dict) -> str:
  """A Markdown table of `summarize`: mean ± std over seeds per model."""
  header = "| model | runs | " + " | ".join(c for c, _ in SUMMARY_COLUMNS) + " |"
  lines = [header, "|" + "---|" * (len(SUMMARY_COLUMNS) + 2)]
  for model, cells in summary.items():
    n = max(v[2] for v in cells.values())
    row = [f"{cells[c][0]:.3f} ± {cells[c][1]:.3f}" if c in cells else "–"
           for c, _ in SUMMARY_COLUMNS]
    lines.append(f"| {model} | {n} | " + " | ".join(row) + " |")
  return "\n".join(lines)


def format_probe(name: str, r: dict) -> str:
  o, m = r["original"], r["border_masked"]
  line = (f"{name}: border {r['fraction']:.0%} of each side ({r['border_area_share']:.0%} of "
          f"the area), n={r['n']}\n"
          f"  accuracy {o['accuracy']:.3f} -> {m['accuracy']:.3f}, specificity "
          f"{o['specificity']:.3f} -> {m['specificity']:.3f}, sensitivity {o['recall']:.3f} -> "
          f"{m['recall']:.3f}, ROC AUC {o['roc_auc']:.4f} -> {m['roc_auc']:.4f}\n"
          f"  answers changed: {r['flipped']:.1%} (NORMAL {r['flipped_normal']:.1%}, PNEUMONIA "
          f"{r['flipped_pneumonia']:.1%}); mean |change of p| {r['mean_abs_prob_change']:.4f}")
  if "gradcam" in r:
    g = r["gradcam"]
    line += (f"\n  Grad-CAM mass in the border: {g['mean_border_share']:.1%} (an even map: "
             f"{r['border_area_share']:.1%}); images with over half there: "
             f"{g['images_over_half_in_border']:.1%} of {g['n']}")
  return line
