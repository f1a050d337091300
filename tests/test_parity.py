"""Parity with the authors' PyTorch models (fixtures in tests/fixtures/parity).

The fixtures (scripts/make_parity_fixtures.py) hold bytesep's outputs for known weights (rebuilt here
from the documented rule) on a 0.3 s stereo input: float32, and float64 from models built with
torch's default dtype set to float64 (torchlibrosa's DFT bases included). Measured here (CPU,
relative L2 errors): float64 outputs MobileNet 2.7e-12, subband ResUNet143 3.2e-12, paper ResUNet143
2.3e-11; float64 heads 2.5e-8 for all three, which is the float32 rounding of the stored head (kept
float32 to keep the folder small). float32 outputs against the float64 reference: 7.5e-7, 3.3e-6,
3.1e-6 (bytesep's own float32 runs: 2.2e-6, 2.2e-6, 5.2e-6); float32 heads 3e-7 to 1.2e-6.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io

import parity_utils as pu
from resunet_jax import convert
from resunet_jax.testing import bytesep_reference as ref

pytestmark = [pytest.mark.parity]


@pytest.mark.slow
@pytest.mark.parametrize("arch", pu.ARCHS)
def test_float64_parity(arch, tmp_path):
  data, _ = pu.load_fixture(arch)
  y, head = pu.forward_float64_in_subprocess(arch, tmp_path)
  assert y.dtype == np.float64
  output_error = pu.rel_l2(y, data["output_float64"])
  # head_output comes from bytesep's float64 run but is stored as float32 (rounding ~3e-8).
  head_error = pu.rel_l2(head, data["head_output"])
  print(f"{arch} float64: output {output_error:.2g}, head {head_error:.2g} (relative L2)")
  assert output_error <= 1e-6
  assert head_error <= 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("arch", pu.ARCHS)
def test_float32_parity(arch):
  data, y, head = pu.forward(arch, np.float32)
  assert y.dtype == np.float32
  errors = {"output vs float64": pu.rel_l2(y, data["output_float64"]),
            "output vs float32": pu.rel_l2(y, data["output"]),
            "head": pu.rel_l2(head, data["head_output"])}
  print(f"{arch} float32:", ", ".join(f"{k} {v:.2g}" for k, v in errors.items()))
  for name, error in errors.items():
    assert error <= 1e-3, name


def test_fixtures_are_consistent():
  """Shapes and metadata of the in-repo fixtures: one input, 32 padded frames, 2 channels."""
  for arch in pu.ARCHS:
    data, meta = pu.load_fixture(arch)
    assert meta["arch"] == arch and meta["model"] == ref.CLASSES[arch][1]
    x = data["input"]
    assert x.shape == (1, 2, meta["samples"]) and x.dtype == np.float32
    assert data["output"].shape == x.shape and data["output"].dtype == np.float32
    assert data["output_float64"].shape == x.shape and data["output_float64"].dtype == np.float64
    assert data["head_output"].shape[2] == 32  # T = 31 frames, padded to the time multiple 32
    # torch's own float32 run is a float32-sized distance from its float64 run.
    assert meta["torch_float32_vs_float64_rel_l2"] < 1e-4
  kernels = pu.pqmf_kernels()
  assert {k: v.shape for k, v in kernels.items()} == {
      "pqmf.ana_conv_filter.weight": (4, 1, 64), "pqmf.syn_conv_filter.weight": (4, 4, 16)}


def test_weight_rule_reproduces_the_checkpoint_weights():
  """The released-format MobileNet file holds exactly the rule's weights (and the fixture's PQMF
  tensors), so the rule documented in the fixtures is the one the fixtures were made with."""
  pytest.importorskip("torch")
  _, meta = pu.load_fixture("mobilenet_subbandtime")
  stored, step = convert.read_state_dict(pu.CHECKPOINT)
  assert step == 500000
  assert [k for k, _ in meta["state_dict_keys"]] == list(stored)
  rebuilt = pu.rule_state_dict(meta)
  for key, value in rebuilt.items():
    np.testing.assert_array_equal(stored[key], value, err_msg=key)
  for key, value in pu.pqmf_kernels().items():
    np.testing.assert_array_equal(stored[key], value, err_msg=key)


def test_pqmf_mat_files_hold_float32_exact_filters(tmp_path):
  """The .mat files written from the frozen kernels survive bytesep's float32 rounding: f / 4 and
  the reordered 4 h are the kernels' values exactly."""
  from resunet_jax import pqmf  # pylint: disable=g-import-not-at-top
  kernels = pu.pqmf_kernels()
  f_path, h_path = ref.write_pqmf_mat_files(str(tmp_path), kernels)
  f = scipy.io.loadmat(f_path)["f"]
  h = scipy.io.loadmat(h_path)["h"]
  assert f.shape == h.shape == (4, 64) and f.dtype == h.dtype == np.float64
  np.testing.assert_array_equal(f.astype(np.float32).astype(np.float64), f)
  np.testing.assert_array_equal(h.astype(np.float32).astype(np.float64), h)
  ana, syn = pqmf.kernels_from_filters(f, h)
  np.testing.assert_array_equal(np.asarray(ana, np.float32), kernels[ref.PQMF_KEYS[0]])
  np.testing.assert_array_equal(np.asarray(syn, np.float32), kernels[ref.PQMF_KEYS[1]])


def test_bytesep_model_rebuilt_from_the_kernels_holds_them_bit_for_bit():
  """bytesep, reading the .mat files written from the frozen kernels, builds exactly those kernels
  (float32 and float64 models): nothing needs the authors' filter files."""
  reason = ref.available()
  if reason:
    pytest.skip(f"the bytesep reference is not installed: {reason}")
  import torch  # pylint: disable=g-import-not-at-top
  kernels = pu.pqmf_kernels()
  for dtype in (torch.float32, torch.float64):
    with ref.default_dtype(dtype):
      model = ref.make_model("mobilenet_subbandtime", pqmf_kernels=kernels)
    state = model.state_dict()
    for key, value in kernels.items():
      assert state[key].dtype == dtype
      np.testing.assert_array_equal(state[key].numpy(), value.astype(state[key].numpy().dtype),
                                    err_msg=f"{key} ({dtype})")


@pytest.mark.slow
def test_released_pth_file_converts_to_the_same_model():
  pytest.importorskip("torch")
  model, from_pth = convert.from_bytesep(pu.CHECKPOINT, "mobilenet_subbandtime")
  data, meta = pu.load_fixture("mobilenet_subbandtime")
  _, from_dict = convert.from_bytesep(pu.fixture_state_dict("mobilenet_subbandtime", meta),
                                      "mobilenet_subbandtime")
  flat_pth = jax.tree_util.tree_leaves_with_path(from_pth)
  flat_dict = dict(jax.tree_util.tree_leaves_with_path(from_dict))
  assert len(flat_pth) == len(flat_dict)
  for path_, value in flat_pth:
    np.testing.assert_array_equal(value, flat_dict[path_])
  x = jnp.asarray(np.swapaxes(data["input"], 1, 2))
  y = np.swapaxes(np.asarray(jax.jit(model.apply)(from_pth, x))[:, 0], 1, 2)
  assert pu.rel_l2(y, data["output_float64"]) <= 1e-3
  # The architecture is also recognised from the keys alone.
  assert convert.detect_arch(convert.read_state_dict(pu.CHECKPOINT)[0]) == "mobilenet_subbandtime"
