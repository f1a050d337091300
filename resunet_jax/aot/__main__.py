"""``python -m resunet_jax.aot``: the ``resunet-aot`` program (``resunet_jax.cli.aot``)."""
from resunet_jax.cli import aot

if __name__ == "__main__":
  aot.run()
