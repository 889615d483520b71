"""The 40 full-resolution originals judged through candidate decoding paths, by both references.

  python benchmarks/folder_shift_canonical/decode_paths.py \
      --workdir=workdirs/mobilenet_v2 --output=benchmarks/folder_shift_canonical

Each path takes an original to the model input (the last step always the shipped one,
Pillow bilinear to image_size); the folder of 40 is judged against validation by the
plain reference (principal directions of the training features) and by the
export-invariant one (`folder_shift.whitened_directions` with `export_variants`). Both
come from the training and validation splits only. Writes decode_paths.json and prints
the table.
"""

import argparse
import glob
import io
import json
import os

import numpy as np
from PIL import Image

from cxr_jax import data as data_lib
from cxr_jax.evaluation import export_variants
from cxr_jax.evaluation import fit
from cxr_jax.evaluation import folder_shift
from cxr_jax.evaluation import predictor as predictor_lib

B = Image.BILINEAR


def _jpeg(img, quality):
  buf = io.BytesIO()
  img.save(buf, "JPEG", quality=quality)
  return Image.open(buf).convert("L")


PATHS = {
    "direct to the model size (shipped)": lambda o: o,
    "224 bilinear first": lambda o: o.resize((224, 224), B),
    "224 bicubic first": lambda o: o.resize((224, 224), Image.BICUBIC),
    "224 box (area) first": lambda o: o.resize((224, 224), Image.BOX),
    "224 bilinear, JPEG q75 (the copies' format)": lambda o: _jpeg(o.resize((224, 224), B), 75),
    "256 bilinear, JPEG q50, 224 bilinear, JPEG q75": lambda o: _jpeg(
        _jpeg(o.resize((256, 256), B), 50).resize((224, 224), B), 75),
}


def judge(ref, out, labels) -> dict:
  r = folder_shift.shift_test(ref, out.features, out.probs)
  return {"p_value": r["p_value"], "shifted": r["shifted"],
          "features_p": r["features"]["p_value"], "features_effect": r["features"]["effect_size"],
          "outputs_p": r["outputs"]["p_value"],
          "accuracy": folder_shift.accuracy(labels, out.probs, ref.threshold)}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--fullres_dir", default="data/chest_xray_fullres_sample/train")
  parser.add_argument("--copies_dir", default="data/chest_xray/train")
  parser.add_argument("--output", default=os.path.dirname(os.path.abspath(__file__)))
  args = parser.parse_args()
  predictor = predictor_lib.load_predictor(args.workdir)
  train, val = data_lib.load_train_val(predictor.config.data)
  invariant = fit.load_or_fit(predictor, validation=val, train=train).shift
  out_val = predictor.predict(val.images)
  plain = folder_shift.Reference.fit(predictor.predict(train.images).features, out_val.features,
                                     out_val.probs, val.labels, invariant.threshold,
                                     invariant.temperature)
  files = sorted(glob.glob(os.path.join(args.fullres_dir, "*", "*")))
  labels = np.array([int(os.path.basename(os.path.dirname(p)) == "PNEUMONIA") for p in files])
  size = predictor.preprocess.image_size
  originals = [Image.open(p).convert("L") for p in files]
  copies = [Image.open(os.path.join(args.copies_dir, *p.split(os.sep)[-2:])).convert("L")
            for p in files]
  sets = {name: [fn(o) for o in originals] for name, fn in PATHS.items()}
  sets["the 224 px copies (shipped path)"] = copies
  result = {}
  for name, images in sets.items():
    x = np.stack([np.asarray(i.resize((size, size), B)) for i in images])[..., None]
    out = predictor.predict(x)
    result[name] = {"plain": judge(plain, out, labels), "invariant": judge(invariant, out, labels)}
  result["export_variants"] = {"pairs": export_variants.N_PAIRS,
                               "size_factors": export_variants.SIZE_FACTORS,
                               "jpeg_qualities": export_variants.JPEG_QUALITIES}
  with open(os.path.join(args.output, "decode_paths.json"), "w") as f:
    json.dump(result, f, indent=1)
  print("| path of the 40 originals | plain reference: p (features effect, outputs p) | "
        "export-invariant: p (features effect, outputs p) | accuracy |\n|---|---|---|---|")
  for name, r in result.items():
    if name != "export_variants":
      cells = [f"{r[k]['p_value']:.3g} ({r[k]['features_effect']:.1f}, {r[k]['outputs_p']:.3g})"
               for k in ("plain", "invariant")]
      print(f"| {name} | {cells[0]} | {cells[1]} | {r['plain']['accuracy']:.3f} |")


if __name__ == "__main__":
  main()
