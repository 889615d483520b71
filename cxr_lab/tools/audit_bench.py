"""Coverage and width of the site audit's intervals, by simulated audits of labelled folders.

  python -m cxr_lab.tools.audit_bench --workdir=workdirs/mobilenet_v2 \
      --output=benchmarks/audit [--test]

Writes `audit_bench.json` and `AUDIT.md` under --output. The design folders come from the
training and validation splits (cxr_lab/audit_sim.py); --test adds test/, scored only
after the method was fixed and never used to change it.
"""

from cxr_jax.tools import malloc_tuning
malloc_tuning.prepare_main(__name__)  # Before the heavy imports: a command may restart once.

import json  # pylint: disable=g-import-not-at-top,wrong-import-position
import logging
import os
import sys
import time

from absl import flags
import numpy as np

from cxr_jax import data as data_lib
from cxr_jax.fits import audit
from cxr_jax.fits import fit
from cxr_jax import registry
from cxr_jax.tools import startup
from cxr_lab import audit_sim

flags.DEFINE_string("workdir", None, "Trained workdir.", required=True)
flags.DEFINE_string("output", "benchmarks/audit", "Folder for audit_bench.json and AUDIT.md.")
flags.DEFINE_list("budgets", [str(b) for b in audit_sim.BUDGETS], "Labels per audit.")
flags.DEFINE_integer("trials", audit_sim.TRIALS, "Simulated audits per folder and budget.")
flags.DEFINE_bool("test", False, "Also audit test/ (reported, never used to change the method).")
FLAGS = flags.FLAGS


def machine() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
  except OSError:
    names = []
  return f"{names[0]}, {os.cpu_count()} cores" if names else "unknown CPU"


def _fmt(x, pct: bool = False) -> str:
  if x is None:
    return "–"
  return f"{x:.0%}" if pct else f"{x:.3f}"


def _cell(row: dict) -> str:
  """Coverage / median half-width, or why there is none."""
  if "coverage" not in row:
    return "cannot tell" if row["cannot_tell"] == 1 else "–"
  text = f"{row['coverage']:.0%} / {row['median_half_width']:.3f}"
  return text + (f" ({row['cannot_tell']:.0%} cannot tell)" if row["cannot_tell"] else "")


def folder_table(result: dict, budget: str) -> list[str]:
  lines = [f"### {budget} labels", "",
           "| folder | n | true acc / sens / spec | accuracy: coverage / median half-width "
           "| sensitivity | specificity | accuracy bias (± s.e.) |",
           "|---|---|---|---|---|---|---|"]
  for name, r in result["folders"].items():
    if budget not in r["budgets"]:
      continue
    b, t = r["budgets"][budget], r["truth"]
    acc = b["accuracy"]
    bias = (f"{acc['bias']:+.4f} (± {acc['bias_se']:.4f})" if "bias" in acc else "–")
    label = "**test/** (after the design was fixed)" if name == "test" else name
    lines.append(f"| {label} | {r['n']} | " + " / ".join(_fmt(t[m]) for m in audit.METRICS)
                 + " | " + " | ".join(_cell(b[m]) for m in audit.METRICS) + f" | {bias} |")
  return lines + [""]


def summary_table(result: dict) -> list[str]:
  design = {n: r for n, r in result["folders"].items() if n != "test"}
  lines = ["| labels | " + " | ".join(f"{m}: lowest coverage (folder)" for m in audit.METRICS)
           + " | accuracy median half-width: median / largest (folder) |",
           "|---|" + "---|" * (len(audit.METRICS) + 1)]
  for budget in result["budgets"]:
    cells = []
    for metric in audit.METRICS:
      coverage, name = audit_sim.worst(design, budget, metric)
      cells.append(f"{_fmt(coverage, True)} ({name})")
    widths = {n: r["budgets"][str(budget)]["accuracy"].get("median_half_width")
              for n, r in design.items() if str(budget) in r["budgets"]}
    widths = {n: w for n, w in widths.items() if w is not None}
    largest = max(widths, key=widths.get)
    lines.append(f"| {budget} | " + " | ".join(cells) + f" | {np.median(list(widths.values())):.3f}"
                 f" / {widths[largest]:.3f} ({largest}) |")
  return lines + [""]


def tables(result: dict) -> str:
  lines = [f"# Site audit: simulated audits ({result['trials']} per folder and budget)", "",
           f"Command: `{result['command']}`; machine: {result['machine']}; "
           f"{result['seconds']:.0f} s. Operating point {result['operating_point']} "
           f"(model threshold {result['raw_threshold']:.4f}).", "",
           "## Over the design folders (validation halves and generated folders; test/ excluded)",
           "", *summary_table(result), "## Goals (at 60 labels; half-width at 60 and 150)", ""]
  for key, g in result["goals"].items():
    detail = (f"worst {_fmt(g['worst'], True)} ({g['folder']})" if "worst" in g
              else f"largest {g['max']:.3f}; over the goal: {', '.join(g['failing']) or 'none'}")
    lines.append(f"- {key}: {'met' if g['met'] else '**not met**'} ({detail})")
  lines += ["", "## Per folder: coverage of the 95% interval / median half-width", ""]
  for budget in result["budgets"]:
    lines += folder_table(result, budget)
  return "\n".join(lines)


def main(argv):
  del argv  # None: startup.run refuses positional arguments.
  start = time.time()
  budgets = [int(b) for b in FLAGS.budgets]
  predictor = registry.load_predictor(FLAGS.workdir)
  train, val = data_lib.load_train_val(predictor.config.data)
  fitted = fit.load_or_fit(predictor, validation=val, train=train)
  point, threshold = fit.operating_point(fitted.calibration, predictor.config)
  logging.info("Scoring the design folders (validation halves and generated folders).")
  folders = audit_sim.design_folders(predictor, train, val)
  if FLAGS.test:
    test = data_lib.load(predictor.config.data, "test")
    folders["test"] = (np.asarray(predictor.predict(test.images).probs, np.float64), test.labels)
  results = {}
  for name, (probs, labels) in folders.items():
    logging.info("Simulating %d audits per budget of %s (%d images).", FLAGS.trials, name,
                 len(probs))
    results[name] = audit_sim.simulate(probs, labels, threshold, budgets, FLAGS.trials)
  result = {"workdir": FLAGS.workdir, "operating_point": point, "raw_threshold": threshold,
            "budgets": [str(b) for b in budgets], "trials": FLAGS.trials,
            "command": "python -m cxr_lab.tools.audit_bench " + " ".join(sys.argv[1:]),
            "machine": machine(), "folders": results, "goals": audit_sim.goals(results),
            "seconds": time.time() - start}
  os.makedirs(FLAGS.output, exist_ok=True)
  with open(os.path.join(FLAGS.output, "audit_bench.json"), "w") as f:
    json.dump(result, f, indent=1)
  text = tables(result)
  with open(os.path.join(FLAGS.output, "AUDIT.md"), "w") as f:
    f.write(text + "\n")
  print(text)


if __name__ == "__main__":
  startup.run(main)
