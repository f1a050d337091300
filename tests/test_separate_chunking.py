"""Chunked separation: the authors' scheme as REFERENCE §7.2 states it, seamless cross-fades, streaming.

Most tests use stand-in chunk functions (numpy, exact arithmetic) on a toy "sample rate" so that
plans of a few chunks stay tiny; the model tests use small randomly initialised separators.
"""
import os
import sys

import jax
import numpy as np
import pytest

from resunet_jax import audio
from resunet_jax import models
from resunet_jax import separate

RATE = 400  # toy rate: a "1 s" chunk is 400 samples
SMALL = dict(width=0.125, levels=3, blocks_per_stage=1, center_blocks=1)
# Random weights from the "rbg" generator: compiling a model's init with the default threefry
# generator takes ~35 s on 2 cores, with rbg ~6 s; the weights' values do not matter here.
def init_key():
  return jax.random.key(0, impl="rbg")


def gain_fn(gains=(0.7, -0.3)):
  """y_s = g_s x: a model whose output every overlap-add must give back exactly."""
  def fn(x):
    return np.stack([np.float32(g) * x for g in gains], axis=1)
  return fn


def position_fn(x):
  """Depends on the position inside the chunk and on the whole chunk: any mis-cut shows."""
  n = x.shape[1]
  ramp = (1.0 + np.arange(n, dtype=np.float32) / n)[None, :, None]
  return (x * ramp + x.mean(axis=1, keepdims=True))[:, None].astype(np.float32)


def authors_restatement(fn, x, segment):
  """REFERENCE §7.2 in numpy: pad to a multiple of the segment, 50 % hop, keep central halves."""
  length = len(x)
  padded_length = -(-length // segment) * segment
  padded = np.concatenate([x, np.zeros((padded_length - length, x.shape[1]), np.float32)])
  hop = segment // 2
  starts = range(0, padded_length - segment + 1, hop)
  outs = [fn(padded[None, s:s + segment])[0] for s in starts]  # (S, segment, C)
  if len(outs) == 1:
    y = outs[0]
  else:
    q = segment // 4
    y = np.concatenate([outs[0][:, :3 * q]] + [o[:, q:3 * q] for o in outs[1:-1]] +
                       [outs[-1][:, q:]], axis=1)
  return y[:, :length]


def stream_all(separator, x, block=None, residual=False):
  blocks = [x] if block is None else [x[i:i + block] for i in range(0, len(x), block)]
  return np.concatenate(list(separator.stream(blocks, residual=residual)))  # (L, S', C)


def test_plans_count_chunks_like_the_reference():
  authors = separate.make_plan("authors", chunk_seconds=30.0)
  assert (authors.chunk, authors.hop) == (1_323_000, 661_500)
  # P / 15 s - 1 segments for the padded length P (REFERENCE §7.2).
  for seconds, expected in ((10, 1), (30, 1), (31, 3), (60, 3), (61, 5), (240, 15)):
    assert authors.num_chunks(int(seconds * 44100)) == expected
  fade = separate.make_plan("crossfade", chunk_seconds=30.0, overlap_seconds=10.0)
  assert (fade.chunk, fade.hop) == (1_323_000, 882_000)
  for seconds, expected in ((10, 1), (30, 1), (31, 2), (50, 2), (51, 3), (240, 12)):
    assert fade.num_chunks(int(seconds * 44100)) == expected
  with pytest.raises(ValueError, match="overlap_seconds"):
    separate.make_plan("crossfade", chunk_seconds=10.0, overlap_seconds=6.0)
  with pytest.raises(ValueError, match="unknown overlap scheme"):
    separate.make_plan("hann")


@pytest.mark.parametrize("scheme,overlap", [("authors", 0.0), ("crossfade", 0.5),
                                            ("crossfade", 0.2), ("crossfade", 0.0)])
def test_windows_sum_to_one_at_every_sample(scheme, overlap):
  plan = separate.make_plan(scheme, 1.0, overlap, sample_rate=RATE)
  for length in (1, 399, 400, 401, 650, 1000, 2345):
    n = plan.num_chunks(length)
    total = np.zeros((n - 1) * plan.hop + plan.chunk)
    for k in range(n):
      total[k * plan.hop:k * plan.hop + plan.chunk] += plan.window(k == 0, k == n - 1)
    np.testing.assert_allclose(total[:length], 1.0, atol=1e-6)
    assert (n - 1) * plan.hop + plan.chunk >= length  # the chunks cover the song


@pytest.mark.parametrize("overlap", [0.5, 0.3, 0.0])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_crossfade_of_a_constant_gain_model_gives_the_input_back(overlap, batch_size):
  # No seam and no attenuation at the song's first and last samples.
  plan = separate.make_plan("crossfade", 1.0, overlap, sample_rate=RATE)
  sep = separate.SongSeparator(gain_fn(), ["a", "b"], plan, batch_size=batch_size)
  rng = np.random.default_rng(0)
  for length in (37, 400, 401, 1234, 4000):
    x = rng.uniform(-1, 1, (length, 2)).astype(np.float32)
    for block in (None, 33, 512):
      y = stream_all(sep, x, block, residual=True)
      assert y.shape == (length, 3, 2)
      # float32 windows w and 1 - w sum to 1 within an ulp: measured error <= 1.2e-7.
      np.testing.assert_allclose(y[:, 0], 0.7 * x, atol=3e-7, rtol=0)
      np.testing.assert_allclose(y[:, 1], -0.3 * x, atol=3e-7, rtol=0)
      np.testing.assert_allclose(y[:, 2], x - 0.4 * x, atol=5e-7, rtol=0)  # residual


def test_crossfade_blends_neighbouring_chunks():
  # A model whose output differs per chunk: inside an overlap the result lies strictly between
  # the two chunks' outputs (a hard cut would jump from one to the other).
  plan = separate.make_plan("crossfade", 1.0, 0.5, sample_rate=RATE)
  calls = []

  def fn(x):
    calls.append(len(calls))
    return np.full((1, 1) + x.shape[1:], float(len(calls)), np.float32)

  sep = separate.SongSeparator(fn, ["a"], plan)
  y = stream_all(sep, np.zeros((600, 2), np.float32))[:, 0, 0]
  assert len(calls) == 2
  assert y[0] == 1.0 and y[-1] == 2.0
  middle = y[200:400]
  assert np.all(np.diff(middle) >= 0) and 1.0 < middle[1] < middle[-2] < 2.0


@pytest.mark.parametrize("batch_size", [1, 2])
def test_authors_scheme_matches_the_numpy_restatement_exactly(batch_size):
  plan = separate.make_plan("authors", 1.0, sample_rate=RATE)
  sep = separate.SongSeparator(position_fn, ["a"], plan, batch_size=batch_size)
  rng = np.random.default_rng(1)
  for length in (1, 250, 399, 400, 401, 800, 801, 1000, 2000, 2345):
    x = rng.standard_normal((length, 2)).astype(np.float32)
    expected = authors_restatement(position_fn, x, plan.chunk)[0]
    for block in (None, 64):
      np.testing.assert_array_equal(stream_all(sep, x, block)[:, 0], expected)


def test_authors_scheme_equals_bytesep_separator():
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "bench"))
  try:
    import bytesep_shim  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  reason = bytesep_shim.available()
  if reason:
    pytest.skip(f"bytesep cannot be imported: {reason}")
  import torch  # pylint: disable=g-import-not-at-top
  from bytesep.separator import Separator as BytesepSeparator  # pylint: disable=g-import-not-at-top

  segment = 400
  ramp = 1.0 + np.arange(segment, dtype=np.float32) / segment

  class Ramp(torch.nn.Module):  # channels-first, as bytesep's models

    def forward(self, input_dict):
      return {"waveform": input_dict["waveform"] * torch.from_numpy(ramp)}

  def ramp_fn(x):  # channels-last, the same arithmetic
    return (x * ramp[None, :, None])[:, None]

  theirs = BytesepSeparator(Ramp(), segment_samples=segment, batch_size=1, device="cpu")
  plan = separate.make_plan("authors", 1.0, sample_rate=segment)
  ours = separate.SongSeparator(ramp_fn, ["vocals"], plan)
  rng = np.random.default_rng(2)
  for length in (100, 400, 401, 1000, 1601):
    x = rng.standard_normal((length, 2)).astype(np.float32)
    expected = theirs.separate({"waveform": x.T}).T
    np.testing.assert_array_equal(stream_all(ours, x, 77)[:, 0], expected)


def test_stream_needs_a_long_enough_input():
  plan = separate.make_plan("crossfade", 1.0, 0.25, sample_rate=RATE)
  sep = separate.SongSeparator(gain_fn(), ["a", "b"], plan, min_length=10)
  with pytest.raises(audio.AudioError, match="song.wav: contains no audio"):
    list(sep.stream([np.zeros((0, 2), np.float32)], name="song.wav"))
  with pytest.raises(audio.AudioError, match=r"song.wav: too short: 9 samples"):
    list(sep.stream([np.zeros((9, 2), np.float32)], name="song.wav"))
  with pytest.raises(audio.AudioError, match="3 channels"):
    list(sep.stream([np.zeros((100, 3), np.float32)], name="song.wav"))
  assert stream_all(sep, np.ones((10, 2), np.float32)).shape == (10, 2, 2)


def test_mono_and_other_rate_arrays():
  plan = separate.make_plan("crossfade", 1.0, 0.3, sample_rate=RATE)
  sep = separate.SongSeparator(gain_fn(), ["a", "b"], plan)
  mono = np.random.default_rng(3).uniform(-1, 1, 1000).astype(np.float32)
  out = sep.separate(mono, residual=True)
  assert list(out) == ["a", "b", "residual"] and out["a"].shape == (1000,)
  np.testing.assert_allclose(out["a"], 0.7 * mono, atol=3e-7)
  # A 22.05 kHz tone goes to 44.1 kHz and back: a constant-gain model returns it at its rate.
  t = np.arange(4410) / 22050
  tone = np.stack([np.sin(2 * np.pi * 440 * t), 0.5 * np.cos(2 * np.pi * 1000 * t)], 1)
  out = sep.separate(tone.astype(np.float32), sample_rate=22050)
  assert out["a"].shape == (4410, 2)
  # Away from the edges (filter transients) the round trip is within the passband ripple of
  # resample_poly's Kaiser (beta 5) filter, passed twice: measured max error 7.2e-4.
  np.testing.assert_allclose(out["a"][200:-200], 0.7 * tone[200:-200], atol=1.5e-3)


def test_residual_names():
  assert separate.residual_name(["vocals"]) == "accompaniment"
  assert separate.residual_name(["accompaniment"]) == "vocals"
  assert separate.residual_name(["drums", "bass", "other"]) == "vocals"
  assert separate.residual_name(["drums", "bass", "vocals"]) == "other"
  assert separate.residual_name(["drums", "bass", "other", "vocals"]) == "residual"
  assert separate.residual_name(["vocals", "accompaniment"]) == "residual"
  assert separate.residual_name(["piano"]) == "residual"


# -- real (small) models ------------------------------------------------------------------------


class CountingModel:
  """Delegates to a Separator and counts how often it is traced."""

  def __init__(self, model):
    self.model, self.traces = model, 0

  def __getattr__(self, name):
    return getattr(self.model, name)

  def apply(self, variables, x, train):
    self.traces += 1
    return self.model.apply(variables, x, train=train)


@pytest.fixture(scope="module")
def small_subband():
  model = models.build_model("mobilenet_subbandtime", **SMALL)
  return model, models.init_variables(model, init_key())


@pytest.mark.parametrize("arch", ["mobilenet_subbandtime", "resunet143_ismir2021"])
def test_min_samples_is_the_shortest_input_the_model_takes(arch):
  model = models.build_model(arch, **SMALL)
  variables = jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(0)))
  minimum = separate.min_samples(model)
  assert minimum == (964 if model.subbands else 1025)  # models.py: >= 964 / > 1024
  shape = lambda n: jax.eval_shape(lambda v: model.apply(v, np.zeros((1, n, 2), np.float32)),
                                   variables)
  assert shape(minimum).shape == (1, 1, minimum, 2)
  with pytest.raises(ValueError, match="reflect padding"):
    shape(minimum - 1)


def test_authors_scheme_on_a_song_within_one_chunk_is_one_forward_pass(small_subband):
  model, variables = small_subband
  sep = separate.SongSeparator.from_model(model, variables, ["vocals"], scheme="authors",
                                          chunk_seconds=0.5)
  chunk = sep.plan.chunk
  x = np.random.default_rng(4).uniform(-0.5, 0.5, (15_000, 2)).astype(np.float32)
  padded = np.concatenate([x, np.zeros((chunk - len(x), 2), np.float32)])[None]
  single = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, padded))
  np.testing.assert_array_equal(sep.separate(x)["vocals"], single[0, 0, :len(x)])


def test_authors_scheme_with_a_model_matches_the_restatement(small_subband):
  model, variables = small_subband
  sep = separate.SongSeparator.from_model(model, variables, ["vocals"], scheme="authors",
                                          chunk_seconds=0.25)
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
  fn = lambda x: np.asarray(forward(variables, x))
  x = np.random.default_rng(5).uniform(-0.5, 0.5, (3 * sep.plan.chunk + 1001, 2))
  x = x.astype(np.float32)
  expected = authors_restatement(fn, x, sep.plan.chunk)[0]
  # Same shapes, same program: bit-identical (measured max difference 0).
  np.testing.assert_array_equal(sep.separate(x)["vocals"], expected)


def test_the_model_is_compiled_once_for_songs_of_any_length(small_subband):
  model, variables = small_subband
  counting = CountingModel(model)
  sep = separate.SongSeparator.from_model(counting, variables, ["vocals"], chunk_seconds=0.25,
                                          overlap_seconds=0.05, batch_size=2)
  rng = np.random.default_rng(6)
  for length in (2000, 11_025, 40_000):
    out = sep.separate(rng.uniform(-0.5, 0.5, (length, 2)).astype(np.float32), residual=True)
    assert out["vocals"].shape == out["accompaniment"].shape == (length, 2)
  assert counting.traces == 1


def test_batch_size_does_not_change_the_result(small_subband):
  model, variables = small_subband
  x = np.random.default_rng(7).uniform(-0.5, 0.5, (30_000, 2)).astype(np.float32)
  outs = [separate.SongSeparator.from_model(model, variables, ["vocals"], chunk_seconds=0.25,
                                            overlap_seconds=0.1, batch_size=b).separate(x)
          for b in (1, 3)]
  # Different batch shapes may reorder float sums: measured differences ~1e-8.
  np.testing.assert_allclose(outs[0]["vocals"], outs[1]["vocals"], atol=1e-6)
