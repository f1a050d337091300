"""What the absl programs share: running ``app.run`` with flags defined in this package.

Their flags are defined in ``resunet_jax.cli.<program>``, not in the script that runs them
(``train.py``, ``eval.py`` or a ``resunet-*`` console script), so absl's ``--help`` is told that
they are the program's own; and ``configs/*.py`` (which import each other as ``configs.<name>``)
are importable from wherever the program is started.
"""
import os
import sys

from absl import app
from absl import flags

from resunet_jax import runtime


def config_root_on_path(argv):
  """Puts the folder above a ``--config=<folder>/<file>.py``'s folder on ``sys.path`` (appended,
  when missing: ``python train.py`` in the checkout already has it first)."""
  for arg in argv[1:]:
    if arg.startswith("--config=") and os.path.isfile(arg.split("=", 1)[1]):
      root = os.path.dirname(os.path.dirname(os.path.abspath(arg.split("=", 1)[1])))
      if root not in sys.path:
        sys.path.append(root)


def run(main, flags_module, doc, flags_parser=app.parse_flags_with_usage):
  """``app.run(main)`` for a program whose flags ``flags_module`` (a module name) defines.

  Sets the XLA:CPU flags first (``runtime.set_xla_cpu_flags``, before JAX starts its CPU backend):
  the programs set them when they run, importing their modules changes nothing."""
  runtime.set_xla_cpu_flags()
  argv = sys.argv
  config_root_on_path(argv)
  for flag in flags.FLAGS.get_key_flags_for_module(flags_module):  # what --help lists
    flags.FLAGS.register_key_flag_for_module(argv[0], flag)
  main_module = sys.modules["__main__"]
  if not main_module.__doc__:  # a console script: --help shows the program's docstring
    main_module.__doc__ = doc
  app.run(main, flags_parser=flags_parser)
