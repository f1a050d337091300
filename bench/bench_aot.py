"""The README's accelerator tables, made with resunet-aot (XLA's own estimates, not timings).

    python bench/bench_aot.py counters [--models paper,subband,mobilenet] \
        [--layouts natural,folded-unchunked,folded] [--remat none]
    python bench/bench_aot.py capacity [--models ...] [--remats none,unit,stage] [--gens v5e,...]

``counters``: per model and layout, the train step (bfloat16, 3 s segments, per-chip batch 2 on
one v5e chip, remat ``--remat``, default none) and the separation forward pass (one 30 s chunk):
FLOPs, bytes accessed and HBM per example, FLOP per byte, the roofline examples/s per chip, copies
(issue "A step that is not memory-bound on TPU"). Layouts: ``natural``, ``folded`` (what a TPU
runs: folded, and chunked below 8 examples per chip), ``folded-unchunked`` (folded, chunks off:
``folding.SUBLANES = 1``, the layout before chunks existed). MobileNet computes in the natural
layout whatever the field says: only its ``natural`` row is compiled.
``table REPORT.json ...``: one row per resunet-aot report (``--json``), as in the README.
``capacity``: the largest per-chip batch of 3 s segments (bfloat16) that fits one chip of each
generation, found by compiling (resunet_jax.aot.largest_fitting_batch, whose memory-line
predictions need 2-4 compiles per cell), and the FLOPs per example that the remat policy costs
against no remat (issue "The accelerator, measured from any machine").

Every compile is slow on a 2-core host (the paper model's train step: 10-60 min), so each result
is appended to a JSON-lines file (``--results``, default bench/aot_results.jsonl) as soon as it
exists and a rerun skips what is there; ``--print`` prints the tables from that file alone.
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

MODELS = {  # name -> (config file, overrides)
    "paper": ("configs/default.py", {}),
    "subband": ("configs/resunet143_subbandtime_vocals.py", {}),
    "mobilenet": ("configs/mobilenet_subbandtime_vocals.py", {}),
}
COMMON = {"model.dtype": "bfloat16", "data.segment_seconds": 3.0}


def _config(model, overrides):
  import importlib.util  # pylint: disable=g-import-not-at-top
  path, extra = MODELS[model]
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  sys.path.insert(0, ROOT)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.update_from_flattened_dict({**COMMON, **extra, **overrides})
  return config


def _load(path):
  out = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        if line.strip():
          r = json.loads(line)
          out[r["key"]] = r
  return out


def _append(path, record):
  with open(path, "a") as f:
    f.write(json.dumps(record, default=str) + "\n")


KEEP = ("fits", "per_chip_batch", "hbm_bytes_per_chip", "hbm_bytes_per_example", "temp_bytes",
        "argument_bytes", "flops_per_example", "bytes_accessed_per_example", "flops_per_byte",
        "examples_per_chip_per_second_roofline", "roofline_bound", "copies", "collectives",
        "compile_seconds", "temp_bytes_required", "hbm_capacity_bytes", "libtpu_version",
        "model", "audio_seconds_per_chip_per_second_roofline")


def _slim(report):
  return {k: report.get(k) for k in KEEP if k in report}


def counters(args, done):
  from resunet_jax import aot  # pylint: disable=g-import-not-at-top
  topology = aot.parse_topology("v5e:1x1")
  aot.configure_environment(topology)
  devices = aot.topology_devices(topology)
  from resunet_jax import folding  # pylint: disable=g-import-not-at-top
  for model in args.models.split(","):
    for layout in args.layouts.split(","):
      if model == "mobilenet" and layout != "natural":
        continue
      for step, batch in (("train", args.batch), ("separate", 1)):
        remat = args.remat if step == "train" else "none"
        key = f"counters|{model}|{layout}|{step}|{batch}|{remat}"
        if key in done:
          continue
        config = _config(model, {"model.layout": layout.replace("-unchunked", ""),
                                 "model.remat": remat})
        t = time.time()
        sublanes = folding.SUBLANES
        folding.SUBLANES = 1 if layout.endswith("-unchunked") else sublanes
        try:
          report, _ = aot.compile_report(config, topology, devices, step, batch)
        finally:
          folding.SUBLANES = sublanes
        record = {**_slim(report), "key": key, "model": model, "layout": layout, "step": step,
                  "remat": remat, "model_summary": report.get("model"),
                  "libtpu_version": aot.libtpu_version(), "jax_version": aot._jax_version(),
                  "wall_seconds": time.time() - t}
        _append(args.results, record)
        done[key] = record
        print(key, json.dumps(_slim(report), default=str), flush=True)


def capacity(args, done):
  from resunet_jax import aot  # pylint: disable=g-import-not-at-top
  for gen in args.gens.split(","):
    topology = aot.parse_topology(f"{gen}:1x1" if aot.CHIPS[gen].dims == 2 else f"{gen}:1x1x1")
    aot.configure_environment(topology)
    devices = aot.topology_devices(topology)
    for model in args.models.split(","):
      for remat in args.remats.split(","):
        key = f"capacity|{model}|{remat}|{gen}"
        if key in done:
          continue
        config = _config(model, {"model.remat": remat})
        start = args.start_batch
        hint = done.get(f"capacity|{model}|{remat}|v5e")  # scale another chip's answer
        if hint and hint.get("largest"):
          start = max(1, int(hint["largest"] * topology.chip.hbm_bytes / aot.CHIPS["v5e"].hbm_bytes))
        t = time.time()
        first, _ = aot.compile_report(config, topology, devices, "train", start)
        best, tried = aot.largest_fitting_batch(
            lambda b, c=config: aot.compile_report(c, topology, devices, "train", b)[0],
            start, first["fits"], limit=args.max_batch, capacity=topology.chip.hbm_bytes,
            first_report=first, log=lambda m: print(f"{key}: {m.strip()}", flush=True))
        best_report = tried.get(best, {})
        record = {"key": key, "model": model, "remat": remat, "generation": gen,
                  "largest": best, "at_largest": _slim(best_report),
                  "tried": {str(b): _slim(r) for b, r in sorted(tried.items())},
                  "wall_seconds": time.time() - t}
        _append(args.results, record)
        done[key] = record
        print(key, "largest", best, flush=True)


def print_tables(done):
  rows = [r for r in done.values() if r["key"].startswith("counters|")]
  if rows:
    print("| model | layout (chunks) | step (remat) | GB accessed / example | TFLOP / example | "
          "FLOP/B | HBM / example (GiB) | roofline ex/s/chip | copies |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: r["key"]):
      layout = f"{r['layout']} ({(r.get('model_summary') or {}).get('chunks', '?')})"
      step = f"{r['step']} ({r.get('remat', '?')})"
      if "flops_per_example" not in r:
        print(f"| {r['model']} | {layout} | {step} | does not fit | | | | | |")
        continue
      print(f"| {r['model']} | {layout} | {step} | "
            f"{r['bytes_accessed_per_example'] / 1e9:.1f} | {r['flops_per_example'] / 1e12:.3f} | "
            f"{r['flops_per_byte']:.1f} | {r['hbm_bytes_per_example'] / 2**30:.2f} | "
            f"{r['examples_per_chip_per_second_roofline']:.2f} | {r['copies']} |")
  rows = [r for r in done.values() if r["key"].startswith("capacity|")]
  if rows:
    base = {(r["model"], r["generation"]): r for r in rows if r["remat"] == "none"}
    print("\n| model | remat | generation | largest per-chip batch | HBM at it (GiB) | "
          "TFLOP / example | extra FLOPs vs none |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: (r["model"], r["remat"], r["generation"])):
      at = r.get("at_largest") or {}
      flops = at.get("flops_per_example")
      ref = (base.get((r["model"], r["generation"])) or {}).get("at_largest") or {}
      extra = (f"{100 * (flops / ref['flops_per_example'] - 1):+.0f} %"
               if flops and ref.get("flops_per_example") else "")
      hbm = f"{at['hbm_bytes_per_chip'] / 2**30:.2f}" if at.get("hbm_bytes_per_chip") else ""
      print(f"| {r['model']} | {r['remat']} | {r['generation']} | {r['largest']} | {hbm} | "
            f"{flops / 1e12 if flops else float('nan'):.3f} | {extra} |")


def table(paths):
  """One row per resunet-aot JSON report (``--json``): the README's tables are printed this way
  from the reports kept in bench/aot_reports/."""
  print("| report | config, overrides | topology | layout | remat | per-chip batch | fits | HBM / chip "
        "(GiB) | HBM / example (GiB) | TFLOP / example | GB accessed / example | FLOP/B | "
        "roofline ex/s/chip | copies | compile (s) |")
  print("|---|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
  for path in paths:
    with open(path) as f:
      r = json.load(f)
    name = os.path.splitext(os.path.basename(path))[0]
    config = os.path.basename(r.get("config") or "?") + "".join(
        " " + o.replace("--config.", "") for o in r.get("config_overrides", []))
    model = r.get("model") or {}
    batch = r["per_chip_batch"]
    if r.get("replicas", 1) > 1:
      batch = f"{batch} x {r['replicas_per_chip']} replicas"
    if "hbm_bytes_per_chip" not in r:
      need = r.get("temp_bytes_required")
      print(f"| {name} | {config} | {r['topology']} | {model.get('layout')} | {model.get('remat')} "
            f"| {batch} | **no** (temporaries {need / 2**30:.2f} GiB) | | | | | | | | "
            f"{r['compile_seconds']:.0f} |" if need else f"| {name} | {config} | no |")
      continue
    print(f"| {name} | {config} | {r['topology']} | {model.get('layout')} | {model.get('remat')} | "
          f"{batch} | {'yes' if r['fits'] else '**no**'} | {r['hbm_bytes_per_chip'] / 2**30:.2f} | "
          f"{r['hbm_bytes_per_example'] / 2**30:.2f} | {r['flops_per_example'] / 1e12:.3f} | "
          f"{r['bytes_accessed_per_example'] / 1e9:.1f} | {r['flops_per_byte']:.1f} | "
          f"{r['examples_per_chip_per_second_roofline']:.2f} | {r['copies']} | "
          f"{r['compile_seconds']:.0f} |")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("what", choices=["counters", "capacity", "print", "table"])
  parser.add_argument("reports", nargs="*", help="table: resunet-aot JSON reports")
  parser.add_argument("--models", default="paper,subband,mobilenet")
  parser.add_argument("--layouts", default="natural,folded-unchunked,folded")
  parser.add_argument("--remat", default="none", help="counters: the train step's remat")
  parser.add_argument("--remats", default="none,unit,stage")
  parser.add_argument("--gens", default="v5e,v6e,v5p,v4")
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--start_batch", type=int, default=8)
  parser.add_argument("--max_batch", type=int, default=512)
  parser.add_argument("--results", default=os.path.join(HERE, "aot_results.jsonl"))
  args = parser.parse_args()
  if args.what == "table":
    table(args.reports)
    return
  done = _load(args.results)
  if args.what == "counters":
    counters(args, done)
  elif args.what == "capacity":
    capacity(args, done)
  print_tables(done)


if __name__ == "__main__":
  main()
