"""The package's layout: no import circles between resunet_jax modules, no import-time side effects.

Every module is parsed (not imported) and every import statement counts, wherever it is: at the
top, inside a function (the lazy imports), under ``if __name__ == "__main__"``. An import names the
module it loads: ``from resunet_jax.data import heldout`` is an edge to ``resunet_jax.data.heldout``,
``from resunet_jax.data.heldout import eval_tracks`` too, ``from resunet_jax.evaluation import
evaluate`` (a name, not a module) an edge to the package ``resunet_jax.evaluation`` itself. Python
runs a package's ``__init__`` before any of its submodules, so importing a submodule is not counted
as an import of its package (otherwise every package whose ``__init__`` re-exports its submodules
would be a circle).
"""
import ast
import json
import os
import subprocess
import sys
from typing import Dict, List, Tuple

import resunet_jax

PACKAGE_DIR = os.path.dirname(os.path.abspath(resunet_jax.__file__))
REPO = os.path.dirname(PACKAGE_DIR)

Edges = Dict[str, Dict[str, str]]  # module -> {imported module: "file:line" of the first import}


def _modules(root_dir: str, package: str) -> Dict[str, Tuple[str, bool]]:
  """{dotted module name: (path, is a package __init__)} for every .py file under root_dir."""
  out = {}
  for folder, dirs, files in os.walk(root_dir):
    dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__pycache__")))
    rel = os.path.relpath(folder, root_dir)
    parts = [package] + ([] if rel == "." else rel.split(os.sep))
    for f in sorted(files):
      if f.endswith(".py"):
        is_init = f == "__init__.py"
        name = ".".join(parts if is_init else parts + [f[:-3]])
        out[name] = (os.path.join(folder, f), is_init)
  return out


def import_graph(root_dir: str, package: str) -> Edges:
  """The imports between the modules of ``package`` (whose folder is ``root_dir``)."""
  modules = _modules(root_dir, package)

  def resolve(name):
    """The module ``name`` loads: itself if it is one, else the longest known prefix."""
    while name and name not in modules:
      name = name.rpartition(".")[0]
    return name or None

  edges = {}
  for module, (path, is_init) in modules.items():
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), path)
    own = edges.setdefault(module, {})
    here = module if is_init else module.rpartition(".")[0]  # the package of relative imports
    for node in ast.walk(tree):
      targets = []
      if isinstance(node, ast.Import):
        targets = [resolve(a.name) for a in node.names if a.name.split(".")[0] == package]
      elif isinstance(node, ast.ImportFrom):
        if node.level:
          base = here
          for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
          base = ".".join(p for p in (base, node.module) if p)
        else:
          base = node.module or ""
        if base.split(".")[0] != package:
          continue
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else resolve(base)
                   for a in node.names]
      for target in targets:
        if target and target != module:
          own.setdefault(target, f"{os.path.relpath(path, os.path.dirname(root_dir))}:"
                                 f"{node.lineno}")
  return edges


def cycles(edges: Edges) -> List[List[str]]:
  """One circle [a, b, ..., a] through each strongly connected group of modules (Tarjan)."""
  index, low, stack, on_stack, groups = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(edges.get(v, {})):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      group = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        group.append(w)
        if w == v:
          break
      if len(group) > 1:
        groups.append(sorted(group))

  for v in sorted(edges):
    if v not in index:
      visit(v)

  out = []
  for group in groups:  # the shortest way back from the group's first module to itself
    members, start = set(group), group[0]
    paths, seen = [[start]], {start}
    while paths:
      path = paths.pop(0)
      nexts = sorted(w for w in edges.get(path[-1], {}) if w in members)
      if start in nexts:
        out.append(path + [start])
        break
      for w in nexts:
        if w not in seen:
          seen.add(w)
          paths.append(path + [w])
  return out


def _describe(cycle: List[str], edges: Edges) -> str:
  return " -> ".join(f"{a} ({edges[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def test_no_import_circles_between_resunet_jax_modules():
  edges = import_graph(PACKAGE_DIR, "resunet_jax")
  assert len(edges) > 40 and "resunet_jax.checkpoint" in edges  # the whole package was read
  found = cycles(edges)
  assert not found, "import circles:\n  " + "\n  ".join(_describe(c, edges) for c in found)


def test_checkpoint_and_training_do_not_import_each_other():
  edges = import_graph(PACKAGE_DIR, "resunet_jax")
  assert not [t for t in edges["resunet_jax.checkpoint"] if t.startswith("resunet_jax.training")]


def test_the_graph_sees_relative_lazy_and_from_imports(tmp_path):
  """A planted circle through a relative import, a function-level import and a name import."""
  pkg = tmp_path / "pkg"
  (pkg / "sub").mkdir(parents=True)
  (pkg / "__init__.py").write_text("from pkg.a import thing\n")
  (pkg / "a.py").write_text("from .sub import b\nthing = 1\n")
  (pkg / "sub" / "__init__.py").write_text("")
  (pkg / "sub" / "b.py").write_text("def f():\n  from ..c import g\n  return g\n")
  (pkg / "c.py").write_text("import os\nfrom pkg import a  # a module\nfrom pkg.sub import b\n"
                            "from pkg import thing  # a name: the package itself\n")
  edges = import_graph(str(pkg), "pkg")
  assert edges["pkg"] == {"pkg.a": "pkg/__init__.py:1"}
  assert set(edges["pkg.c"]) == {"pkg.a", "pkg.sub.b", "pkg"}
  assert edges["pkg.sub.b"] == {"pkg.c": "pkg/sub/b.py:2"}
  assert sorted(map(tuple, cycles(edges))) == [("pkg", "pkg.a", "pkg.sub.b", "pkg.c", "pkg")]
  (pkg / "c.py").write_text("import os\n")
  assert cycles(import_graph(str(pkg), "pkg")) == []


def test_importing_the_package_changes_no_environment_variable():
  # No import-time XLA_FLAGS (or any other variable): the entry points set their flags themselves.
  code = (
      "import os, json\n"
      "before = dict(os.environ)\n"
      "import resunet_jax, resunet_jax.models, resunet_jax.masks, resunet_jax.backends\n"
      "import resunet_jax.separate, resunet_jax.evaluation, resunet_jax.compare\n"
      "import resunet_jax.training.loop, resunet_jax.data.pipeline, resunet_jax.cli.train\n"
      "after = dict(os.environ)\n"
      "changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))\n"
      "print(json.dumps(changed))\n")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       check=True, cwd=REPO)
  assert json.loads(out.stdout.strip().splitlines()[-1]) == []
