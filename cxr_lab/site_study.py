"""The study of `site_estimate`'s intervals (`tools/shift_bench`): choice, then test/.

Every candidate (estimator x shift measure) is judged on the calibration folders of
`site_calibration` with each family's margin fitted without it; the rule of
docs/folder_shift.md chooses; then test/ and the full-resolution originals are judged
as in use (the whole validation split the reference, the margin from every family),
reported and never used to choose.
"""

from __future__ import annotations

import numpy as np

from cxr_jax.fits import folder_shift
from cxr_jax.fits import site_calibration
from cxr_jax.fits import site_estimate


def judge_set(fitted, predictor, data, method: str, measure: str, margin: float,
              gate: bool) -> dict:
  """A labelled set judged as `evaluate` would, with this candidate, margin and gate."""
  out = predictor.predict(data.images)
  scores = fitted.detector.score(out.features, data.images)
  accepted = fitted.detector.in_distribution(scores)
  flagged = fitted.calibration["site_estimate"]["reference_flagged"]
  settings = {"estimator": method, "shift_measure": measure, "margin": margin,
              "reference_flagged": flagged, "shift_gate": gate}
  folder_test = folder_shift.shift_test(fitted.shift, out.features, out.probs)
  result = site_estimate.judge(settings, fitted.shift, out.features, out.probs, accepted,
                               folder_test)
  truth = float(np.mean((out.probs >= fitted.shift.threshold) == (data.labels == 1)))
  low, high = result.get("bounds") or (0.0, 1.0)
  return {**result, "truth": truth, "covered": bool(low - 1e-12 <= truth <= high + 1e-12),
          "right": bool(not result["estimable"] or low - 1e-12 <= truth <= high + 1e-12)}


def _answers(fitted, predictor, judged: dict, after: dict, progress) -> dict:
  """A judged candidate's folders summarised, and the `after` sets judged with it."""
  out = {"margin": judged["margin_all"], "gate": judged["gate"], "folders": judged["folders"],
         "in_distribution": in_distribution(judged["folders"]),
         **{k: judged[k] for k in ("right", "far_all_right", "mean_width")}}
  for name, data in after.items():
    if data is not None and len(data):
      progress(f"Judging {name} ({len(data)} images) after the choice.")
      out[name] = judge_set(fitted, predictor, data, judged["method"], judged["measure"],
                            judged["margin_all"], judged["gate"])
  return out


def run(predictor, fitted, train, val, val_features, after: dict, photos=None,
        progress=print) -> dict:
  """Choice on the generated folders (the plan: no shift gate), then the `after` sets
  ({name: DecodedSet}); and the chosen candidate with the shift gate (the revision)."""
  progress("Calibration folders: the generated families and the validation halves.")
  recs = site_calibration.records(predictor, fitted.detector, fitted.shift, train, val,
                                  val_features, unlabelled={"photos": photos}
                                  if photos is not None and len(photos) else None,
                                  progress=progress)
  judged = [site_calibration.judge_candidate(recs, m, s, gate=False)
            for m, s in site_calibration.CANDIDATES]
  choice = site_calibration.choose(judged)
  chosen = next(j for j in judged if (j["method"], j["measure"]) == (choice["method"],
                                                                    choice["measure"]))
  revised = site_calibration.judge_candidate(recs, choice["method"], choice["measure"],
                                             gate=True)
  return {"candidates": [{k: v for k, v in j.items() if k != "folders"} for j in judged],
          "choice": choice, "plan": _answers(fitted, predictor, chosen, after, progress),
          "revision": _answers(fitted, predictor, revised, after, progress)}


def in_distribution(rows: list[dict]) -> dict:
  halves = [r for r in rows if r["family"] == site_calibration.IN_DISTRIBUTION]
  half_widths = [(r["high"] - r["low"]) / 2 for r in halves]
  return {"folders": len(halves), "median_half_width": float(np.median(half_widths)),
          "right": float(np.mean([r["right"] for r in halves])),
          "not_estimable": float(np.mean([not r["estimable"] for r in halves])),
          "covered": float(np.mean([r["covered"] for r in halves]))}


def by_family(rows: list[dict]) -> dict[str, dict]:
  """{family: folders, right, covered, not estimable, median half-width of the estimable}."""
  out = {}
  for family in dict.fromkeys(r["family"] for r in rows):
    f = [r for r in rows if r["family"] == family]
    est = [(r["high"] - r["low"]) / 2 for r in f if r["estimable"]]
    out[family] = {"folders": len(f), "n": f[0]["n"], "flagged": f[0]["n_ood"] / f[0]["n"],
                   "shifted": float(np.mean([r["shifted"] for r in f])),
                   "truth": f[0]["truth"], "right": float(np.mean([r["right"] for r in f])),
                   "covered": float(np.mean([r["covered"] for r in f])),
                   "not_estimable": float(np.mean([not r["estimable"] for r in f])),
                   "median_half_width": float(np.median(est)) if est else None,
                   "c": f[0]["c"], "interval": [f[0]["low"], f[0]["high"]]}
  return out


def _cell(x, fmt="{:.3f}") -> str:
  return "–" if x is None else fmt.format(x)


def _family_table(answers: dict) -> list[str]:
  lines = ["| family | folders | n | flagged | shifted | true accuracy | bounds (whole folder) "
           "| right | covered | not estimable | median half-width (estimable) | c without it |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for family, f in by_family(answers["folders"]).items():
    low, high = f["interval"]
    lines.append(f"| {family} | {f['folders']} | {f['n']} | {f['flagged']:.0%} | "
                 f"{f['shifted']:.0%} | {_cell(f['truth'])} | {low:.3f}-{high:.3f} | "
                 f"{f['right']:.0%} | {f['covered']:.0%} | {f['not_estimable']:.0%} | "
                 f"{_cell(f['median_half_width'])} | {_cell(f['c'], '{:.3g}')} |")
  i = answers["in_distribution"]
  lines += ["", f"Right on {answers['right']:.1%} of the labelled folders; every far-shift "
            f"folder right: {'yes' if answers['far_all_right'] else 'no'}. In distribution "
            f"({i['folders']} validation halves): median half-width "
            f"{i['median_half_width']:.3f}, covered {i['covered']:.0%}, right {i['right']:.0%}, "
            f"not estimable {i['not_estimable']:.0%}.", "",
            "| set (after the choice) | n | flagged | true accuracy | answer | right |",
            "|---|---|---|---|---|---|"]
  for name in ("test", "fullres_train_sample"):
    if name in answers:
      r = answers[name]
      answer = (f"{r['interval'][0]:.3f}-{r['interval'][1]:.3f}" if r["estimable"]
                else f"not estimable ({r.get('reason')})")
      lines.append(f"| {name} | {r['n']} | {r['n_flagged']} | {r['truth']:.3f} | {answer} | "
                   f"{'yes' if r['right'] else 'no'} |")
  return lines


def tables(result: dict) -> str:
  """SITE.md: the candidates, the choice, per family, in distribution, then test/; for the
  plan as written and for the revision (the shift gate)."""
  lines = ["## Candidates (the plan: each family judged with the margin fitted without it)",
           "", "| estimator | shift measure | right (labelled folders) | every far-shift "
           "folder right | mean width (not estimable = 1) | margin c (all families) |",
           "|---|---|---|---|---|---|"]
  for c in result["candidates"]:
    lines.append(f"| {c['method']} | {c['measure']} | {c['right']:.1%} | "
                 f"{'yes' if c['far_all_right'] else 'no'} | {c['mean_width']:.3f} | "
                 f"{c['margin_all']:.3g} |")
  ch = result["choice"]
  lines += ["", f"Chosen by the rule: **{ch['method']} with {ch['measure']}**"
            + ("" if ch["qualified"] else " (no candidate met the goals: the most right)"),
            "", "## The plan as written (no shift gate)", ""]
  lines += _family_table(result["plan"])
  lines += ["", "## The revision: a folder the folder test calls shifted is not estimable", ""]
  lines += _family_table(result["revision"])
  return "\n".join(lines) + "\n"
