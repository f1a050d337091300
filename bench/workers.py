"""How the benchmarks run each measurement: in a fresh Python process of its own.

A fresh process per measurement keeps allocators, thread pools and the RSS high-water mark of one
side from leaking into the other's figures, and lets the parent preload tcmalloc for some of them.
The child prints one line ``RESULT <json>``; ``run`` returns that object, or ``{"error": ...}`` with
the last lines of the child's output when it has none.
"""
import json
import os
import subprocess
import sys

TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
_PREFIX = "RESULT "


def have_tcmalloc() -> bool:
  return os.path.exists(TCMALLOC)


def run(script, argv, *, tcmalloc=False, env=None) -> dict:
  """Runs ``python script *argv`` and returns its result (tcmalloc preloaded when asked and
  installed; ``env`` adds variables to the current environment)."""
  child_env = dict(os.environ, **(env or {}))
  if tcmalloc and have_tcmalloc():
    child_env["LD_PRELOAD"] = TCMALLOC
  proc = subprocess.run([sys.executable, os.path.abspath(script), *argv], env=child_env,
                        capture_output=True, text=True, check=False)
  for line in reversed(proc.stdout.splitlines()):
    if line.startswith(_PREFIX):
      return json.loads(line[len(_PREFIX):])
  tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
  return {"error": " | ".join(tail)}


def report(result: dict) -> None:
  """The child's side: hands ``result`` to the parent's ``run``."""
  print(_PREFIX + json.dumps(result), flush=True)
