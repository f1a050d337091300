"""Command line: separate audio files with a model directory or training work directory.

  python -m resunet_jax.separate song.mp3 folder/ --checkpoint models/vocals --out separated/
  resunet-separate song.mp3 --checkpoint models/vocals --out separated/ --residual --format flac
  resunet-separate song.mp3 --checkpoint /tmp/run_r4 --replica 2 --out separated/  # replica 2

Every input is checked (header, output paths) before any work; nothing is written when one is bad.
A model with a mask or backbone of one's own needs ``--import=MODULE`` (the module that registers
it, imported before the model is loaded; the error without it names the module).
Exit status: 0 all written, 1 some inputs failed while separating, 2 nothing done (bad arguments,
inputs or checkpoint).
"""
import argparse
import os
import sys

from resunet_jax import audio
from resunet_jax import backends
from resunet_jax import runtime
from resunet_jax import separate
from resunet_jax.cli import program


def _parser():
  p = argparse.ArgumentParser(
      prog="python -m resunet_jax.separate",
      description="Separate audio files (any length, any format ffmpeg or soundfile reads) with a "
                  "resunet_jax model directory or training work directory.")
  p.add_argument("inputs", nargs="+", metavar="IN", help="audio files and/or folders")
  p.add_argument("--checkpoint", required=True,
                 help="model directory (python -m resunet_jax.convert) or training workdir")
  p.add_argument("--replica", type=int, default=None, metavar="K",
                 help="a replicated training run's (config.replicas > 1) replica K "
                      "(0 <= K < replicas; required for such a run)")
  p.add_argument("--out", required=True, help="output folder: OUT/<song>/<source>.<format>")
  p.add_argument("--format", default="wav", choices=["wav", "flac"])
  p.add_argument("--subtype", default=None,
                 help="sample format: PCM_16 (default), PCM_24, FLOAT (wav only)")
  p.add_argument("--residual", action="store_true",
                 help="also write mixture minus the estimates (e.g. accompaniment of a vocals model)")
  p.add_argument("--scheme", default="crossfade", choices=separate.SCHEMES,
                 help="crossfade: windowed overlap-add (default); authors: bytesep's chunking "
                      "(30 s, 15 s hop, central halves kept) for comparisons")
  p.add_argument("--chunk_seconds", type=float, default=separate.DEFAULT_CHUNK_SECONDS)
  p.add_argument("--overlap_seconds", type=float, default=separate.DEFAULT_OVERLAP_SECONDS,
                 help="cross-fade length (<= chunk/2); ignored by --scheme authors")
  p.add_argument("--batch_size", type=int, default=1, help="chunks per model call")
  p.add_argument("--conv_backend", default=backends.AUTO,
                 choices=[backends.AUTO] + sorted(backends.BACKENDS),
                 help="convolution backend (resunet_jax.backends): auto (default: cpu on CPU "
                      "hosts, else xla), xla, or cpu")
  p.add_argument("--force", action="store_true", help="overwrite existing outputs")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  program.add_import_argument(p)
  return p


def main(argv=None):
  args = _parser().parse_args(argv)
  runtime.set_xla_cpu_flags()  # before JAX starts its CPU backend (a user module may import it)
  try:
    program.import_user_modules(args.user_modules)  # before the model is loaded
  except program.UserModuleError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  ext = "." + args.format
  subtype = args.subtype or "PCM_16"
  if subtype == "FLOAT" and args.format == "flac":
    print("error: FLAC cannot store float samples; use --subtype PCM_16 or PCM_24", file=sys.stderr)
    return 2
  errors = []
  try:
    files = separate.expand_inputs(args.inputs)
  except audio.AudioError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2

  from resunet_jax import checkpoint  # pylint: disable=g-import-not-at-top
  try:
    model, variables, desc = checkpoint.load_model(
        args.checkpoint, replica=args.replica, conv_backend=backends.resolve(args.conv_backend))
  except (OSError, ValueError, KeyError) as e:
    print(f"error: {args.checkpoint}: not a usable checkpoint: {e}", file=sys.stderr)
    return 2
  sources = list(desc["sources"])
  names = sources + ([separate.residual_name(sources)] if args.residual else [])
  minimum = separate.min_samples(model)

  # Everything the headers and the file system already tell, before any work: nothing is written
  # when one of the inputs is bad.
  seen = {}
  for f in files:
    try:
      separate.check_input(audio.probe(f), minimum)
      for p in separate.output_paths(f, args.out, names, ext).values():
        if p in seen:
          raise audio.AudioError(f"{f}: would write {p}, as {seen[p]} does (same song name)")
        seen[p] = f
        if os.path.exists(p) and not args.force:
          raise FileExistsError(f"{p} exists; not overwriting it (use --force)")
    except (audio.AudioError, FileExistsError, ValueError) as e:
      errors.append(str(e))
  if errors:
    for e in errors:
      print(f"error: {e}", file=sys.stderr)
    print("nothing was written", file=sys.stderr)
    return 2

  separator = separate.SongSeparator.from_model(
      model, variables, sources, scheme=args.scheme, chunk_seconds=args.chunk_seconds,
      overlap_seconds=args.overlap_seconds, batch_size=args.batch_size)
  failed = 0
  for f in files:
    try:
      written = separator.separate_file(f, args.out, ext=ext, subtype=subtype,
                                        residual=args.residual, overwrite=args.force,
                                        progress_bar=not args.quiet)
    except (audio.AudioError, FileExistsError) as e:
      print(f"error: {e} (nothing written for it)", file=sys.stderr)
      failed += 1
      continue
    if not args.quiet:
      print(f"{f} -> {os.path.dirname(next(iter(written.values())))}/"
            f"{{{','.join(written)}}}{ext}")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
