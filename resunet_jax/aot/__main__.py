# ``python -m resunet_jax.aot``: the ``resunet-aot`` program (``resunet_jax.cli.aot``). No module
# docstring on purpose: --help then shows the program's own (``cli.program.run`` fills it in).
from resunet_jax.cli import aot

if __name__ == "__main__":
  aot.run()
