"""Parity with the authors' PyTorch models (fixtures in ../shared/fixtures/parity).

The fixtures hold bytesep's outputs for known weights (rebuilt here from the documented rule) on a
2 s stereo input, in float32 and float64. Measured here (CPU): float64 relative L2 errors of 2.5e-8
(MobileNet), 1.3e-7 (subband ResUNet), 3.7e-7 (paper model). They are float32-sized because
torchlibrosa keeps its DFT bases as float32 parameters even in bytesep's float64 run; emulating those
float32-rounded bases brings the MobileNet to 2.6e-11 and the paper model to 5.8e-9. float32: 7e-6
or better against the float64 reference, the size of torch's own float32 error.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import parity_utils as pu
from resunet_jax import convert

pytestmark = [pytest.mark.parity, pytest.mark.slow]

ARCHS = sorted(pu.FIXTURES)


@pytest.mark.parametrize("arch", ARCHS)
def test_float64_parity(arch, tmp_path):
  data, _ = pu.load_fixture(arch)
  y, head = pu.forward_float64_in_subprocess(arch, tmp_path)
  assert y.dtype == np.float64
  # head_output comes from bytesep's float64 run but is stored as float32 (rounding ~3e-8).
  assert pu.rel_l2(head, data["head_output"]) <= 1e-6
  assert pu.rel_l2(y, data["output_float64"]) <= 1e-6


@pytest.mark.parametrize("arch", ARCHS)
def test_float32_parity(arch):
  data, y, head = pu.forward(arch, np.float32)
  assert y.dtype == np.float32
  assert pu.rel_l2(head, data["head_output"]) <= 1e-3
  assert pu.rel_l2(y, data["output_float64"]) <= 1e-3
  assert pu.rel_l2(y, data["output"]) <= 1e-3


def test_weight_rule_reproduces_the_stored_mobilenet_weights():
  data, meta = pu.load_fixture("mobilenet_subbandtime")
  stored = {k[len("state/"):]: v for k, v in data.items() if k.startswith("state/")}
  rebuilt = pu.rule_state_dict(meta)
  assert stored.keys() == rebuilt.keys()
  for key in stored:
    np.testing.assert_array_equal(stored[key], rebuilt[key], err_msg=key)


def test_released_pth_file_converts_to_the_same_model():
  pytest.importorskip("torch")
  path = pu.shared_path("fixtures", "parity", "mobilenet_s1_bytesep_checkpoint.pth")
  model, from_pth = convert.from_bytesep(path, "mobilenet_subbandtime")
  data, meta = pu.load_fixture("mobilenet_subbandtime")
  _, from_npz = convert.from_bytesep(pu.fixture_state_dict("mobilenet_subbandtime", meta),
                                     "mobilenet_subbandtime")
  flat_pth = jax.tree_util.tree_leaves_with_path(from_pth)
  flat_npz = dict(jax.tree_util.tree_leaves_with_path(from_npz))
  assert len(flat_pth) == len(flat_npz)
  for path_, value in flat_pth:
    np.testing.assert_array_equal(value, flat_npz[path_])
  x = jnp.asarray(np.swapaxes(data["input"], 1, 2))
  y = np.swapaxes(np.asarray(jax.jit(model.apply)(from_pth, x))[:, 0], 1, 2)
  assert pu.rel_l2(y, data["output_float64"]) <= 1e-3
  # The architecture is also recognised from the keys alone.
  assert convert.detect_arch(convert.read_state_dict(path)[0]) == "mobilenet_subbandtime"
