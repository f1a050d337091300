"""The parity fixtures of ../shared/fixtures/parity and the rule that rebuilds their weights."""
import ast
import json
import os

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def shared_dir():
  """../shared next to the checkout (or $RESUNET_SHARED), or None."""
  path = os.environ.get("RESUNET_SHARED") or os.path.join(HERE, "..", "..", "shared")
  path = os.path.abspath(path)
  return path if os.path.isdir(path) else None


def shared_path(*parts):
  """A path under ../shared; skips the calling test with the reason when it is absent."""
  root = shared_dir()
  if root is None:
    pytest.skip("../shared (the authors' fixtures and data) is absent; set RESUNET_SHARED to "
                "its location to run this test")
  path = os.path.join(root, *parts)
  if not os.path.exists(path):
    pytest.skip(f"{path} is absent")
  return path


FIXTURES = {
    "resunet143_ismir2021": "ismir2021_s1.npz",
    "resunet143_subbandtime": "subbandtime_s1.npz",
    "mobilenet_subbandtime": "mobilenet_s1.npz",
}


def load_fixture(arch):
  path = shared_path("fixtures", "parity", FIXTURES[arch])
  with np.load(path) as f:
    data = {k: f[k] for k in f.files}
  meta = json.loads(str(data.pop("meta")))
  keys = meta["state_dict_keys"]
  if isinstance(keys, str):
    keys = ast.literal_eval(keys)
  meta["state_dict_keys"] = [(k, tuple(s)) for k, s in keys]
  return data, meta


def rule_state_dict(meta):
  """The fixture weights, rebuilt from the documented rule (fixtures/parity/README.md)."""
  rng = np.random.default_rng(meta["seed"])
  state = {}
  for key, shape in meta["state_dict_keys"]:
    last = key.rsplit(".", 1)[-1]
    if last == "num_batches_tracked" or key.startswith(("stft.", "istft.", "pqmf.")):
      continue
    if last == "running_mean":
      value = rng.uniform(-0.1, 0.1, shape)
    elif last == "running_var":
      value = rng.uniform(0.5, 1.5, shape)
    elif last == "weight" and len(shape) == 1:
      value = rng.uniform(0.5, 1.5, shape)
      value = value * rng.choice([-1.0, 1.0], shape)
    elif last == "bias" and len(shape) == 1:
      value = rng.uniform(-0.1, 0.1, shape)
    elif last == "weight":
      gain = 0.1 if key.startswith("after_conv2.") else 1.0
      value = rng.standard_normal(shape) * gain / np.sqrt(np.prod(shape[1:]))
    else:
      raise AssertionError(f"no rule for {key} {shape}")
    state[key] = value.astype(np.float32)
  return state


def fixture_state_dict(arch, meta):
  """Rule weights plus, for the subband models, the frozen PQMF tensors."""
  state = rule_state_dict(meta)
  if arch != "resunet143_ismir2021":
    with np.load(shared_path("fixtures", "parity", "pqmf_frozen.npz")) as f:
      state.update({k: f[k] for k in f.files})
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


def forward_float64_in_subprocess(arch, tmp_dir):
  """``forward(arch, float64)`` in a fresh process with x64 on and the default XLA:CPU flags off.

  XLA:CPU's YNNPACK fusions (enabled by resunet_jax for float32 speed) make float64 convolutions
  ~10x slower; the flag is process-wide, so float64 work runs in its own process.
  """
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  out = os.path.join(str(tmp_dir), f"{arch}_f64.npz")
  code = ("import sys, jax; jax.config.update('jax_enable_x64', True); import numpy as np; "
          "import parity_utils as pu; _, y, h = pu.forward(sys.argv[1], np.float64); "
          "np.savez(sys.argv[2], y=y, head=h)")
  flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if "ynn_fusion" not in f)
  env = dict(os.environ, RESUNET_XLA_DEFAULTS="0", XLA_FLAGS=flags)
  subprocess.run([sys.executable, "-c", code, arch, out], cwd=HERE, env=env, check=True)
  with np.load(out) as f:
    return f["y"], f["head"]
