"""The benchmark's printed table (`python -m cxr_lab.tools.bench`)."""

from __future__ import annotations


def _fmt(value, spec: str = ".1f") -> str:
  return "-" if value is None else format(value, spec)


def recipe_lines(r: dict) -> list[str]:
  """The recipe's step, its roofs, its epoch and its Keras peer."""
  m = r["machine"]
  lines = [f"The recipe `make train` runs ({r['config']}): phase {r['phase']}, trainable "
           f"{r['trainable']}, BatchNorm {'updating' if r['train_batch_norm'] else 'frozen'}, "
           f"{r['image_size']}x{r['image_size']}, batch {r['batch_size']}, {r['dtype']}",
           f"  step {r['step_ms']:.1f} ms ({r['train_img_s']:.1f} img/s), compile "
           f"{r['compile_s']:.1f} s"]
  if r.get("keras"):
    lines += keras_lines(r["keras"])
  lines += [
      f"  compute roof: {r['flops_per_step'] / 1e9:.2f} GFLOP/step (XLA cost analysis) at "
      f"{m['matmul_flop_s'] / 1e9:.0f} GFLOP/s (measured {m['how'].split(';')[0]}) = "
      f"{1e3 * r['compute_roof_s']:.1f} ms: {100 * r['compute_fraction']:.0f}% reached",
      f"  memory roof: {r['bytes_per_step'] / 1e9:.2f} GB/step accessed (upper bound) at "
      f"{m['stream_bytes_s'] / 1e9:.1f} GB/s (measured streaming) = "
      f"{1e3 * r['memory_roof_s']:.1f} ms: {100 * r['memory_fraction']:.0f}% reached"
      + (" (over 100%: much of that traffic stays in cache, so the count overstates "
         "DRAM traffic and this roof bounds nothing)" if r["memory_fraction"] > 1 else ""),
      f"  epoch: {r['train_images'] // r['batch_size']} steps "
      f"{r['train_images'] // r['batch_size'] * r['step_ms'] / 1e3:.1f} s + validation "
      f"({r['val_images']} images) {r['validation_s']:.1f} s + resume point "
      f"{r['checkpoint_s']:.2f} s = {r['epoch_s']:.1f} s; {r['epochs']} epochs "
      f"{r['phase_s']:.0f} s", ""]
  return lines


def keras_lines(k: dict) -> list[str]:
  """The recipe's Keras peer and the Flax/Keras ratio with its spread over the repeats."""
  head = (f"  Keras, same size, batch and frozen layers ({len(k['frozen_layers'])}): "
          f"{k['train_step_ms']:.1f} ms ({k['train_img_s']:.1f} img/s, by {k['train_way']})")
  i = k.get("interleaved")
  if not i:  # A result from before the repeats were interleaved.
    return [f"{head}: Flax/Keras {k['ratio']:.2f}"]
  (q1, q3), (low, high) = k["ratio_iqr"], k["ratio_range"]
  return [f"{head}; Flax {i['flax_step_ms']:.1f} ms beside it (medians of chunks of "
          f"{i['steps']} steps)",
          f"  Flax/Keras ratio median {k['ratio']:.2f} (IQR {q1:.2f}\u2013{q3:.2f}, range "
          f"{low:.2f}\u2013{high:.2f}, {i['repeats']} repeats interleaved)"]


def _width_lines(result: dict) -> list[str]:
  s, env = result["settings"], result["env"]
  lines = [f"MobileNetV2 classifier, {s['image_size']}x{s['image_size']}, batch "
           f"{s['batch_size']}, {s['dtype']}, {s['steps']} timed steps after {s['warmup']} "
           f"warmup; ops {s['ops']} (CPU kernels: {s['cpu_kernels']}); all layers trained",
           f"device: {env['device_kind']} (backend {env['backend']}, {env['device_count']} "
           f"device(s), {env['cpu_count']} CPUs: {env.get('cpu', '?')})", ""]
  header = (f"{'alpha':>5} | {'train img/s':>11} {'compile s':>9} | {'Keras':>7} "
            f"{'Flax/Keras':>10} | {'infer img/s':>11} {'compile s':>9} | {'Keras':>7} "
            f"{'Flax/Keras':>10}")
  lines += [header, "-" * len(header)]
  for m in result["models"]:
    f, k, r = m["flax"], m.get("keras", {}), m.get("ratio", {})
    lines.append(
        f"{m['alpha']:>5g} | {f['train_img_s']:>11.1f} {f['train_compile_s']:>9.1f} | "
        f"{_fmt(k.get('train_img_s')):>7} {_fmt(r.get('train'), '.2f'):>10} | "
        f"{f['infer_img_s']:>11.1f} {f['infer_compile_s']:>9.1f} | "
        f"{_fmt(k.get('infer_img_s')):>7} {_fmt(r.get('infer'), '.2f'):>10}")
  return lines + [""]


def _width_notes(result: dict) -> list[str]:
  lines = []
  for m in result["models"]:
    lines.append(f"alpha {m['alpha']:g}: {m['params']:,} params; Flax dtype: {m['dtype']}")
    if "keras" in m:
      k = m["keras"]
      lines.append(f"  Keras ({k['dtype_policy']}): train by {k['train_way']} "
                   f"(probe ms/step {k['train_probe_ms']}), infer by {k['infer_way']} "
                   f"(probe ms/step {k['infer_probe_ms']}); first call {k['train_compile_s']:.1f}"
                   f" s / {k['infer_compile_s']:.1f} s; Keras steps have no augmentation and take "
                   "the 3-channel image")
    if "eval" in m:
      e = m["eval"]
      lines.append(f"  eval of {e['images']} resident images -> probabilities: "
                   f"{e['seconds']:.3f} s ({e['img_s']:.0f} img/s, batch {e['batch_size']}); "
                   f"first run incl. compile {e['first_run_s']:.1f} s; host-array path "
                   f"(inference.predict_batched) {e['host_path_seconds']:.3f} s")
  return lines


def _pipeline_lines(result: dict) -> list[str]:
  p = result["input_pipeline"]
  slowest = min(m["flax"]["train_img_s"] for m in result["models"])
  feed = min(p["host_to_device_img_s"], p["augment_img_s"])
  return ["", f"input pipeline ({p['images']} resident uint8 images): train_batches "
          f"{p['host_img_s']:.0f} img/s, + host->device {p['host_to_device_img_s']:.0f} img/s;"
          f" on-device augmentation alone {p['augment_img_s']:.0f} img/s",
          f"  vs slowest training {slowest:.1f} img/s: "
          + ("data is NOT the bottleneck" if p["host_to_device_img_s"] > slowest
             else "the HOST pipeline is the bottleneck")
          + f" (host->device feed / training = {p['host_to_device_img_s'] / slowest:.1f}x;"
          f" augmentation is inside the train step, {feed / slowest:.1f}x)"]


def _cached_lines(c: dict | None) -> list[str]:
  if not c:
    return []
  return ["", f"head phase, alpha {c['alpha']:g}, {c['images']} images x {c['epochs']} "
          f"epochs (projected from per-step times): frozen backbone every epoch "
          f"{c['full_s']:.1f} s ({c['frozen_step_ms']:.1f} ms/step) vs cached features "
          f"{c['cached_s']:.1f} s (backbone {c['feature_batch_ms']:.1f} ms/batch once, "
          f"head {c['head_step_ms']:.2f} ms/step): speed-up {c['speedup']:.1f}x "
          f"({c['speedup_with_compile']:.1f}x counting compiles)"]


def _env_lines(result: dict) -> list[str]:
  env = result["env"]
  return ["", "XLA_FLAGS: " + (env["xla_flags"] or "(none)"),
          "env: " + (", ".join(f"{k}={v}" for k, v in sorted(env["env"].items())
                               if k != "XLA_FLAGS") or "(none)"),
          "versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items())]


def _other_recipe_lines(first: dict, others: list[dict]) -> list[str]:
  lines = []
  for r in others:
    lines += recipe_lines(r)
    lines.insert(len(lines) - 1, f"  against {first['config']} in this run: step "
                 f"{first['step_ms'] / r['step_ms']:.2f}x faster, epoch "
                 f"{first['epoch_s'] / r['epoch_s']:.2f}x")
  return lines


def format_table(result: dict) -> str:
  lines = recipe_lines(result["recipe"]) if result.get("recipe") else []
  lines += _other_recipe_lines(result.get("recipe"), result.get("other_recipes") or [])
  lines += _width_lines(result) + _width_notes(result) + _pipeline_lines(result)
  lines += _cached_lines(result.get("cached_features")) + _env_lines(result)
  lines += [f"note: {n}" for n in result["notes"]]
  return "\n".join(lines)
