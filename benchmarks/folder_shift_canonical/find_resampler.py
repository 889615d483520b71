"""Which pipeline made the dataset's 224 px copies from the full-resolution originals?

  python benchmarks/folder_shift_canonical/find_resampler.py \
      [--originals=data/chest_xray_fullres_sample/train] [--copies=data/chest_xray/train]

Every candidate (Pillow filters with and without reducing_gap, Pillow's JPEG draft
mode, TensorFlow's tf.image.resize, OpenCV and scikit-image if importable) takes each original to
224x224 gray, then optionally through a JPEG encode at qualities 75-100; the result is
compared with the shipped copy decoded to gray (mean absolute difference, PSNR) and, as a
signature that pixel errors cannot give, by its coherence with the original in two
bands of fine detail beside the copies' own. Writes resampler_match.json and prints the
table (best first by mean absolute difference).
"""

import argparse
import glob
import io
import json
import os

import numpy as np
from PIL import Image

SIZE = 224
QUALITIES = (None, 75, 80, 85, 90, 95, 100)
PIL_FILTERS = {f.name: f for f in Image.Resampling}
# Spatial-frequency bands (cycles per pixel at 224) where the copies' content and the
# original's part ways: their coherence with a Lanczos resize of the original.
BANDS = ((0.2, 0.3), (0.3, 0.4))


def pil_candidates():
  """{name: fn(path) -> uint8 (224, 224)} through Pillow."""
  out = {}
  for name, f in PIL_FILTERS.items():
    for gap in (None, 2.0, 3.0):
      suffix = "" if gap is None else f", reducing_gap={gap}"
      out[f"Pillow {name}{suffix}"] = (
          lambda p, f=f, gap=gap: np.asarray(
              Image.open(p).convert("L").resize((SIZE, SIZE), f, reducing_gap=gap)))
    out[f"Pillow draft('L') + {name}"] = lambda p, f=f: _draft(p, f)
    out[f"Pillow RGB {name}, then L"] = (
        lambda p, f=f: np.asarray(Image.open(p).convert("RGB").resize((SIZE, SIZE), f)
                                  .convert("L")))
  return out


def _draft(path, f):
  img = Image.open(path)
  img.draft("L", (SIZE, SIZE))  # JPEG DCT-domain downscaling by 1/2, 1/4 or 1/8.
  return np.asarray(img.convert("L").resize((SIZE, SIZE), f))


def tf_candidates():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  out = {}
  for method in ("bilinear", "area", "bicubic", "nearest", "lanczos3", "mitchellcubic"):
    for antialias in (False, True):
      for rounding in ("round", "truncate"):
        def fn(p, method=method, antialias=antialias, rounding=rounding):
          x = tf.io.decode_jpeg(tf.io.read_file(p), channels=1)
          y = tf.image.resize(x, (SIZE, SIZE), method=method, antialias=antialias).numpy()
          y = np.round(y) if rounding == "round" else y
          return np.clip(y, 0, 255).astype(np.uint8)[..., 0]
        out[f"TF {method}{' antialias' if antialias else ''} ({rounding})"] = fn
  return out


def cv_candidates():
  try:
    import cv2  # pylint: disable=import-outside-toplevel
  except ImportError:
    return {}
  out = {}
  for name in ("INTER_AREA", "INTER_LINEAR", "INTER_CUBIC", "INTER_NEAREST", "INTER_LANCZOS4",
               "INTER_LINEAR_EXACT"):
    flag = getattr(cv2, name)
    out[f"OpenCV {name}"] = lambda p, flag=flag: cv2.resize(
        cv2.imread(p, cv2.IMREAD_GRAYSCALE), (SIZE, SIZE), interpolation=flag)
  return out


def skimage_candidates():
  """skimage.transform.resize: a Gaussian pre-filter (sigma (factor - 1) / 2), then spline
  interpolation of the given order; floats back to uint8 by rounding or truncation."""
  try:
    from skimage import transform  # pylint: disable=import-outside-toplevel
  except ImportError:
    return {}
  out = {}
  for order in (0, 1, 3):
    for anti_aliasing in (True, False):
      for rounding in ("round", "truncate"):
        def fn(p, order=order, anti_aliasing=anti_aliasing, rounding=rounding):
          x = np.asarray(Image.open(p).convert("L"), np.float64) / 255.0
          y = transform.resize(x, (SIZE, SIZE), order=order, anti_aliasing=anti_aliasing) * 255
          return np.clip(np.round(y) if rounding == "round" else y, 0, 255).astype(np.uint8)
        out[f"skimage order={order}{' anti_aliasing' if anti_aliasing else ''} ({rounding})"] = fn
  return out


def chain_candidates():
  """Through a JPEG at an intermediate size first: the signature of a lossy earlier copy."""
  out = {}
  for size in (240, 256, 320):
    for quality in (50, 75):
      out[f"Pillow BILINEAR to {size}, JPEG q{quality}, BILINEAR to 224"] = (
          lambda p, size=size, quality=quality: np.asarray(Image.fromarray(jpeg(np.asarray(
              Image.open(p).convert("L").resize((size, size), Image.BILINEAR)), quality))
              .resize((SIZE, SIZE), Image.BILINEAR)))
  return out


def coherence(made, lanczos, band):
  """Squared coherence of two sets of images over a band of spatial frequency (cycles/px)."""
  f = np.fft.fftfreq(SIZE)
  radius = np.hypot(*np.meshgrid(f, f, indexing="ij"))
  mask = (radius >= band[0]) & (radius < band[1])
  window = np.outer(np.hanning(SIZE), np.hanning(SIZE))
  cross = power_a = power_b = 0
  for a, b in zip(made, lanczos):
    fa = np.fft.fft2((a - a.mean()) * window)[mask]
    fb = np.fft.fft2((b - b.mean()) * window)[mask]
    cross, power_a, power_b = (cross + np.sum(fa * np.conj(fb)), power_a + np.sum(abs(fa) ** 2),
                               power_b + np.sum(abs(fb) ** 2))
  return float(abs(cross) ** 2 / (power_a * power_b))


def jpeg(arr, quality):
  if quality is None:
    return arr
  buf = io.BytesIO()
  Image.fromarray(arr).convert("RGB").save(buf, "JPEG", quality=quality)  # 4:2:0, as the copies.
  return np.asarray(Image.open(buf).convert("L"))


def scores(made, copy):
  err = made.astype(np.float64) - copy
  mse = float(np.mean(err ** 2))
  return float(np.mean(np.abs(err))), 10 * np.log10(255 ** 2 / max(mse, 1e-10))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--originals", default="data/chest_xray_fullres_sample/train")
  parser.add_argument("--copies", default="data/chest_xray/train")
  parser.add_argument("--output", default=os.path.dirname(os.path.abspath(__file__)))
  args = parser.parse_args()
  paths = sorted(glob.glob(os.path.join(args.originals, "*", "*")))
  copies = [np.asarray(Image.open(os.path.join(args.copies, *p.split(os.sep)[-2:])).convert("L"))
            for p in paths]
  candidates = {**pil_candidates(), **tf_candidates(), **cv_candidates(),
                **skimage_candidates(), **chain_candidates()}
  lanczos = [np.asarray(Image.open(p).convert("L").resize((SIZE, SIZE), Image.LANCZOS), float)
             for p in paths]
  copy_coherence = [coherence([c.astype(float) for c in copies], lanczos, b) for b in BANDS]
  rows = []
  for name, fn in candidates.items():
    resized = [fn(p) for p in paths]
    for q in QUALITIES:
      made = [jpeg(r, q) for r in resized]
      s = [scores(m, c) for m, c in zip(made, copies)]
      rows.append({"pipeline": name, "jpeg_quality": q, "mae": float(np.mean([m for m, _ in s])),
                   "psnr_db": float(np.mean([d for _, d in s])),
                   "exact": int(sum(m == 0 for m, _ in s)),
                   "coherence": [coherence([m.astype(float) for m in made], lanczos, b)
                                 for b in BANDS]})
  rows.sort(key=lambda r: r["mae"])
  with open(os.path.join(args.output, "resampler_match.json"), "w") as f:
    json.dump({"n_images": len(paths), "bands": BANDS, "copy_coherence": copy_coherence,
               "rows": rows}, f, indent=1)
  print(f"| pipeline (original -> 224x224 gray) | JPEG q | mean abs diff | PSNR (dB) | "
        f"identical of {len(paths)} | coherence {BANDS[0]} / {BANDS[1]} c/px |\n"
        f"|---|---|---|---|---|---|\n| the copies themselves | | | | | "
        f"{copy_coherence[0]:.2f} / {copy_coherence[1]:.2f} |")
  for r in rows[:40] + [r for r in rows if "to 256, JPEG q50" in r["pipeline"]][:1]:
    print(f"| {r['pipeline']} | {r['jpeg_quality'] or '–'} | {r['mae']:.2f} | "
          f"{r['psnr_db']:.1f} | {r['exact']} | {r['coherence'][0]:.2f} / "
          f"{r['coherence'][1]:.2f} |")


if __name__ == "__main__":
  main()
