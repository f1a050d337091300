"""Separation end to end: seconds per minute of audio, and peak memory against song length.

    python bench/bench_separate.py [--archs ...] [--seconds 60] [--big_seconds 30]
                                   [--long_minutes 10] [--no_bytesep]

Every measurement runs in a fresh subprocess (its own allocator, thread pools and RSS high-water
mark, ``ru_maxrss`` of RUSAGE_SELF), on a wav file of music-like test audio (random weights: speed
does not depend on them):

* ours: ``SongSeparator.separate_file`` (decode, chunking, model, overlap-add, writing the wav), timed
  after the model is compiled and called once (the first call's one-time costs are shown apart); with the authors' chunking (30 s chunks, 15 s hop: the same
  computation as bytesep's Separator) and with the default cross-fade (30 s chunks, 10 s overlap)
  when that needs a different number of chunks. mobilenet runs with and without tcmalloc, the
  143-layer models with tcmalloc only (to keep the whole bench near 15 minutes);
* bytesep: ``bytesep.separator.Separator(model, 1_323_000, batch_size=1, "cpu")`` on the same file,
  read and written with soundfile, under tcmalloc (``bench/bytesep_shim.py`` builds the model),
  after one warm-up forward pass on a 30 s segment;
* memory: ours (default cross-fade, ``--memory_arch``) on a 1-minute and a ``--long_minutes`` file.

The 143-layer models are timed on ``--big_seconds`` of audio (default 30 s = one chunk for both
implementations; 60 s would be three chunks of 30 s and ~3x the time); mobilenet on ``--seconds``.
"""
import argparse
import os
import resource
import sys
import tempfile
import time

import workers  # bench/workers.py: this script's folder is first on sys.path

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ARCHS = ("mobilenet_subbandtime", "resunet143_subbandtime", "resunet143_ismir2021")
RATE = 44100
SEGMENT = 1_323_000  # bytesep's 30 s


def _pqmf_dir():
  shared = os.environ.get("RESUNET_SHARED") or os.path.join(ROOT, "..", "shared")
  return os.path.join(shared, "data", "pqmf")


def write_test_audio(path, seconds, seed=0):
  """Stereo 16-bit wav of tones and noise, written in blocks (a 10-minute file never sits in RAM)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  freqs = rng.uniform(60, 4000, 8)
  total, block = int(seconds * RATE), 10 * RATE
  with sf.SoundFile(path, "w", samplerate=RATE, channels=2, subtype="PCM_16") as f:
    for start in range(0, total, block):
      t = (start + np.arange(min(block, total - start))) / RATE
      x = sum(0.05 * np.sin(2 * np.pi * fr * t) * (1 + np.sin(0.3 * fr * t)) for fr in freqs)
      x = np.stack([x, 0.8 * x], 1) + 0.01 * rng.standard_normal((len(t), 2))
      f.write(x.astype(np.float32))


def _peak_mb():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def worker_ours(arch, path, schemes):
  from resunet_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.set_xla_cpu_flags()
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  from resunet_jax import backends, models  # pylint: disable=g-import-not-at-top
  from resunet_jax import separate  # pylint: disable=g-import-not-at-top
  model = models.build_model(arch, conv_backend=backends.resolve("auto"))  # as the CLI
  variables = models.init_variables(model, jax.random.key(0, impl="rbg"))
  audio_s = sf.info(path).frames / RATE
  out = {"audio_s": audio_s, "runs": {}}
  start = time.perf_counter()
  first = separate.SongSeparator.from_model(model, variables, ["vocals"], scheme=schemes[0])
  out["compile_s"] = time.perf_counter() - start
  out["rss_after_compile_mb"] = _peak_mb()
  # The first call of the compiled function carries one-time costs (measured up to ~25 s for the
  # paper model: buffer first touch, packing of the weights); the timed runs come after it.
  start = time.perf_counter()
  first.chunk_fn(np.zeros((1, first.plan.chunk, 2), np.float32))
  out["first_call_s"] = time.perf_counter() - start
  with tempfile.TemporaryDirectory() as tmp:
    for scheme in schemes:
      plan = separate.make_plan(scheme)
      if plan.chunk != first.plan.chunk:
        raise ValueError("schemes must share the chunk length (one compiled function)")
      sep = separate.SongSeparator(first.chunk_fn, ["vocals"], plan, channels=2,
                                   min_length=first.min_length)
      start = time.perf_counter()
      sep.separate_file(path, os.path.join(tmp, scheme))
      seconds = time.perf_counter() - start
      out["runs"][scheme] = {"seconds": seconds, "per_minute": seconds / audio_s * 60,
                             "chunks": plan.num_chunks(int(audio_s * RATE))}
  out["peak_rss_mb"] = _peak_mb()
  return out


def worker_bytesep(arch, path):
  sys.path.insert(0, HERE)
  import bytesep_shim  # pylint: disable=g-import-not-at-top
  reason = bytesep_shim.available()
  if reason:
    raise RuntimeError(reason)
  import numpy as np  # pylint: disable=g-import-not-at-top
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from bytesep.separator import Separator  # pylint: disable=g-import-not-at-top
  model = bytesep_shim.make_model(arch, pqmf_dir=_pqmf_dir()).eval()
  separator = Separator(model, segment_samples=SEGMENT, batch_size=1, device="cpu")
  start = time.perf_counter()
  with torch.no_grad():  # warm-up on one segment, as ours gets its first call before timing
    model({"waveform": torch.zeros(1, 2, SEGMENT)})
  first_call_s = time.perf_counter() - start
  with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    x, rate = sf.read(path, dtype="float32", always_2d=True)
    y = separator.separate({"waveform": x.T})
    sf.write(os.path.join(tmp, "vocals.wav"), np.asarray(y).T, rate, subtype="PCM_16")
    seconds = time.perf_counter() - start
  audio_s = len(x) / RATE
  return {"audio_s": audio_s, "seconds": seconds, "per_minute": seconds / audio_s * 60,
          "threads": torch.get_num_threads(), "peak_rss_mb": _peak_mb(),
          "first_call_s": first_call_s}


def run_worker(kind, arch, path, schemes=(), tcmalloc=False):
  return workers.run(__file__, ["--worker", kind, "--archs", arch, "--input", path, "--schemes",
                                *schemes], tcmalloc=tcmalloc)


def _load():
  return os.getloadavg()[0]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--archs", nargs="+", default=list(ARCHS))
  parser.add_argument("--seconds", type=float, default=60.0, help="audio for mobilenet")
  parser.add_argument("--big_seconds", type=float, default=30.0,
                      help="audio for the 143-layer models")
  parser.add_argument("--long_minutes", type=float, default=10.0)
  parser.add_argument("--memory_arch", default="mobilenet_subbandtime")
  parser.add_argument("--no_bytesep", action="store_true")
  parser.add_argument("--worker", choices=("ours", "bytesep"))
  parser.add_argument("--input")
  parser.add_argument("--schemes", nargs="*", default=["authors", "crossfade"])
  args = parser.parse_args()

  if args.worker:
    try:
      if args.worker == "ours":
        result = worker_ours(args.archs[0], args.input, args.schemes)
      else:
        result = worker_bytesep(args.archs[0], args.input)
    except Exception as e:  # pylint: disable=broad-except
      result = {"error": f"{type(e).__name__}: {e}"}
    workers.report(result)
    return

  have_tcmalloc = workers.have_tcmalloc()
  began = time.perf_counter()
  print(f"# CPU cores: {os.cpu_count()}; tcmalloc: {'yes' if have_tcmalloc else 'no'}; "
        f"load average at start: {_load():.1f}", flush=True)
  with tempfile.TemporaryDirectory() as tmp:
    files = {}

    def audio(seconds):
      if seconds not in files:
        files[seconds] = os.path.join(tmp, f"song_{seconds:g}s.wav")
        write_test_audio(files[seconds], seconds)
      return files[seconds]

    print(f"{'model':24s} {'audio':>6s} {'impl':28s} {'chunks':>6s} {'s':>8s} {'s/min audio':>11s} "
          f"{'compile s':>9s} {'1st call s':>10s} {'peak MB':>8s} {'load':>5s}", flush=True)

    def row(arch, seconds, impl, chunks, sec, per_min, compile_s, first_s, peak):
      print(f"{arch:24s} {seconds:5.0f}s {impl:28s} {chunks:>6} {sec:8.1f} {per_min:11.1f} "
            f"{compile_s:>9} {first_s:10.1f} {peak:8.0f} {_load():5.1f}", flush=True)

    for arch in args.archs:
      seconds = args.seconds if arch == "mobilenet_subbandtime" else args.big_seconds
      path = audio(seconds)
      variants = [True] if not have_tcmalloc else (
          [False, True] if arch == "mobilenet_subbandtime" else [True])
      for tcm in variants:
        ours = run_worker("ours", arch, path, ("authors", "crossfade"), tcmalloc=tcm)
        if "error" in ours:
          print(f"{arch:24s} ours failed: {ours['error']}", flush=True)
          continue
        for scheme, r in ours["runs"].items():
          row(arch, seconds, f"ours {scheme}{' +tcmalloc' if tcm else ''}", r["chunks"],
              r["seconds"], r["per_minute"], f"{ours['compile_s']:.1f}", ours["first_call_s"],
              ours["peak_rss_mb"])
      if not args.no_bytesep:
        theirs = run_worker("bytesep", arch, path, tcmalloc=have_tcmalloc)
        if "error" in theirs:
          print(f"{arch:24s} bytesep not timed: {theirs['error']}", flush=True)
        else:
          chunks = 2 * -(-int(seconds * RATE) // SEGMENT) - 1
          row(arch, seconds, "bytesep Separator" + (" +tcmalloc" if have_tcmalloc else ""),
              chunks, theirs["seconds"], theirs["per_minute"], "-", theirs["first_call_s"],
              theirs["peak_rss_mb"])

    print(f"\n# peak memory vs song length: ours, {args.memory_arch}, default cross-fade, "
          "wav in, wav out", flush=True)
    for seconds in (60.0, args.long_minutes * 60):
      path = audio(seconds)
      r = run_worker("ours", args.memory_arch, path, ("crossfade",), tcmalloc=have_tcmalloc)
      if "error" in r:
        print(f"{seconds / 60:5.1f} min: failed: {r['error']}", flush=True)
        continue
      run = r["runs"]["crossfade"]
      print(f"{seconds / 60:5.1f} min song: peak RSS {r['peak_rss_mb']:7.0f} MB (after compile "
            f"{r['rss_after_compile_mb']:.0f} MB); {run['seconds']:.1f} s = "
            f"{run['per_minute']:.1f} s per minute of audio", flush=True)
  print(f"# total bench time {time.perf_counter() - began:.0f} s; load average at end "
        f"{_load():.1f}")


if __name__ == "__main__":
  main()
