"""Throughput of the MUSDB18 training pipeline: segments/s and the CPU it takes.

Paper setting: 3 s stereo segments, batch 16, remix + mix-audio 2 + L/R swap + polarity flip
(vocals target, inputs vocals + accompaniment). Prints figures; asserts nothing.

  python bench/bench_pipeline.py                       # built-in data set (~1.5 min of audio)
  python bench/bench_pipeline.py --tracks=40 --seconds=200   # a bigger synthetic hq set first
  python bench/bench_pipeline.py --consumer_steps_per_s=4    # CPU share at a fixed step rate
  python bench/bench_pipeline.py --manual_dir=/data/musdb18 --data_dir=/data/tfds  # real data

CPU share = process CPU time (all threads: tf.data, numpy, TF runtime) / wall time, in cores.
On a shared machine, other processes slow the wall-clock figure; the CPU-ms per segment is the
steadier number (segments/s on N free cores ≈ 1000 N / that).
"""
import argparse
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resunet_jax import sources  # pylint: disable=g-import-not-at-top,wrong-import-position
from resunet_jax.data import pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from resunet_jax.data import recipes  # pylint: disable=g-import-not-at-top,wrong-import-position
from resunet_jax.data import synthetic  # pylint: disable=g-import-not-at-top,wrong-import-position


def _cpu_seconds():
  t = os.times()
  return t.user + t.system


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--segment_seconds", type=float, default=3.0)
  p.add_argument("--warmup_batches", type=int, default=5)
  p.add_argument("--batches", type=int, default=40)
  p.add_argument("--variant", default="stem", choices=("stem", "hq"))
  p.add_argument("--manual_dir", default="", help="'' = built-in data set")
  p.add_argument("--data_dir", default="")
  p.add_argument("--tracks", type=int, default=0, help="> 0: write this many synthetic train tracks")
  p.add_argument("--seconds", type=float, default=200.0, help="length of those tracks")
  p.add_argument("--workdir", default="", help="where --tracks data goes ('' = a temp dir)")
  p.add_argument("--gain_db", type=float, default=0.0, help="paper: 0 (off)")
  p.add_argument("--num_parallel_calls", type=int, default=2, help="batches made at once")
  p.add_argument("--num_workers", type=int, default=0, help="threads per batch; 0 = one per core")
  p.add_argument("--consumer_steps_per_s", type=float, default=0.0,
                 help="> 0: consume at this step rate and report the CPU share at that rate")
  args = p.parse_args()

  cfg = recipes.default_data_config()
  cfg.variant = args.variant
  cfg.segment_seconds = args.segment_seconds
  cfg.augment.gain_db = args.gain_db
  cfg.num_parallel_calls = args.num_parallel_calls
  cfg.num_workers = args.num_workers
  if args.tracks:
    work = args.workdir or tempfile.mkdtemp(prefix="bench_musdb_")
    manual = os.path.join(work, "manual")
    if not os.path.isdir(manual):
      print(f"writing {args.tracks} synthetic {args.seconds:.0f} s tracks to {manual} ...", flush=True)
      synthetic.write_musdb18(manual, "hq", tracks={"train": args.tracks, "test": 1},
                              seconds=args.seconds, seed=0)
    cfg.variant, cfg.manual_dir, cfg.data_dir = "hq", manual, os.path.join(work, "tfds")
  else:
    cfg.manual_dir, cfg.data_dir = args.manual_dir, args.data_dir

  t0 = time.time()
  it = pipeline.train_batches(cfg, seed=0, global_batch_size=args.batch)
  cache = it.sampler.cache
  hours = float(cache.lengths.sum()) / sources.SAMPLE_RATE / 3600
  print(f"data: {cache.num_tracks} tracks, {hours * 60:.1f} min of audio in the {cfg.train_split} "
        f"segment cache ({cache.nbytes / 2**20:.0f} MiB, {cache.path})")
  print(f"recipe: {recipes.recipe_from_config(cfg)}")
  for _ in range(args.warmup_batches):
    next(it)
  print(f"setup + warm-up: {time.time() - t0:.1f} s")

  period = 1.0 / args.consumer_steps_per_s if args.consumer_steps_per_s > 0 else 0.0
  cpu0, wall0 = _cpu_seconds(), time.perf_counter()
  for i in range(args.batches):
    batch = next(it)
    if period:  # a consumer (the accelerator step) that takes `period` per batch.
      time.sleep(max(0.0, wall0 + (i + 1) * period - time.perf_counter()))
  wall, cpu = time.perf_counter() - wall0, _cpu_seconds() - cpu0
  it.close()
  segments = args.batches * args.batch
  assert batch["mixture"].shape == (args.batch, cache_len(cfg), 2)
  load = os.getloadavg()
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  mode = f"consumer at {args.consumer_steps_per_s} steps/s" if period else "as fast as possible"
  print(f"\n{mode}: batch {args.batch} x {args.segment_seconds:g} s stereo, {segments} segments")
  print(f"  segments/s:        {segments / wall:8.1f}")
  print(f"  batches/s:         {args.batches / wall:8.2f}")
  print(f"  CPU share:         {cpu / wall:8.2f} cores of {os.cpu_count()} "
        f"({100 * cpu / wall / os.cpu_count():.0f}% of the machine)")
  print(f"  CPU per segment:   {1000 * cpu / segments:8.2f} ms")
  print(f"  peak RSS:          {rss:8.0f} MiB")
  print(f"  load average:      {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (other processes count too)")


def cache_len(cfg):
  return int(round(cfg.segment_seconds * sources.SAMPLE_RATE))


if __name__ == "__main__":
  main()
