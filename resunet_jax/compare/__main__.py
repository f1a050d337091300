"""``python -m resunet_jax.compare``: the ``resunet-compare`` program (``cli.main``)."""
import sys

from resunet_jax.compare import cli

if __name__ == "__main__":
  sys.exit(cli.main())
