"""``python -m resunet_jax.separate``: the command line of ``resunet_jax.cli.separate``."""
import sys

from resunet_jax.cli import separate

if __name__ == "__main__":
  sys.exit(separate.main())
