"""What the programs share: running ``app.run`` with flags defined in this package, and user code.

Their flags are defined in ``resunet_jax.cli.<program>``, not in the script that runs them
(``train.py``, ``eval.py`` or a ``resunet-*`` console script), so absl's ``--help`` is told that
they are the program's own; and ``configs/*.py`` (which import each other as ``configs.<name>``)
are importable from wherever the program is started.

User code: ``--import=MODULE`` (repeatable) on every program (train.py, eval.py, resunet-separate,
resunet-compare; ``define_import_flag`` for the absl ones, ``add_import_argument`` for the argparse
ones) imports the user's modules before the program does anything else (before a config is checked
or a model is built or loaded), so that a mask or backbone they register (``masks.register``,
``backbones.register``) is found by name. MODULE is a module name importable from ``sys.path`` or
the current directory (``my_masks``, ``mypkg.masks``), or the path of a ``.py`` file
(``./my_masks.py``, imported as the module ``my_masks``, its folder added to ``sys.path``). A
saved model records the modules that registered its mask and backbone, and loading it without them
names the module and this flag (``models.from_description``); nothing named in a file is imported
automatically. ``import_user_modules`` is the mechanism, for other programs too.
"""
import importlib
import importlib.util
import os
import sys
import traceback
from typing import List, Sequence

from absl import app
from absl import flags

from resunet_jax import runtime

IMPORT_FLAG = "import"
IMPORT_HELP = (
    "a Python module to import before anything else, so that the masks and backbones it registers "
    "(masks.register, backbones.register) are found by name: a module name importable from "
    "sys.path or the current directory (my_masks, mypkg.masks) or the path of a .py file "
    "(./my_masks.py); repeatable")


class UserModuleError(ImportError):
  """A module given with --import could not be imported (the message names it and the flag)."""


def _import_file(path):
  """Imports the .py file ``path`` as the module named after it (its folder put on sys.path)."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no such file {path}")
  name = os.path.splitext(os.path.basename(path))[0]
  if not name.isidentifier():
    raise ImportError(f"{os.path.basename(path)!r} is not a module name (letters, digits, _)")
  loaded = sys.modules.get(name)
  if loaded is not None and os.path.abspath(getattr(loaded, "__file__", "") or "") == path:
    return loaded
  if loaded is not None:
    raise ImportError(f"a different module named {name!r} is already imported "
                      f"({getattr(loaded, '__file__', None) or 'built in'})")
  folder = os.path.dirname(path)
  if folder not in sys.path:
    sys.path.append(folder)  # its own imports of the modules beside it
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # registered functions then say __module__ == name
  try:
    spec.loader.exec_module(module)
  except BaseException:
    del sys.modules[name]
    raise
  return module


def import_user_modules(names: Sequence[str], *, flag="--" + IMPORT_FLAG, exit_on_error=False
                        ) -> List[object]:
  """Imports the user's modules (module names or .py paths, in order); returns them.

  Raises ``UserModuleError`` naming the module and ``flag`` when one cannot be imported; with
  ``exit_on_error`` the message goes to stderr and the process exits with status 2 instead (the
  programs' bad-argument status)."""
  modules = []
  for name in names or ():
    try:
      if name.endswith(".py") or os.sep in name or "/" in name:
        modules.append(_import_file(name))
      else:
        if os.getcwd() not in sys.path and "" not in sys.path:
          sys.path.append(os.getcwd())  # console scripts do not have it
        modules.append(importlib.import_module(name))
    except Exception as e:  # pylint: disable=broad-except
      own = isinstance(e, ModuleNotFoundError) and e.name is not None and (
          name == e.name or name.startswith(e.name + "."))  # the module itself is not there
      detail = "" if own or isinstance(e, FileNotFoundError) else (
          "\n" + "".join(traceback.format_exception(e)).rstrip())
      message = (f"{flag}={name}: cannot import it: {type(e).__name__}: {e} (expected a module "
                 f"name importable from sys.path or the current directory {os.getcwd()}, or the "
                 f"path of a .py file){detail}")
      if exit_on_error:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
      raise UserModuleError(message) from e
  return modules


def define_import_flag(flag_values=flags.FLAGS):
  """Defines ``--import`` (a multi-string absl flag) for the calling program's module; the
  programs run through ``run`` import its modules right after parsing the flags."""
  if IMPORT_FLAG not in flag_values:
    flags.DEFINE_multi_string(IMPORT_FLAG, [], IMPORT_HELP, flag_values=flag_values)
  # pylint: disable-next=protected-access
  caller = sys._getframe(1).f_globals.get("__name__", "__main__")
  flag_values.register_key_flag_for_module(caller, flag_values[IMPORT_FLAG])


def add_import_argument(parser):
  """Adds ``--import`` to an argparse parser (its values: ``args.user_modules``)."""
  parser.add_argument("--" + IMPORT_FLAG, dest="user_modules", action="append", default=[],
                      metavar="MODULE", help=IMPORT_HELP)
  return parser


def _unknown_override(argv):
  """The first ``--config.a.b=...`` whose key the config file does not have, and the valid keys
  at that level (config_flags raises a bare KeyError/AttributeError for it)."""
  path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if path is None or not os.path.isfile(path):
    return None
  spec = importlib.util.spec_from_file_location("_train_config", path)
  module = importlib.util.module_from_spec(spec)
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(path))))
  spec.loader.exec_module(module)
  config = module.get_config()
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    key = arg[len("--config."):].split("=", 1)[0]
    node = config
    for i, part in enumerate(key.split(".")):
      if not hasattr(node, "keys") or part not in node:
        where = ".".join(key.split(".")[:i]) or "config"
        choices = sorted(node.keys()) if hasattr(node, "keys") else []
        return key, where, choices
      node = node[part]
  return None


def parse_flags_with_config(argv, prog):
  """absl's flag parsing for a program with ``--config``: a bad flag or config override prints
  ``<prog>: error: ...`` (an unknown ``--config.a.b`` names the keys at that level) and exits 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:  # wrong type, missing required flag, ...
    print(f"{prog}: error: {e}\nPass --helpshort to see the flags.", file=sys.stderr)
    sys.exit(2)
  except (KeyError, AttributeError, TypeError, ValueError) as e:
    found = None
    try:
      found = _unknown_override(argv)
    except Exception:  # pylint: disable=broad-except
      pass
    if found:
      key, where, choices = found
      message = f"unknown config key '{key}' (keys of {where}: {', '.join(choices)})"
    else:
      message = f"bad config override: {e}"
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


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

  def parse_then_import(args):
    rest = flags_parser(args)
    if IMPORT_FLAG in flags.FLAGS:  # before main checks a config or builds a model
      import_user_modules(flags.FLAGS[IMPORT_FLAG].value, exit_on_error=True)
    return rest

  app.run(main, flags_parser=parse_then_import)
