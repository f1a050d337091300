"""Checkpoint conversion: key mapping, refusal of bad files, model directories, the CLI."""
import os
import stat

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import parity_utils as pu
from resunet_jax import checkpoint
from resunet_jax import convert
from resunet_jax import models

ARCH = "mobilenet_subbandtime"


@pytest.fixture(scope="module")
def mobilenet_state():
  _, meta = pu.load_fixture(ARCH)
  return pu.fixture_state_dict(ARCH, meta)


def _with_frozen(state, n_fft=512):
  state = dict(state)
  state.update({k: v.astype(np.float32) for k, v in convert._expected_frozen(n_fft).items()})
  return state


def test_frozen_stft_tensors_are_accepted_and_checked(mobilenet_state):
  model, variables = convert.from_bytesep(_with_frozen(mobilenet_state), ARCH)
  assert models.count_params(variables["params"]) == 306_418
  bad = _with_frozen(mobilenet_state)
  bad["stft.conv_real.weight"] = bad["stft.conv_real.weight"] * 1.01
  with pytest.raises(convert.ConversionError, match=r"stft\.conv_real\.weight: differs"):
    convert.from_bytesep(bad, ARCH)


def test_unknown_missing_and_misshaped_keys_are_all_listed(mobilenet_state):
  state = dict(mobilenet_state)
  del state["decoder_block3.bn1.running_var"]
  del state["conv_block7.conv1a.weight"]
  state["encoder_block2.conv_block.bn1b.weight"] = np.ones(7, np.float32)
  state["extra_layer.weight"] = np.ones((3, 3, 1, 1), np.float32)
  with pytest.raises(convert.ConversionError) as info:
    convert.from_bytesep(state, ARCH)
  message = str(info.value)
  for expected in ("unknown keys (1)", "extra_layer.weight", "missing keys (2)",
                   "decoder_block3.bn1.running_var", "conv_block7.conv1a.weight",
                   "mis-shaped keys (1)", "encoder_block2.conv_block.bn1b.weight: (7,)"):
    assert expected in message


def test_wrong_architecture_is_refused(mobilenet_state):
  with pytest.raises(convert.ConversionError, match="does not fit architecture"):
    convert.from_bytesep(mobilenet_state, "resunet143_subbandtime")


def test_subband_state_without_pqmf_filters_needs_them(mobilenet_state, tmp_path):
  state = {k: v for k, v in mobilenet_state.items() if not k.startswith("pqmf.")}
  with pytest.raises(convert.ConversionError, match="pqmf.ana_conv_filter.weight"):
    convert.from_bytesep(state, ARCH)
  from resunet_jax import pqmf  # pylint: disable=g-import-not-at-top
  from resunet_jax.testing import bytesep_reference  # pylint: disable=g-import-not-at-top
  # The authors' f_4_64.mat / h_4_64.mat, as written from the frozen tensors of the fixtures.
  bytesep_reference.write_pqmf_mat_files(str(tmp_path), pu.pqmf_kernels())
  filters = pqmf.load_mat_filters(str(tmp_path))
  _, variables = convert.from_bytesep(state, ARCH, pqmf_filters=filters)
  np.testing.assert_allclose(variables["constants"]["pqmf_analysis"], filters[0], atol=1e-7)


def test_broken_pqmf_tensors_are_refused(mobilenet_state):
  state = dict(mobilenet_state)
  state["pqmf.syn_conv_filter.weight"] = state["pqmf.syn_conv_filter.weight"][::-1].copy()
  with pytest.raises(convert.ConversionError, match="does not reconstruct"):
    convert.from_bytesep(state, ARCH)


def test_mapping_of_conv_bn_and_transposed_conv():
  state = {
      "decoder_block1.conv1.weight": np.arange(2 * 3 * 1 * 2, dtype=np.float32).reshape(2, 3, 1, 2),
      "encoder_block1.conv_block1.conv1.weight": np.arange(24, dtype=np.float32).reshape(4, 2, 1, 3),
      "encoder_block1.conv_block1.abn2.weight": np.array([-0.5, 2.0], np.float32),
      "encoder_block1.conv_block1.abn2.running_var": np.array([3.0, 4.0], np.float32),
  }
  kernel = convert._target("decoder_block1.conv1.weight", state["decoder_block1.conv1.weight"],
                           "resunet")
  assert kernel[1] == ("decoder_block1", "conv1", "kernel")
  np.testing.assert_array_equal(kernel[2], np.transpose(state["decoder_block1.conv1.weight"],
                                                        (2, 3, 0, 1)))
  conv = convert._target("encoder_block1.conv_block1.conv1.weight",
                         state["encoder_block1.conv_block1.conv1.weight"], "resunet")
  np.testing.assert_array_equal(conv[2], np.transpose(
      state["encoder_block1.conv_block1.conv1.weight"], (2, 3, 1, 0)))
  abn = convert._target("encoder_block1.conv_block1.abn2.weight",
                        state["encoder_block1.conv_block1.abn2.weight"], "resunet")
  assert abn[:2] == ("params", ("encoder_block1", "conv_block1", "abn2", "scale"))
  np.testing.assert_allclose(abn[2], [0.50001, 2.00001], rtol=1e-7)
  var = convert._target("encoder_block1.conv_block1.abn2.running_var",
                        state["encoder_block1.conv_block1.abn2.running_var"], "resunet")
  assert var[:2] == ("batch_stats", ("encoder_block1", "conv_block1", "abn2", "var"))


def test_v1_head_layout_is_permuted_back(mobilenet_state):
  # Write the head rows in the 350k-step files' (c, j, k) order; converting with
  # head_layout="v1" must recover the v2 model exactly.
  v1 = dict(mobilenet_state)
  for key in ("after_conv2.weight", "after_conv2.bias"):
    rows = v1[key].reshape((1, 2, 4, 4) + v1[key].shape[1:])  # (s, c, k, j)
    v1[key] = np.swapaxes(rows, 2, 3).reshape(v1[key].shape).copy()  # -> (s, c, j, k)
  _, want = convert.from_bytesep(mobilenet_state, ARCH)
  _, got = convert.from_bytesep(v1, ARCH, head_layout="v1")
  _, wrong = convert.from_bytesep(v1, ARCH)
  np.testing.assert_array_equal(got["params"]["after_conv2"]["kernel"],
                                want["params"]["after_conv2"]["kernel"])
  assert not np.array_equal(wrong["params"]["after_conv2"]["kernel"],
                            want["params"]["after_conv2"]["kernel"])


def test_model_directory_round_trip_and_no_overwrite(tmp_path, mobilenet_state):
  model, variables = convert.from_bytesep(mobilenet_state, ARCH)
  out = tmp_path / "model"
  checkpoint.save_model(out, model, variables, arch=ARCH, sources=["vocals"])
  model2, variables2, desc = checkpoint.load_model(out)
  assert model2 == model and desc["sources"] == ["vocals"] and desc["arch"] == ARCH
  for (p, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(variables),
                            jax.tree_util.tree_leaves_with_path(variables2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(p))
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 22_050, 2)) * 0.1
  np.testing.assert_array_equal(np.asarray(model.apply(variables, x)),
                                np.asarray(model2.apply(variables2, x)))
  before = sorted(os.listdir(out))
  with pytest.raises(FileExistsError, match="refusing to overwrite"):
    checkpoint.save_model(out, model, variables, arch=ARCH)
  assert sorted(os.listdir(out)) == before
  assert [p for p in os.listdir(tmp_path) if p != "model"] == []  # no temporary left behind
  umask = os.umask(0)
  os.umask(umask)
  assert stat.S_IMODE(os.stat(out).st_mode) == 0o777 & ~umask  # not mkdtemp's private 0700


def test_cli_converts_npz_and_reports_errors(tmp_path, mobilenet_state, capsys):
  npz = tmp_path / "mobilenet_vocals.npz"
  np.savez(npz, **mobilenet_state)
  out = tmp_path / "converted"
  assert convert.main([str(npz), str(out)]) == 0
  assert "306,418 trainable parameters" in capsys.readouterr().out
  assert checkpoint.read_description(out)["sources"] == ["vocals"]
  assert convert.main([str(npz), str(out)]) == 2  # exists
  assert "refusing to overwrite" in capsys.readouterr().err
  bad = dict(mobilenet_state)
  del bad["after_conv2.bias"]
  np.savez(tmp_path / "bad.npz", **bad)
  assert convert.main([str(tmp_path / "bad.npz"), str(tmp_path / "x"), "--arch", ARCH]) == 2
  err = capsys.readouterr().err
  assert "bad.npz" in err and "after_conv2.bias" in err
  assert not (tmp_path / "x").exists()
  assert convert.main([str(tmp_path / "missing.pth"), str(tmp_path / "y")]) == 2
  assert "does not exist" in capsys.readouterr().err


def test_converted_model_runs_in_bfloat16_from_the_same_variables(mobilenet_state):
  model, variables = convert.from_bytesep(mobilenet_state, ARCH, dtype=np.float32)
  fast = model.clone(dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 22_050, 2)) * 0.1
  y32 = np.asarray(model.apply(variables, x))
  y16 = np.asarray(fast.apply(variables, x))
  assert pu.rel_l2(y16, y32) < 0.1  # bf16 keeps ~3 significant digits
