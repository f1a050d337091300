"""Command line: build the musdb18 TFDS dataset offline from a manual directory.

  python -m resunet_jax.data.build --variant=hq --manual_dir=/data/musdb18hq [--data_dir=DIR]
  python -m resunet_jax.data.build --variant=stem --manual_dir=/data/musdb18 --cache_split=train_full
  resunet-build-data --variant=hq --manual_dir=/data/musdb18hq   # the same tool, installed by pip

``--cache_split`` also writes the random-access segment cache that the training pipeline reads
(otherwise it is written on the first ``train_batches`` call).
"""
import argparse
import logging

from resunet_jax.data import musdb18
from resunet_jax.data import segment_cache


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variant", choices=("stem", "hq"), default="stem")
  parser.add_argument("--manual_dir", required=True)
  parser.add_argument("--data_dir", default="", help="TFDS data dir ('' = TFDS default).")
  parser.add_argument("--cache_split", default="", help="e.g. train_full: also write its segment cache.")
  parser.add_argument("--cache_dir", default="", help="segment cache root ('' = next to the data).")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO)
  builder = musdb18.build(args.variant, args.manual_dir, args.data_dir)
  print(builder.info.splits)
  print("TFDS data:", builder.data_dir)
  if args.cache_split:
    cache = segment_cache.open_or_build(builder, args.cache_split, cache_dir=args.cache_dir)
    print(f"segment cache: {cache.path} ({cache.num_tracks} tracks, {cache.nbytes / 2**30:.2f} GiB)")


if __name__ == "__main__":
  main()
