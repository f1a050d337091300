"""The parity fixtures of tests/fixtures/parity (made by scripts/make_parity_fixtures.py from the
authors' bytesep models) and the converted models that are compared with them."""
import json
import os

import numpy as np

from resunet_jax.testing import bytesep_reference as ref

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE_DIR = os.path.join(HERE, "fixtures", "parity")
CHECKPOINT = os.path.join(FIXTURE_DIR, "mobilenet_subbandtime_checkpoint.pth")
PQMF_KERNELS = os.path.join(FIXTURE_DIR, "pqmf_frozen.npz")
ARCHS = ("mobilenet_subbandtime", "resunet143_subbandtime", "resunet143_ismir2021")


def fixture_path(name):
  return os.path.join(FIXTURE_DIR, name)


def load_fixture(arch):
  """(arrays, meta) of ``<arch>.npz``; meta["state_dict_keys"] as [(key, shape tuple), ...]."""
  with np.load(fixture_path(f"{arch}.npz")) as f:
    data = {k: f[k] for k in f.files}
  meta = json.loads(str(data.pop("meta")))
  meta["state_dict_keys"] = [(k, tuple(s)) for k, s in meta["state_dict_keys"]]
  return data, meta


def rule_state_dict(meta):
  """The fixture's weights, rebuilt from the documented rule (``ref.WEIGHT_RULE``)."""
  return ref.rule_state_dict(meta["state_dict_keys"], meta["seed"])


def pqmf_kernels():
  with np.load(PQMF_KERNELS) as f:
    return {k: f[k] for k in f.files}


def fixture_state_dict(arch, meta):
  """Rule weights plus, for the subband models, the frozen PQMF tensors."""
  state = rule_state_dict(meta)
  if arch != "resunet143_ismir2021":
    state.update(pqmf_kernels())
  return state


def rel_l2(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def forward(arch, dtype):
  """(fixture data, output (B, 2, L), head (NCHW)) of the converted fixture model in ``dtype``."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from resunet_jax import convert  # pylint: disable=g-import-not-at-top
  data, meta = load_fixture(arch)
  model, variables = convert.from_bytesep(fixture_state_dict(arch, meta), arch, dtype=dtype)
  x = jnp.asarray(np.swapaxes(data["input"], 1, 2), dtype)  # (B, 2, L) -> (B, L, 2)
  y, head = jax.jit(lambda v, x: model.apply(v, x, return_head=True))(variables, x)
  y = np.swapaxes(np.asarray(y)[:, 0], 1, 2)  # one source -> (B, 2, L)
  head = np.transpose(np.asarray(head), (0, 3, 1, 2))  # NHWC -> the fixture's NCHW
  return data, y, head


def float64_env():
  """The environment of a float64 subprocess: x64 on, on the CPU, without the YNNPACK fusion flag
  (float64 convolutions are ~10x slower with it) whether or not ``import resunet_jax`` sets it."""
  flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if "ynn_fusion" not in f)
  return dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu", RESUNET_XLA_DEFAULTS="0",
              XLA_FLAGS=flags)


def run_float64_subprocess(code, *args, timeout=1200):
  """Runs ``code`` (python source; ``sys.argv[1:]`` = ``args``) in a fresh float64 JAX process
  with this directory on the path; raises with its output when it fails."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  prelude = ("import jax; jax.config.update('jax_enable_x64', True); "
             "jax.config.update('jax_platforms', 'cpu'); import sys; sys.path.insert(0, %r)\n"
             % HERE)
  result = subprocess.run([sys.executable, "-c", prelude + code, *map(str, args)], cwd=HERE,
                          env=float64_env(), capture_output=True, text=True, timeout=timeout)
  if result.returncode != 0:
    raise AssertionError(f"float64 subprocess failed ({result.returncode}):\n"
                         f"{result.stdout[-4000:]}\n{result.stderr[-8000:]}")
  return result.stdout


def forward_float64_in_subprocess(arch, tmp_dir):
  """``forward(arch, float64)`` in a fresh process (see ``run_float64_subprocess``)."""
  out = os.path.join(str(tmp_dir), f"{arch}_f64.npz")
  code = ("import numpy as np; import parity_utils as pu; _, y, h = pu.forward(sys.argv[1], "
          "np.float64); np.savez(sys.argv[2], y=y, head=h)")
  run_float64_subprocess(code, arch, out)
  with np.load(out) as f:
    return f["y"], f["head"]
