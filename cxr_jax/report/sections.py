"""REPORT.md, one small pure renderer per section.

Each `render_*` takes the collected report (a dict; see `report.build_report`) and the
figure paths relative to the report folder, and returns the section's Markdown
lines. Nothing here computes a number, writes a file or changes its input: a new
section is one more function here and one line in `SECTIONS`.

Over 350 lines because the report's sections are one renderer each, in the report's
order: one place to read or change what the report says.
"""

from __future__ import annotations

import datetime

from cxr_jax.metrics import scoring

METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc")
# The project's goal for the selected model on test, at its default operating point:
# {metric: (">=" or "<=", value)}.
GOALS = {"accuracy": (">=", 0.90), "specificity": (">=", 0.75), "roc_auc": (">=", 0.98),
         "ece": ("<=", 0.08)}
# Published results on the same 624 test images: (reference, accuracy, ROC AUC, how the
# model was selected). Only those selected without test/ compare with this report.
SPLIT_WORDS = {"random": "random patients",
               "blocked": "one contiguous block of patient ids per file-name series"}
REFERENCES = [
    ("Google AutoML Vision (MedMNIST v2), 28 px upsampled", 0.946, 0.991, "validation"),
    ("MedMNIST+ (Doerrich et al. 2024), DINO ViT-B/16 linear probe, 224 px", 0.916, 0.989,
     "validation"),
    ("MedMNIST+ (Doerrich et al. 2024), ResNet-18 fine-tuned, 224 px", 0.911, 0.980,
     "validation"),
    ("MedMNIST+ (Doerrich et al. 2024), ResNet-18 fine-tuned, 128 px", 0.899, 0.979,
     "validation"),
    ("MedMNIST v2, ResNet-50, 28 px upsampled", 0.884, 0.962, "validation"),
    ("MedMNIST v2, ResNet-18, 28 px", 0.854, 0.944, "validation"),
    ("Kermany et al. 2018 (Cell), Inception V3 transfer", 0.928, 0.968,
     "**test/** (the checkpoint that did best on it: not comparable)"),
]
AT_VAL = f"at_{scoring.VALIDATION_THRESHOLD}"
METRICS_HEADER = ("| model | n | accuracy | precision | recall (sensitivity) | specificity | "
                  "F1 | ROC AUC |\n|---|---|---|---|---|---|---|---|")


def f(v, digits: int = 3) -> str:
  return "–" if v is None else f"{v:.{digits}f}"


def with_ci(m: dict, ci: dict | None, key: str) -> str:
  if ci is None or ci.get(key) is None:
    return f(m.get(key))
  lo, hi = ci[key]
  return f"{f(m.get(key))} [{lo:.3f}, {hi:.3f}]"


def img(path: str | None, alt: str) -> str:
  return "" if path is None else f"![{alt}]({path})\n"


def duration(seconds) -> str:
  if seconds is None:
    return "–"
  return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


def metrics_row(name: str, scores: dict, point: str, mark: str = "") -> str:
  m, ci = scores[point], scores.get("ci95") if point == AT_VAL else None
  return "| " + " | ".join([f"{name}{mark}", str(m["n"])]
                           + [with_ci(m, ci, k) for k in METRICS]) + " |"


def render_header(report: dict, figs: dict) -> list[str]:
  del figs
  lines = ["# Pediatric chest X-rays, NORMAL vs PNEUMONIA: model comparison\n",
           f"Generated {report.get('generated') or f'{datetime.datetime.now():%Y-%m-%d %H:%M}'}"
           + (f" by `{report['command']}`" if report.get("command") else "")
           + (f" in {duration(report['wall_seconds'])}" if report.get("wall_seconds") else "")
           + ".\n"]
  if report.get("max_per_class"):
    lines.append(f"> **Subset run**: validation, test and external sets limited to "
                 f"{report['max_per_class']} images per class. Not the full benchmark.\n")
  lines.append("PNEUMONIA is the positive class. The best model (lowest validation log loss), "
               "every decision threshold, the temperature and the out-of-distribution "
               "acceptance threshold are chosen on the patient-grouped **validation** split "
               "carved out of `train/` (the detector itself on the training split); the test "
               "split and the external folders are only scored, nothing is fitted on them. "
               "Intervals are 95% percentile bootstrap intervals over test images, at the "
               "validation-F1 threshold.\n")
  return lines


def render_goal(report: dict, figs: dict) -> list[str]:
  del figs
  lines = ["## Goal\n"]
  best = report.get("best")
  if best is None:
    return lines + ["No trained model was available: nothing to compare.\n"]
  r = next(r for r in report["results"] if r["name"] == best)
  m = r["test"][r["default_point"]]
  # ECE of the probabilities users see (after temperature scaling); the rest at the point.
  values = {k: r["test"].get("ece_calibrated") if k == "ece" else m.get(k) for k in GOALS}
  met = {k: v is not None and (v >= g if op == ">=" else v <= g)
         for (k, (op, g)), v in zip(GOALS.items(), values.values())}
  wanted = ", ".join(f"{k.replace('_', ' ')} {op} {g}" for k, (op, g) in GOALS.items())
  lines.append(f"Best model by validation log loss: **{best}** ({r['description']}). Goal for "
               f"it on test at its default operating point ({r['default_name']}, threshold "
               f"{r['default_threshold']:.3f}): {wanted} — "
               f"**{'met' if all(met.values()) else 'not met'}** (one run; the spread over "
               "seeds is in docs/results.md).\n")
  lines.append("| metric | goal | test value | |\n|---|---|---|---|")
  for k, (op, g) in GOALS.items():
    lines.append(f"| {k} | {op} {g} | {f(values[k])} | {'met' if met[k] else '**not met**'} |")
  lines.append("\nReference points (published results on this dataset's 624 test images):\n")
  lines.append("| reference | accuracy | ROC AUC | selected on |\n|---|---|---|---|")
  lines += [f"| {ref} | {acc:.3f} | {auc:.3f} | {how} |" for ref, acc, auc, how in REFERENCES]
  lines.append(f"| this report: {best} | {f(m['accuracy'])} | {f(m['roc_auc'])} | "
               "validation |\n")
  return lines


def render_data(report: dict, figs: dict) -> list[str]:
  eda = report.get("eda")
  if not eda:
    return []
  how = SPLIT_WORDS[eda["split"]]
  lines = table_start("Data", f"`{eda['data_dir']}`; validation = {eda['val_fraction']:.0%} "
                      f"of `train/` per class, grouped by patient, {how} "
                      f"(seed {eda['split_seed']}).",
                      ["split", "NORMAL", "PNEUMONIA", "total", "% PNEUMONIA", "patients"])
  for split, c in eda["counts"].items():
    total = sum(c.values())
    lines.append(f"| {split} | {c['NORMAL']} | {c['PNEUMONIA']} | {total} | "
                 f"{100 * c['PNEUMONIA'] / max(total, 1):.1f}% | {eda['patients'][split]} |")
  lines += ["", img(figs.get("class_counts"), "images per class and split")]
  s = eda["sizes"]
  if s.get("n"):
    lines.append(f"Original sizes of the {s['n']} images of `{s['folder']}`: width "
                 f"{s['width_min']}–{s['width_max']} (median {s['width_median']:.0f}), height "
                 f"{s['height_min']}–{s['height_max']} (median {s['height_median']:.0f}), "
                 f"median aspect ratio {s['aspect_median']:.2f}; every model sees a square "
                 "resize.\n")
    lines.append(img(figs.get("image_sizes"), "image sizes"))
  else:
    lines.append(f"Image sizes: {s.get('note', 'no images')} (`{s.get('folder')}`).\n")
  if s.get("unreadable"):
    lines.append(f"{len(s['unreadable'])} unreadable file(s) there: "
                 + ", ".join(f"`{b['path']}`" for b in s["unreadable"]) + "\n")
  lines.append(img(figs.get("samples"), "sample images per class"))
  return lines


def render_cues(report: dict, figs: dict) -> list[str]:
  """What separates the classes without looking at the lungs (fits/cues.py)."""
  found = report.get("cues")
  if not found:
    return []
  lines = table_start(
      "Acquisition cues: what separates the classes without the lungs?", "Each cue's ROC AUC "
      "for PNEUMONIA on its own (0.5: no information; far from 0.5 on training: a shortcut a "
      "model can learn). `python -m cxr_jax.tools.cue_report` adds the model's sensitivity to "
      "each cue and any labelled folder.",
      ["cue", "AUC train", "AUC validation", "median NORMAL (train)", "median PNEUMONIA (train)"])
  for cue, row in found["train"].items():
    medians = [(row[c] or {}).get("median") for c in ("NORMAL", "PNEUMONIA")]
    cells = [f(row["auc"], 2), f(found["validation"][cue]["auc"], 2)] + [
        "–" if m is None or m != m else f"{m:.4g}" for m in medians]
    lines.append(f"| {cue} | " + " | ".join(cells) + " |")
  return lines + ["", img(figs.get("cues"), "acquisition cues by class")]


def render_models(report: dict, figs: dict) -> list[str]:
  del figs
  by_name = {r["name"]: r for r in report["results"]}
  lines = ["## Models\n",
           "| model | description | workdir | status | parameters | training time | epochs "
           "(best) |\n|---|---|---|---|---|---|---|"]
  for st in report.get("statuses", []):
    r = by_name.get(st["name"])
    params = f"{r['params']:,}" if r and r["params"] is not None else "–"
    epochs = f"{r['epochs_run']} ({r['best_epoch']})" if r and r["epochs_run"] else "–"
    lines.append(f"| {st['name']} | {st['description']} | `{st['workdir']}` | {st['status']}"
                 f"{': ' + st['reason'] if st['status'] == 'trained' else ''} | {params} | "
                 f"{duration(r['train_seconds']) if r else '–'} | {epochs} |")
  skipped = [st for st in report.get("statuses", []) if st["status"] == "skipped"]
  if skipped:
    lines.append("\nNot in this report: " + "; ".join(f"**{st['name']}** ({st['reason']})"
                                                      for st in skipped) + ".")
  return lines + [""]


def table_start(title: str, intro: str, columns: list[str]) -> list[str]:
  """A section's heading, its paragraph, and the header of its table."""
  return [f"## {title}\n", f"{intro}\n", "| " + " | ".join(columns) + " |\n|"
          + "---|" * len(columns)]


def render_comparison(report: dict, figs: dict) -> list[str]:
  results, best = report["results"], report.get("best")
  if not results:
    return []
  lines = table_start(
      "Comparison", "Selection uses the **validation log loss only**; ★ marks the selected "
      "model. Test columns at each model's default operating point; the 95% bootstrap CIs "
      "are at its validation-F1 threshold (Operating points).",
      ["model", "val log loss", "val AUC", "operating point"]
      + [f"test {k}" for k in ("accuracy", "precision", "recall", "specificity", "F1",
                               "ROC AUC")])
  for r in results:
    v = r["validation"][AT_VAL]
    m = r["test"][r["default_point"]]
    lines.append(f"| {r['name']}{' ★' if r['name'] == best else ''} | **{f(r['val_loss'])}** "
                 f"| {f(v['roc_auc'])} | {r['default_name']} | "
                 + " | ".join(f(m.get(k)) for k in METRICS) + " |")
  first = results[0]
  lines.append(f"\nValidation: {first['validation']['n']} images "
               f"{first['validation']['counts']}; test: {first['test']['n']} images "
               f"{first['test']['counts']}.")
  lines += [f"{r['name']}: {len(r['test']['skipped_files'])} unreadable test file(s) left out."
            for r in results if r["test"].get("skipped_files")]
  return lines + ["", img(figs.get("roc"), "ROC curves on test"),
                  img(figs.get("pr"), "precision-recall curves on test"),
                  img(figs.get("confusion"), "confusion matrices on test")]


def render_seeds(report: dict, figs: dict) -> list[str]:
  """Mean ± standard deviation over seeds, from the sweep the workdirs belong to."""
  del figs
  seeds = report.get("seeds") or {}
  if not seeds:
    return []
  columns = (("validation/0.5/loss", "val log loss"), ("test/0.5/accuracy", "test accuracy"),
             ("test/0.5/f1", "test F1"), ("test/0.5/roc_auc", "test ROC AUC"),
             ("test/validation_threshold/accuracy", "test accuracy @ val-F1 thr"),
             ("test/validation_threshold/specificity", "test specificity @ val-F1 thr"))
  lines = ["## Spread over seeds\n",
           "Mean ± standard deviation over the sweep's seeds (test at 0.5 and at the "
           "validation-F1 threshold; reported, never used to choose).\n",
           "| model | seeds | " + " | ".join(c for _, c in columns) + " |",
           "|---|---|" + "---|" * len(columns)]
  for name, agg in seeds.items():
    n = max((v["n"] for v in agg.values()), default=0)
    cells = [f"{agg[k]['mean']:.3f} ± {agg[k]['std']:.3f}" if k in agg else "–"
             for k, _ in columns]
    lines.append(f"| {name} | {n} | " + " | ".join(cells) + " |")
  return lines + [""]


def render_operating_points(report: dict, figs: dict) -> list[str]:
  del figs
  results, target = report["results"], report["target_sensitivity"]
  if not results:
    return []
  lines = ["## Operating points\n",
           f"Every rule is fitted on validation only (0.5 is fitted on nothing): the "
           f"F1-optimal threshold, the middle of the F1 plateau, Youden's J, and the highest "
           f"threshold reaching {target:.0%} sensitivity on validation (a screening "
           f"setting); the default is each config's `operating_point`. Test sensitivity may "
           f"fall short of a target: nothing was fitted on test.\n",
           "| model | rule | threshold | test sensitivity | test specificity | test accuracy "
           "| test F1 |\n|---|---|---|---|---|---|---|"]
  rules = (("val_f1", AT_VAL), ("0.5", "at_0.5"), ("f1_plateau", "at_f1_plateau"),
           ("youden", "at_youden"))
  for r in results:
    for rule, key in rules + (("sensitivity", r["sensitivity_point"]),):
      m = r["test"].get(key)
      if m is None:
        continue
      mark = " (default)" if key == r["default_point"] else ""
      lines.append(f"| {r['name']} | {rule}{mark} | {m['threshold']:.3f} | {f(m['recall'])} | "
                   f"{f(m['specificity'])} | {f(m['accuracy'])} | {f(m['f1'])} |")
  lines.append("\n95% bootstrap intervals at the validation-F1 threshold:\n")
  lines.append(METRICS_HEADER)
  lines += [metrics_row(r["name"], r["test"], AT_VAL) for r in results]
  return lines + [""]


def render_calibration(report: dict, figs: dict) -> list[str]:
  if not report["results"]:
    return []
  lines = table_start(
      "Calibration", "Expected calibration error (15 equal-width bins of the PNEUMONIA "
      "probability) before and after temperature scaling; T minimises the validation negative "
      "log-likelihood of sigmoid(logit / T). Temperature scaling is monotonic: thresholds, ROC "
      "and labels are unchanged.",
      ["model", "T", "val ECE before", "val ECE after", "test ECE before", "test ECE after"])
  for r in report["results"]:
    v, t = r["validation"], r["test"]
    lines.append(f"| {r['name']} | {r['temperature']:.3f} | {f(v['ece'])} | "
                 f"{f(v['ece_calibrated'])} | {f(t['ece'])} | {f(t['ece_calibrated'])} |")
  return lines + ["", img(figs.get("reliability"), f"reliability diagram of {report.get('best')}")]


def render_training(report: dict, figs: dict) -> list[str]:
  results = report["results"]
  if not results:
    return []
  lines = ["## Training curves\n"]
  for r in results:
    key = f"training_{r['name']}"
    if figs.get(key):
      lines.append(f"**{r['name']}**: {r['epochs_run']} epochs, best epoch {r['best_epoch']}, "
                   f"{duration(r['train_seconds'])}.\n")
      lines.append(img(figs[key], f"training curves {r['name']}"))
    else:
      lines.append(f"**{r['name']}**: no per-epoch history (fitted in one step, "
                   f"{duration(r['train_seconds'])}).\n")
  return lines


def render_gradcam(report: dict, figs: dict) -> list[str]:
  if not report["results"]:
    return []
  best = report.get("best")
  lines = ["## Grad-CAM\n"]
  cams = {k[len("gradcam_"):]: v for k, v in figs.items() if k.startswith("gradcam_")}
  if cams:
    lines.append("Grad-CAM of the PNEUMONIA logit at the last spatial feature map, on the most "
                 "confident test cases of each kind (top row correct: TP, TN; bottom row "
                 "wrong: FP, FN) at the validation-F1 threshold. p is the model's "
                 "probability.\n")
    for name, figure in cams.items():
      lines.append(f"**{name}**{' (selected model)' if name == best else ''}\n")
      lines.append(img(figure, f"Grad-CAM {name}"))
  else:
    lines.append("No convolutional network in this report: Grad-CAM needs one (not available "
                 "for pca_logreg).\n")
  lines += [f"- {note}" for note in report.get("gradcam_notes", [])]
  return lines + [""]


def _external_rows(report: dict, ext_name: str) -> tuple[list, list]:
  rows = [(r["name"], r["externals"].get(ext_name)) for r in report["results"]]
  errors = [(n, s) for n, s in rows if s is None or "error" in s]
  good = [(n, s) for n, s in rows if s is not None and "error" not in s]
  return good, errors


def render_external(report: dict, ext_name: str, folder: str) -> list[str]:
  target, best = report["target_sensitivity"], report.get("best")
  good, errors = _external_rows(report, ext_name)
  lines = [f"### {ext_name} (`{folder}`)\n"]
  if not good:
    return lines + [f"Not scored: {errors[0][1]['error'] if errors and errors[0][1] else 'no model'}\n"]
  first = good[0][1]
  lines.append(f"{first['n']} images {first['counts']}; **{first['n_skipped']} unreadable "
               f"file(s)**" + (":" if first["n_skipped"] else "."))
  lines += [f"- `{item['path']}`: {item['reason']}" for item in first["skipped_files"]]
  by_name = {r["name"]: r for r in report["results"]}
  lines += ["", "At the validation-F1 threshold:\n", METRICS_HEADER]
  lines += [metrics_row(n, s, AT_VAL, " ★" if n == best else "") for n, s in good]
  lines.append("\n| model | sensitivity @ default | specificity @ default | "
               f"sensitivity @ {target:.0%}-sens thr | specificity @ {target:.0%}-sens thr | "
               "ECE before | ECE after | flagged OOD | accuracy on accepted |\n"
               "|---|---|---|---|---|---|---|---|---|")
  for n, s in good:
    r = by_name[n]
    a, b = s[r["default_point"]], s[r["sensitivity_point"]]
    accepted = (s.get("accepted") or {}).get(r["default_point"])
    lines.append(f"| {n} | {f(a['recall'])} | {f(a['specificity'])} | {f(b['recall'])} | "
                 f"{f(b['specificity'])} | {f(s['ece'])} | {f(s['ece_calibrated'])} | "
                 f"{s['ood']['fraction_flagged']:.1%} | "
                 f"{f(accepted['accuracy']) if accepted else '–'} |")
  lines += [f"\n{n}: not scored ({s['error'] if s else 'missing'})." for n, s in errors]
  return lines + [""]


def render_externals(report: dict, figs: dict) -> list[str]:
  del figs
  externals = report.get("externals") or {}
  if not externals:
    return []
  lines = ["## External folders\n",
           "Scored with each model's validation-chosen thresholds and temperature; nothing "
           "refitted.\n"]
  for ext_name, folder in externals.items():
    lines += render_external(report, ext_name, folder)
  return lines


def _flagged(result: dict | None) -> str:
  if not result or "ood" not in result:
    return "–"
  shift = result["ood"].get("folder_shift") or {}
  mark = " ⚠ unlike training" if shift.get("shifted") else ""
  return f"{result['ood']['fraction_flagged']:.1%}{mark}"


def render_ood(report: dict, figs: dict) -> list[str]:
  results = report["results"]
  if not results:
    return []
  externals = list(report.get("externals") or {})
  lines = ["## Is this folder like the training data?\n",
           "Each model's out-of-distribution detector is fitted on the training split's "
           "features; an image is flagged when its score is above the 99% quantile of "
           "validation's (config.ood). Flagged images get no diagnosis from `predict`. "
           "⚠ marks a folder with more flagged images than the ~1% expected of images like "
           "the training data (one-sided binomial test, p < 0.001): trust no metric there "
           "without a local evaluation. "
           "Risk-coverage: the error rate among the images kept as fewer are kept, ranked by "
           "confidence or by the OOD score; AURC is its area (lower is better).\n",
           "| model | detector | flagged: validation | test | "
           + " | ".join(externals) + (" | " if externals else "")
           + "test AURC by confidence | test AURC by OOD score |\n|"
           + "---|" * (6 + len(externals))]
  for r in results:
    rc = r["test"]["risk_coverage"]
    cells = [r["name"], r["test"]["ood"]["kind"], _flagged(r["validation"]), _flagged(r["test"])]
    cells += [_flagged(r["externals"].get(e)) for e in externals]
    cells += [f(rc["by_confidence"]["aurc"]), f(rc["by_ood_score"]["aurc"])]
    lines.append("| " + " | ".join(cells) + " |")
  lines.append("")
  lines += _folder_table(results, externals)
  lines.append(img(figs.get("accuracy_estimates"),
                   "label-free point estimate (the interval's centre, no margin) against truth"))
  for r in results:
    lines.append(img(figs.get(f"ood_{r['name']}"), f"OOD score distributions {r['name']}"))
    lines.append(img(figs.get(f"risk_coverage_{r['name']}"), f"risk-coverage {r['name']}"))
  return lines


def _folder_cell(result: dict | None) -> str:
  folder = (result or {}).get("folder_test")
  if not folder or "accuracy_interval" not in folder:
    return "–"
  answer = folder["accuracy_interval"]
  mark = "⚠ shifted" if folder["shifted"] else "not shifted"
  said = ("{:.3f}-{:.3f}".format(*answer["interval"]) if answer.get("estimable")
          else "not estimable without labels (audit)")
  true = "" if answer.get("true") is None else f", true {answer['true']:.3f}"
  return f"{mark} (p {folder['p_value']:.2g}); accuracy {said}{true}"


def _folder_table(results, externals) -> list[str]:
  """The folder-level test against validation and the label-free estimate beside the truth."""
  return ["The per-image flag misses a folder whose images are each typical but together "
          "different. The folder-level test compares the whole folder with validation (MMD on "
          "the model's features, KS on its probabilities; shifted when the Bonferroni p < 0.05) "
          "and bounds the accuracy without labels (docs/folder_shift.md): flagged images count "
          "as anywhere from wrong to right, the rest get a margin for the measured shift; an "
          "interval wider than ±0.10 is not estimable without labels, and `python -m "
          "cxr_jax.tools.audit --workdir=W --data_dir=FOLDER --budget=60 --output=audit.csv` "
          "answers instead. A shifted folder differs from validation, so validation's numbers "
          "may not carry over.\n",
          "| model | test | " + " | ".join(externals) + (" | " if externals else "")
          + "\n|" + "---|" * (2 + len(externals))] + [
              "| " + " | ".join([r["name"], _folder_cell(r["test"])]
                                + [_folder_cell(r["externals"].get(e)) for e in externals])
              + " |" for r in results] + [""]


def _adapted_row(name: str, set_name: str, result: dict, point: str) -> str:
  own, a = result[point], result["adapted"]
  cells = [f"{f(own[k])}" for k in ("accuracy", "recall", "specificity")]
  if a["method"] == "none":
    return (f"| {name} | {set_name} | " + " | ".join(cells) + f" | not applied: {a['reason']} "
            "| – | – | – |")
  m = a["at_0.5"]
  return (f"| {name} | {set_name} | " + " | ".join(cells) + f" | {a['method']} ({a['reason']})"
          f" | {f(m['accuracy'])} | {f(m['recall'])} | {f(m['specificity'])} |")


def render_adaptation(report: dict, figs: dict) -> list[str]:
  del figs
  rows = [_adapted_row(r["name"], set_name, result, r["default_point"])
          for r in report["results"]
          for set_name, result in [("test", r["test"]), *r["externals"].items()]
          if result.get("adapted")]
  if not rows:
    return []
  return ["## Label-free site adaptation (reported apart)\n",
          f"`--adapt={report.get('adapt')}`: each folder's own images (never its labels) "
          "re-estimate the BatchNorm statistics and the pneumonia rate "
          "(`cxr_jax/inference/adaptation.py`). These are not the model's own numbers.\n",
          "| model | folder | accuracy | sensitivity | specificity | adaptation | adapted "
          "accuracy | adapted sensitivity | adapted specificity |",
          "|---|---|---|---|---|---|---|---|---|", *rows, ""]


SECTIONS = (render_header, render_goal, render_data, render_cues, render_models, render_comparison,
            render_seeds, render_operating_points, render_calibration, render_ood, render_training,
            render_gradcam, render_externals, render_adaptation)


def render(report: dict, figs: dict) -> str:
  """The whole REPORT.md."""
  return "\n".join(line for section in SECTIONS for line in section(report, figs)) + "\n"
