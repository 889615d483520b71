"""Figures of evaluation results and of the report, each written as a 150-dpi PNG.

Every function takes plain arrays/dicts, writes one PNG to `path` (creating its
folder) and returns the path. Figures are built with `matplotlib.figure.Figure`
and rendered by the Agg canvas, never through pyplot: no GUI backend is needed,
nothing global is switched for other importers, and no figure is left open.

Over 350 lines because each figure is one function sharing one style (size, DPI,
fonts): one place to change how every figure looks.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib import cm as mpl_cm
from matplotlib import colors as mpl_colors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn import metrics as skm

from cxr_jax.metrics import calibration
from cxr_jax.data.splits import CLASS_NAMES

DPI = 150


def _figure(width: float, height: float) -> Figure:
  fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
  FigureCanvasAgg(fig)
  return fig


def _save(fig: Figure, path: str) -> str:
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  # No bbox_inches="tight": the PNG keeps the figure's exact pixel size.
  fig.savefig(path, dpi=DPI, format="png")
  return path


def _nonempty(mapping, what: str) -> None:
  if not mapping:
    raise ValueError(f"No {what} to plot (empty input).")


def _labels_probs(name: str, pair) -> tuple[np.ndarray, np.ndarray]:
  try:
    labels, probs = pair
  except (TypeError, ValueError):
    raise ValueError(f"{name!r}: expected a (labels, probs) pair.") from None
  labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
  if labels.ndim != 1 or labels.shape != probs.shape:
    raise ValueError(f"{name!r}: labels {labels.shape} and probs {probs.shape} "
                     "must be 1-D with equal lengths.")
  if not np.all(np.isin(labels, (0, 1))) or len(np.unique(labels)) != 2:
    raise ValueError(f"{name!r}: labels must contain both classes 0 (NORMAL) and 1 (PNEUMONIA).")
  if not np.all(np.isfinite(probs)) or probs.min() < 0 or probs.max() > 1:
    raise ValueError(f"{name!r}: probs must be finite and in [0, 1].")
  return labels.astype(np.int64), probs


def _check_image(image, what: str) -> np.ndarray:
  """A (H, W), (H, W, 1) or (H, W, 3) uint8 image as (H, W) or (H, W, 3)."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"{what}: expected a uint8 image, got dtype {image.dtype}.")
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim != 2 and not (image.ndim == 3 and image.shape[-1] == 3):
    raise ValueError(f"{what}: expected shape (H, W), (H, W, 1) or (H, W, 3), got {image.shape}.")
  return image


def _show_gray(ax, image: np.ndarray, **kwargs) -> None:
  ax.imshow(image, cmap="gray", vmin=0, vmax=255, **kwargs)
  ax.set_xticks([])
  ax.set_yticks([])


def roc_curves(curves: Mapping[str, tuple], path: str,
               title: str = "ROC curves (PNEUMONIA = positive)") -> str:
  """ROC curve of each model, AUC in the legend. curves: {name: (labels, probs)}."""
  _nonempty(curves, "ROC curves")
  fig = _figure(6, 5.5)
  ax = fig.add_subplot()
  for name, pair in curves.items():
    labels, probs = _labels_probs(name, pair)
    fpr, tpr, _ = skm.roc_curve(labels, probs, pos_label=1)
    auc = skm.roc_auc_score(labels, probs)
    ax.plot(fpr, tpr, lw=1.8, label=f"{name} (AUC {auc:.3f})")
  ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="chance")
  ax.set(xlim=(0, 1), ylim=(0, 1.01), title=title,
         xlabel="False positive rate (1 - specificity)", ylabel="True positive rate (sensitivity)")
  ax.set_aspect("equal")
  ax.grid(alpha=0.3)
  ax.legend(loc="lower right", fontsize=8)
  return _save(fig, path)


def pr_curves(curves: Mapping[str, tuple], path: str,
              title: str = "Precision-recall curves (PNEUMONIA = positive)") -> str:
  """Precision-recall curve of each model, average precision in the legend."""
  _nonempty(curves, "precision-recall curves")
  fig = _figure(6, 5.5)
  ax = fig.add_subplot()
  prevalences = set()
  for name, pair in curves.items():
    labels, probs = _labels_probs(name, pair)
    precision, recall, _ = skm.precision_recall_curve(labels, probs, pos_label=1)
    ap = skm.average_precision_score(labels, probs, pos_label=1)
    ax.step(recall, precision, where="post", lw=1.8, label=f"{name} (AP {ap:.3f})")
    prevalences.add(round(float(labels.mean()), 4))
  # A no-skill classifier's precision is the prevalence; one line when all curves
  # come from the same set.
  if len(prevalences) == 1:
    p = prevalences.pop()
    ax.axhline(p, ls="--", color="0.6", lw=1, label=f"chance (prevalence {p:.2f})")
  ax.set(xlim=(0, 1), ylim=(0, 1.01), title=title,
         xlabel="Recall (sensitivity)", ylabel="Precision (PPV)")
  ax.grid(alpha=0.3)
  ax.legend(loc="lower left", fontsize=8)
  return _save(fig, path)


def confusion_matrices(matrices: Mapping[str, Sequence[Sequence[int]]], path: str,
                       ncols: int = 3, title: str = "Confusion matrices") -> str:
  """Grid of annotated 2x2 heatmaps, rows = true class, columns = predicted class.

  matrices: {name: [[TN, FP], [FN, TP]]} as in metrics.binary_metrics.
  """
  _nonempty(matrices, "confusion matrices")
  checked = {}
  for name, cm in matrices.items():
    cm = np.asarray(cm)
    if cm.shape != (2, 2):
      raise ValueError(f"{name!r}: confusion matrix must be 2x2, got shape {cm.shape}.")
    if np.any(cm < 0) or not np.all(np.equal(np.mod(cm, 1), 0)):
      raise ValueError(f"{name!r}: confusion matrix must hold non-negative counts.")
    checked[name] = cm.astype(np.int64)
  ncols = min(ncols, len(checked))
  nrows = -(-len(checked) // ncols)
  fig = _figure(3.4 * ncols, 3.2 * nrows + 0.4)
  axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
  for ax, (name, cm) in zip(axes, checked.items()):
    # Colour by the share of each true class, so the rarer class reads as clearly.
    row_share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(row_share, cmap="Blues", vmin=0, vmax=1)
    for i in range(2):
      for j in range(2):
        ax.text(j, i, f"{cm[i, j]}\n({100 * row_share[i, j]:.1f}%)", ha="center", va="center",
                fontsize=10, color="white" if row_share[i, j] > 0.6 else "black")
    ax.set_xticks([0, 1], [f"pred\n{c}" for c in CLASS_NAMES], fontsize=8)
    ax.set_yticks([0, 1], [f"true\n{c}" for c in CLASS_NAMES], fontsize=8)
    ax.set_title(name, fontsize=10)
  for ax in axes[len(checked):]:
    ax.axis("off")
  fig.suptitle(f"{title} (% of the true class)")
  return _save(fig, path)


def reliability_diagram(curves: Mapping[str, tuple], path: str, n_bins: int = 15,
                        title: str = "Reliability diagram (PNEUMONIA probability)") -> str:
  """Observed PNEUMONIA frequency vs predicted probability, ECE in the legend.

  curves: {name: (labels, probs)}; before/after temperature scaling are two entries.
  A histogram of the predicted probabilities sits underneath.
  """
  _nonempty(curves, "reliability curves")
  fig = _figure(6, 7)
  top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
  top.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="perfectly calibrated")
  edges = np.linspace(0, 1, n_bins + 1)
  for name, pair in curves.items():
    labels, probs = _labels_probs(name, pair)
    curve = calibration.reliability_curve(labels, probs, n_bins)
    ece = calibration.expected_calibration_error(labels, probs, n_bins)
    line, = top.plot(curve["mean_predicted"], curve["fraction_positive"], marker="o", ms=4,
                     lw=1.5, label=f"{name} (ECE {ece:.3f})")
    bottom.hist(probs, bins=edges, histtype="step", lw=1.5, color=line.get_color())
  top.set(xlim=(0, 1), ylim=(0, 1), title=title, ylabel="Observed PNEUMONIA fraction")
  top.grid(alpha=0.3)
  top.legend(loc="upper left", fontsize=8)
  bottom.set(xlabel=f"Predicted PNEUMONIA probability ({n_bins} equal-width bins)",
             ylabel="Images")
  bottom.set_yscale("log")
  bottom.grid(alpha=0.3)
  return _save(fig, path)


def training_curves(history: Sequence[Mapping], path: str, title: str = "Training curves") -> str:
  """Losses (left) and validation metrics (right) per epoch; phases shaded and named.

  history: one dict per epoch with `epoch` and any of train_loss, val_loss and
  val_<metric> (e.g. val_f1, val_roc_auc); an optional `phase` (e.g. "head",
  "finetune") marks where training changed. When epochs restart per phase, the
  x axis counts epochs over all phases.
  """
  if not history:
    raise ValueError("history is empty: no epochs to plot.")
  for i, row in enumerate(history):
    if not isinstance(row, Mapping) or "epoch" not in row:
      raise ValueError(f"history[{i}] must be a dict with an 'epoch' key, got {row!r}.")
  epochs = np.array([float(row["epoch"]) for row in history])
  if np.all(np.diff(epochs) > 0):
    x, xlabel = epochs, "Epoch"
  else:
    x, xlabel = np.arange(1, len(history) + 1), "Epoch (counted over all phases)"
  loss_keys = [k for k in ("train_loss", "val_loss") if any(k in row for row in history)]
  metric_keys = sorted({k for row in history for k in row
                        if k.startswith("val_") and k != "val_loss"})
  if not loss_keys and not metric_keys:
    raise ValueError("history has no train_loss, val_loss or val_<metric> values.")

  def series(key):
    return np.array([float(row[key]) if row.get(key) is not None else np.nan for row in history])

  fig = _figure(11, 4.2)
  ax_loss, ax_metric = fig.subplots(1, 2)
  for key in loss_keys:
    ax_loss.plot(x, series(key), marker=".", label=key.replace("_", " "))
  for key in metric_keys:
    ax_metric.plot(x, series(key), marker=".", label=key.replace("_", " "))
  phases = [row.get("phase") for row in history]
  if any(p is not None for p in phases):
    starts = [i for i in range(len(phases)) if i == 0 or phases[i] != phases[i - 1]]
    ends = [s - 1 for s in starts[1:]] + [len(phases) - 1]
    for ax in (ax_loss, ax_metric):
      for k, (i, j) in enumerate(zip(starts, ends)):
        if k % 2:  # Every other phase shaded, each named at the top.
          ax.axvspan(x[i] - 0.5, x[j] + 0.5, color="0.92", zorder=0)
        # Above the axes, where neither curves nor legends can cover it.
        ax.text(x[i] - 0.45, 1.01, str(phases[i]), transform=ax.get_xaxis_transform(),
                va="bottom", fontsize=8, color="0.35")
  ax_loss.set(xlabel=xlabel, ylabel="Loss (binary cross-entropy)")
  ax_metric.set(xlabel=xlabel, ylabel="Validation metric")
  for ax in (ax_loss, ax_metric):
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(fontsize=8, loc="best")
  fig.suptitle(title)
  return _save(fig, path)


def class_counts_bar(counts: Mapping[str, Mapping[str, int]], path: str,
                     title: str = "Images per class and split") -> str:
  """Grouped bars of image counts (and % of the split): one group per split, one bar per class."""
  _nonempty(counts, "splits")
  classes: list[str] = []
  for split, per_class in counts.items():
    if not isinstance(per_class, Mapping) or not per_class:
      raise ValueError(f"split {split!r}: expected a non-empty {{class: count}} dict.")
    for c, n in per_class.items():
      if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"split {split!r}, class {c!r}: count must be a non-negative int, "
                         f"got {n!r}.")
      if c not in classes:
        classes.append(c)
  splits = list(counts)
  fig = _figure(max(5.0, 1.6 * len(splits) + 2), 4.5)
  ax = fig.add_subplot()
  width = 0.8 / len(classes)
  for k, c in enumerate(classes):
    values = [int(counts[s].get(c, 0)) for s in splits]
    bars = ax.bar(np.arange(len(splits)) + (k - (len(classes) - 1) / 2) * width, values,
                  width, label=c)
    # The share within each split makes the class imbalance readable at a glance.
    totals = [max(sum(int(v) for v in counts[s].values()), 1) for s in splits]
    ax.bar_label(bars, [f"{v}\n({100 * v / t:.0f}%)" for v, t in zip(values, totals)],
                 fontsize=7, padding=2)
  ax.set_xticks(np.arange(len(splits)), splits)
  ax.set(ylabel="Images", title=title)
  ax.margins(y=0.12)
  ax.grid(axis="y", alpha=0.3)
  ax.legend()
  return _save(fig, path)


def image_size_histogram(sizes: Sequence[tuple[int, int]], path: str,
                         title: str = "Original image sizes") -> str:
  """Scatter of widths vs heights (pixels) and a histogram of aspect ratios."""
  sizes = np.asarray(sizes, dtype=np.float64)
  if sizes.ndim != 2 or sizes.shape[1] != 2 or len(sizes) == 0:
    raise ValueError(f"sizes must be a non-empty list of (width, height), got shape {sizes.shape}.")
  if np.any(sizes <= 0) or not np.all(np.isfinite(sizes)):
    raise ValueError("sizes must be positive (width, height) pixel counts.")
  w, h = sizes[:, 0], sizes[:, 1]
  fig = _figure(10, 4.5)
  ax_scatter, ax_ratio = fig.subplots(1, 2)
  ax_scatter.scatter(w, h, s=6, alpha=min(1.0, max(0.05, 200 / len(sizes))), edgecolors="none")
  ax_scatter.set(xlabel="Width (px)", ylabel="Height (px)",
                 title=f"{len(sizes)} images, median {np.median(w):.0f} x {np.median(h):.0f}")
  ax_scatter.grid(alpha=0.3)
  ax_ratio.hist(w / h, bins=40, color="tab:orange")
  ax_ratio.set(xlabel="Aspect ratio (width / height)", ylabel="Images", title="Aspect ratios")
  ax_ratio.grid(alpha=0.3)
  fig.suptitle(title)
  return _save(fig, path)


def sample_grid(images: Mapping[str, Sequence[np.ndarray]], path: str, max_per_class: int = 6,
                title: str = "Sample images") -> str:
  """One row of example images per class (uint8, gray or RGB)."""
  _nonempty(images, "classes")
  rows = {}
  for c, imgs in images.items():
    if len(imgs) == 0:
      raise ValueError(f"class {c!r} has no images.")
    rows[c] = [_check_image(im, f"class {c!r} image {i}")
               for i, im in enumerate(imgs[:max_per_class])]
  ncols = max(len(r) for r in rows.values())
  fig = _figure(1.9 * ncols, 2.1 * len(rows) + 0.4)
  axes = fig.subplots(len(rows), ncols, squeeze=False)
  for r, (c, imgs) in enumerate(rows.items()):
    for k in range(ncols):
      ax = axes[r, k]
      if k < len(imgs):
        _show_gray(ax, imgs[k])
        if k == 0:
          ax.set_ylabel(c, fontsize=11)
      else:
        ax.axis("off")
  fig.suptitle(title)
  return _save(fig, path)


def gradcam_grid(items: Sequence[Mapping], path: str, ncols: int = 4, alpha: float = 0.4,
                 title: str = "Grad-CAM (PNEUMONIA logit)") -> str:
  """Grad-CAM heatmaps (jet, `alpha`) over their gray X-rays.

  items: dicts with image (H, W[, C] uint8), heatmap (h, w floats in [0, 1]) and
  title. A heatmap of another resolution (e.g. the model's input size) is
  stretched over the whole image.
  """
  if not items:
    raise ValueError("No Grad-CAM items to plot (empty input).")
  checked = []
  for i, item in enumerate(items):
    for key in ("image", "heatmap"):
      if key not in item:
        raise ValueError(f"items[{i}] has no {key!r}.")
    image = _check_image(item["image"], f"items[{i}]['image']")
    heat = np.asarray(item["heatmap"], dtype=np.float64)
    if heat.ndim != 2:
      raise ValueError(f"items[{i}]['heatmap'] must be 2-D (H, W), got shape {heat.shape}.")
    if not np.all(np.isfinite(heat)) or heat.min() < -1e-6 or heat.max() > 1 + 1e-6:
      raise ValueError(f"items[{i}]['heatmap'] must be finite and in [0, 1].")
    checked.append((image, heat, str(item.get("title", ""))))
  ncols = min(ncols, len(checked))
  nrows = -(-len(checked) // ncols)
  fig = _figure(3 * ncols + 0.8, 3.2 * nrows + 0.4)
  axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
  jet = matplotlib.colormaps["jet"]
  for ax, (image, heat, name) in zip(axes, checked):
    if image.ndim == 3:  # RGB shown as luma: the heatmap's colours must stand out.
      image = np.round(image @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    height, width = image.shape
    extent = (0, width, height, 0)
    _show_gray(ax, image, extent=extent)
    ax.imshow(np.clip(heat, 0, 1), cmap=jet, vmin=0, vmax=1, alpha=alpha,
                         extent=extent, interpolation="bilinear")
    ax.set_title(name, fontsize=9)
  for ax in axes[len(checked):]:
    ax.axis("off")
  # The colour bar gets the opaque colormap: the overlay's alpha would wash it out.
  scale = mpl_cm.ScalarMappable(mpl_colors.Normalize(0, 1), jet)
  fig.colorbar(scale, ax=axes.tolist(), shrink=0.8, label="Grad-CAM (normalised)")
  fig.suptitle(title)
  return _save(fig, path)


def ood_distributions(scores: Mapping[str, Sequence[float]], threshold: float, path: str,
                      title: str = "Out-of-distribution scores") -> str:
  """Empirical distribution (1 - CDF, log x) of the OOD score of each set, threshold marked.

  scores: {set name: scores}; a curve far right of "train" and "validation" is a set
  unlike the training data.
  """
  _nonempty(scores, "score sets")
  fig = _figure(7, 4.5)
  ax = fig.subplots()
  for name, values in scores.items():
    values = np.sort(np.asarray(values, np.float64))
    if not len(values):
      continue
    survival = 1.0 - np.arange(len(values)) / len(values)
    ax.step(np.maximum(values, 1e-6), survival, where="post", lw=1.6,
            label=f"{name} (n={len(values)}, {np.mean(values > threshold):.1%} flagged)")
  ax.axvline(threshold, color="k", ls="--", lw=1, label=f"acceptance threshold {threshold:.3g}")
  ax.set(xscale="log", ylim=(0, 1.02), xlabel="OOD score (log scale)",
         ylabel="Fraction of images scoring higher", title=title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="lower left")
  return _save(fig, path)


def risk_coverage(curves: Mapping[str, Mapping], path: str,
                  title: str = "Risk-coverage") -> str:
  """Error rate of the kept images against the fraction kept; AURC in the legend.

  curves: {name: {"coverage", "risk", "aurc"}} (selective.risk_coverage results).
  """
  _nonempty(curves, "risk-coverage curves")
  fig = _figure(6, 4.5)
  ax = fig.subplots()
  for name, c in curves.items():
    if c.get("aurc") is None:
      continue
    ax.plot(c["coverage"], c["risk"], marker="o", ms=3, lw=1.5,
            label=f"{name} (AURC {c['aurc']:.3f})")
  ax.set(xlim=(0, 1), ylim=(0, None), xlabel="Coverage (fraction of images kept)",
         ylabel="Risk (error rate among kept)", title=title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, path)


def accuracy_estimates(points: Mapping[str, tuple[float, float]], path: str,
                       title: str = "Label-free accuracy estimate against the truth") -> str:
  """Scatter of {folder: (true accuracy, estimate)} with the y = x line and a ±0.05 band."""
  _nonempty(points, "accuracy estimates")
  fig = _figure(6, 6)
  ax = fig.add_subplot(1, 1, 1)
  truth = np.array([t for t, _ in points.values()])
  estimate = np.array([e for _, e in points.values()])
  low = float(min(truth.min(), estimate.min(), 0.5)) - 0.02
  line = np.array([low, 1.0])
  ax.plot(line, line, color="black", lw=1)
  ax.fill_between(line, line - 0.05, line + 0.05, color="gray", alpha=0.2, label="±0.05")
  ax.scatter(truth, estimate, s=18)
  for name, (t, e) in points.items():
    ax.annotate(name, (t, e), fontsize=6, xytext=(3, 2), textcoords="offset points")
  ax.set(xlim=(low, 1.0), ylim=(low, 1.0), xlabel="true accuracy", ylabel="estimated accuracy",
         title=title)
  ax.legend(loc="lower right")
  return _save(fig, path)


def cue_distributions(cues: Mapping[str, Sequence[float]], labels, path: str,
                      title: str = "Acquisition cues by class") -> str:
  """One histogram per cue, NORMAL against PNEUMONIA, its single-cue ROC AUC in the title."""
  _nonempty(cues, "cues")
  labels = np.asarray(labels)
  names = list(cues)
  ncols = 4
  nrows = (len(names) + ncols - 1) // ncols
  fig = _figure(3.2 * ncols, 2.4 * nrows)
  for k, name in enumerate(names):
    ax = fig.add_subplot(nrows, ncols, k + 1)
    values = np.asarray(cues[name], float)
    ok = np.isfinite(values)
    if ok.sum() == 0 or np.ptp(values[ok]) == 0:
      ax.set_title(f"{name} (no spread)", fontsize=8)
      continue
    bins = np.linspace(values[ok].min(), values[ok].max(), 30)
    for c, class_name in enumerate(CLASS_NAMES):
      ax.hist(values[ok & (labels == c)], bins=bins, alpha=0.5, density=True, label=class_name)
    auc = (skm.roc_auc_score(labels[ok], values[ok]) if len(np.unique(labels[ok])) == 2
           else float("nan"))
    ax.set_title(f"{name}: AUC {auc:.2f}", fontsize=8)
    ax.tick_params(labelsize=6)
  fig.axes[0].legend(fontsize=6)
  fig.suptitle(title)
  return _save(fig, path)
