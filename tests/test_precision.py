"""Float32 accuracy on real music (issue 18): the error of a float32 forward pass against float64.

On real music the paper model in float32 was 8.1e-4 relative L2 from bytesep's float64 output (10 s
of a real song, the parity fixtures' weights; PyTorch's own float32 2.3e-4; 1.2e-4 and 3.3e-5 on
stempeg's 6 s excerpt), against 3e-6 on the parity fixtures' synthetic input. ``bench/bench_precision.py``
localised it: every stage up to the head was at float32 rounding (head 1.5e-6, below PyTorch's
4.3e-6), but the phase of the STFT was 2.2e-3 (PyTorch 5.0e-4): the quiet upper bins of real music
got their phase from the FFT's rounding noise, and Decouple+ gives such bins a magnitude
(|Y| = relu(|X| sigmoid(m) + Q)) with that phase. ``spectral.stft`` now takes those bins from the
frame's second difference; after it (same measurements) the paper model is 1.0e-4 / 7.6e-6 from
float64, better than PyTorch's float32 (the README's "Float32 accuracy on real music" has the
stage-by-stage table).

The reference here is our own float64 model (parity-tested against bytesep's float64 to ~1e-11).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import parity_utils as pu
from resunet_jax import models

SAMPLE_RATE = 44100


@pytest.fixture(scope="module")
def excerpt():
  """Seconds 1-3 of stempeg's real MUSDB18 excerpt (the mixture, stereo float32, (1, L, 2))."""
  stempeg = pytest.importorskip("stempeg")
  from resunet_jax.data import stems_io  # pylint: disable=g-import-not-at-top
  mix = stems_io.read_stem_file(stempeg.example_stem_path(), parallel=False)["mixture"]
  return stems_io.int16_to_float(mix[SAMPLE_RATE:3 * SAMPLE_RATE])[None]


def _bin_statistics(x, n_fft, hop):
  """Per-bin mean and variance of |STFT| over channels and frames of (1, L, C) audio (numpy,
  float64): what a trained model's ``bn0`` holds as running statistics."""
  from resunet_jax import spectral  # pylint: disable=g-import-not-at-top
  pad = n_fft // 2
  signal = np.pad(np.asarray(x[0].T, np.float64), [(0, 0), (pad, pad)], mode="reflect")
  starts = np.arange(1 + x.shape[1] // hop) * hop
  frames = signal[:, starts[:, None] + np.arange(n_fft)[None]]
  mag = np.abs(np.fft.rfft(frames * spectral.hann_window(n_fft), axis=-1))
  return mag.mean(axis=(0, 1)), mag.var(axis=(0, 1))


def test_decouple_plus_float32_on_real_music(excerpt):
  """The paper model's front end and mask (2048/441 STFT, bn0, Decouple+, ISTFT) around a tiny
  backbone, with ``bn0``'s statistics those of the music (as a trained model's are: the quiet bins
  are scaled up) and the additive term Q fixed at +0.1 in every bin (head kernel 0, bias 0.1 for
  Q): the case that exposes the mixture phase of quiet bins, as the parity fixtures' weights (head
  biases +-0.1) do. float32 vs float64 of the same model and variables, relative L2: measured
  3.8e-5 with a plain float32 rfft, 1.4e-6 now; the bound is 4e-6. (23-48 s measured on the 2
  shared cores.)"""
  model = models.build_model("resunet143_ismir2021", width=0.125, levels=2, blocks_per_stage=1,
                             center_blocks=1)
  variables = models.init_variables(model, jax.random.PRNGKey(0))
  head = dict(variables["params"]["after_conv2"])
  is_q = np.arange(model.head_channels) % 4 == 3  # head channel ((s C + c) K + k), k = 3 is Q
  head["kernel"] = jnp.where(is_q, 0.0, head["kernel"])
  head["bias"] = jnp.where(is_q, 0.1, head["bias"])
  mean, var = _bin_statistics(excerpt, model.n_fft, model.hop)
  variables = {
      "params": {**variables["params"], "after_conv2": head},
      "batch_stats": {**variables["batch_stats"],
                      "bn0": {"mean": jnp.asarray(mean, jnp.float32),
                              "var": jnp.asarray(var, jnp.float32)}}}
  y32 = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(excerpt)))
  with jax.enable_x64(True):
    v64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), variables)
    y64 = np.asarray(jax.jit(model.apply)(v64, jnp.asarray(excerpt, jnp.float64)))
  assert y32.dtype == np.float32 and y64.dtype == np.float64
  error = pu.rel_l2(y32, y64)
  print(f"float32 vs float64, Decouple+ with Q = 0.1 on real music: {error:.3g}")
  assert error <= 4e-6


@pytest.mark.slow
@pytest.mark.parity
def test_paper_model_float32_on_real_music(excerpt, tmp_path):
  """The paper model (ResUNet143 Decouple+ InPlaceABN) with the parity fixtures' weights on 2 s of
  real music, float32 against our float64 model in a float64 process. Measured: 1.06e-4 with a
  plain float32 rfft, 6.4e-6 now (the issue's goal: 3e-4); asserted 3e-5."""
  from resunet_jax import convert  # pylint: disable=g-import-not-at-top
  arch = "resunet143_ismir2021"
  path = tmp_path / "excerpt.npy"
  np.save(path, excerpt)
  out = tmp_path / "y64.npy"
  code = ("import numpy as np, jax, jax.numpy as jnp; import parity_utils as pu; "
          "from resunet_jax import convert; _, meta = pu.load_fixture(sys.argv[1]); "
          "model, v = convert.from_bytesep(pu.fixture_state_dict(sys.argv[1], meta), sys.argv[1], "
          "dtype=np.float64); x = jnp.asarray(np.load(sys.argv[2]), jnp.float64); "
          "np.save(sys.argv[3], np.asarray(jax.jit(model.apply)(v, x)))")
  pu.run_float64_subprocess(code, arch, path, out)
  y64 = np.load(out)
  _, meta = pu.load_fixture(arch)
  model, variables = convert.from_bytesep(pu.fixture_state_dict(arch, meta), arch)
  y32 = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(excerpt)))
  error = pu.rel_l2(y32, y64)
  print(f"paper model, float32 vs float64 on real music: {error:.3g}")
  assert error <= 3e-5
