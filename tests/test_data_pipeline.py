"""Training / evaluation pipelines: shapes, sums, each augmentation, determinism, host sharding."""
import numpy as np
import pytest

from data_fixtures import data_config, mini  # pylint: disable=unused-import
from resunet_jax import sources
from resunet_jax.data import heldout
from resunet_jax.data import pipeline
from resunet_jax.data import prepare
from resunet_jax.data import recipes
from resunet_jax.data import sampling
from resunet_jax.data import stems_io
from resunet_jax.data import synthetic

L = 132300  # 3 s


def _take(it, n):
  with it:
    return [next(it) for _ in range(n)]


def _sampler(cfg, seed=0):
  return sampling.SegmentSampler(prepare.training_cache(cfg), recipes.recipe_from_config(cfg), seed)


def _segment(sampler, stems, track, start):
  """Un-augmented float32 sum of ``stems`` at (track, start), the way the pipeline scales it."""
  x = [sampler.cache.segment(s, track, start, L) for s in stems]
  total = x[0].astype(np.float32)
  for y in x[1:]:
    total = total + y
  return total * np.float32(1 / 32768)


# ---------------------------------------------------------------------------------------------
# Config.


def test_default_config_is_the_papers_recipe():
  c = recipes.default_data_config()
  assert (c.name, c.variant, c.manual_dir, c.data_dir) == ("musdb18", "stem", "", "")
  assert (c.train_split, c.eval_split, c.sample_rate, c.segment_seconds) == (
      "train_full", "test", 44100, 3.0)
  assert tuple(c.input_sources) == ("vocals", "accompaniment")
  assert tuple(c.target_sources) == ("vocals",)
  a = c.augment
  assert (a.remix, a.mix_audio, a.swap_channels, a.flip_polarity, a.gain_db) == (
      True, 2, True, True, 0.0)
  r = recipes.recipe_from_config(c)
  assert (r.segment_samples, r.hop_samples, r.mix_counts) == (132300, 4410, (2, 2))


def test_mix_audio_takes_an_int_or_a_mapping_even_inside_a_training_config():
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict()
  config.data = recipes.default_data_config()
  config.data.augment.mix_audio = {"vocals": 3}
  assert recipes.recipe_from_config(config.data).mix_counts == (3, 1)
  config.data.augment.mix_audio = "vocals:1,accompaniment:2"
  assert recipes.recipe_from_config(config.data).mix_counts == (1, 2)


@pytest.mark.parametrize("inputs,targets,error", [
    (("vocals", "accompaniment", "drums"), ("vocals",), "overlap"),
    (("drums", "bass"), ("vocals",), "not part of the mixture"),
    (("vocals", "piano"), ("vocals",), "Unknown source"),
])
def test_inconsistent_sources_are_rejected(inputs, targets, error):
  c = recipes.default_data_config()
  c.input_sources, c.target_sources = inputs, targets
  with pytest.raises(ValueError, match=error):
    recipes.recipe_from_config(c)


# ---------------------------------------------------------------------------------------------
# Batches: shapes, sums, determinism, hosts.


def test_batch_shapes_and_per_device_split(mini):
  cfg = data_config(mini)
  (b,) = _take(pipeline.train_batches(cfg, seed=0, global_batch_size=8), 1)
  assert b["mixture"].shape == (8, L, 2) and b["mixture"].dtype == np.float32
  assert b["targets"].shape == (8, 1, L, 2) and b["targets"].dtype == np.float32
  (d,) = _take(pipeline.train_batches(cfg, seed=0, global_batch_size=8, process_index=1,
                                      process_count=2, local_device_count=2), 1)
  assert d["mixture"].shape == (2, 2, L, 2) and d["targets"].shape == (2, 2, 1, L, 2)
  # host 1 of 2 holds global examples 4..7, device-major.
  np.testing.assert_array_equal(d["mixture"].reshape(4, L, 2), b["mixture"][4:])
  assert np.all(np.isfinite(b["mixture"])) and 0 < np.abs(b["mixture"]).max() < 4


@pytest.mark.parametrize("inputs", [("vocals", "accompaniment"), ("drums", "bass", "other", "vocals")])
def test_mixture_is_exactly_the_sum_of_the_sources(mini, inputs):
  cfg = data_config(mini, input_sources=inputs, target_sources=inputs)
  if len(inputs) == 4:
    cfg.augment.mix_audio = 1
  (b,) = _take(pipeline.train_batches(cfg, seed=3, global_batch_size=4), 1)
  assert b["targets"].shape == (4, len(inputs), L, 2)
  total = b["targets"][:, 0]
  for s in range(1, len(inputs)):
    total = total + b["targets"][:, s]
  np.testing.assert_array_equal(b["mixture"], total)  # left-to-right float32 sum, exactly.


def test_accompaniment_target_of_four_stem_inputs_is_their_drums_bass_other(mini):
  stems = ("drums", "bass", "other", "vocals")
  cfg = data_config(mini, input_sources=stems, target_sources=stems + ("accompaniment",))
  cfg.augment.mix_audio = 1
  ex_mix, ex_tgt = _sampler(cfg).example(0, 0)
  np.testing.assert_array_equal(ex_tgt[4], (ex_tgt[0] + ex_tgt[1]) + ex_tgt[2])
  np.testing.assert_array_equal(ex_mix, ex_tgt[4] + ex_tgt[3])


def test_same_seed_same_batches_other_seed_other_batches(mini):
  cfg = data_config(mini)
  a = _take(pipeline.train_batches(cfg, seed=11, global_batch_size=4), 3)
  b = _take(pipeline.train_batches(cfg, seed=11, global_batch_size=4), 3)
  c = _take(pipeline.train_batches(cfg, seed=12, global_batch_size=4), 1)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["mixture"], y["mixture"])
    np.testing.assert_array_equal(x["targets"], y["targets"])
  assert not np.array_equal(a[0]["mixture"], c[0]["mixture"])
  assert not np.array_equal(a[0]["mixture"], a[1]["mixture"])  # steps differ


def test_resume_at_step_n_equals_the_uninterrupted_stream(mini):
  cfg = data_config(mini)
  run = _take(pipeline.train_batches(cfg, seed=5, global_batch_size=4), 4)
  it = pipeline.train_batches(cfg, seed=5, global_batch_size=4, start_step=2)
  assert it.step == 2
  resumed = _take(it, 2)
  for x, y in zip(run[2:], resumed):
    np.testing.assert_array_equal(x["mixture"], y["mixture"])
    np.testing.assert_array_equal(x["targets"], y["targets"])


def test_hosts_make_disjoint_parts_of_the_same_global_batch(mini):
  cfg = data_config(mini)
  (whole,) = _take(pipeline.train_batches(cfg, seed=9, global_batch_size=8, start_step=3), 1)
  parts = [_take(pipeline.train_batches(cfg, seed=9, global_batch_size=8, start_step=3,
                                        process_index=p, process_count=2), 1)[0] for p in (0, 1)]
  for key in ("mixture", "targets"):
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
  assert not np.array_equal(parts[0]["mixture"], parts[1]["mixture"])


def test_example_depends_only_on_seed_step_and_index(mini):
  cfg = data_config(mini)
  s1, s2 = _sampler(cfg, seed=1), _sampler(cfg, seed=1)
  s2.example(7, 0)  # other calls in between must not matter
  for a, b in zip(s1.example(3, 5), s2.example(3, 5)):
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# Sampling and each augmentation, checked against the cache and the recorded draws.


def test_start_positions_follow_the_index_rule(mini):
  cfg = data_config(mini)
  s = _sampler(cfg)
  starts = [(ex.track, ex.start) for n in range(300) for src in s.draws(n, 0) for ex in src]
  for track, start in starts:
    assert start % 4410 == 0 and start + L < s.cache.lengths[track]
  # Each track is drawn in proportion to its number of start positions.
  counts = np.bincount([t for t, _ in starts], minlength=s.cache.num_tracks)
  expected = sampling.num_starts(s.cache.lengths, L, 4410)
  p = expected / expected.sum()
  n = len(starts)
  assert np.all(np.abs(counts - n * p) < 5 * np.sqrt(n * p * (1 - p))), (counts, n * p)


def test_num_starts_matches_the_authors_index():
  hop = 4410
  # start + L < length (strict); a track not longer than a segment has the single start 0.
  for length in (L - 5, L, L + 1, L + hop, L + hop + 1, L + 10 * hop + 7):
    brute = len([s for s in range(0, length, hop) if s + L < length]) or 1
    assert sampling.num_starts(np.array([length]), L, hop)[0] == brute


def _single_excerpt_config(mini, **augment):
  cfg = data_config(mini)
  cfg.augment.update(dict(remix=True, mix_audio=1, swap_channels=False, flip_polarity=False,
                          gain_db=0.0))
  cfg.augment.update(augment)
  cfg.input_sources = ("vocals", "accompaniment")
  cfg.target_sources = ("vocals", "accompaniment")
  return cfg


def test_no_augmentation_gives_the_stored_segments(mini):
  s = _sampler(_single_excerpt_config(mini))
  for k in range(4):
    mix, tgt = s.example(0, k)
    (v,), (a,) = s.draws(0, k)
    np.testing.assert_array_equal(tgt[0], _segment(s, ["vocals"], v.track, v.start))
    np.testing.assert_allclose(tgt[1], _segment(s, ["drums", "bass", "other"], a.track, a.start),
                               rtol=0, atol=1e-7)


def test_swap_only_changes_the_channel_order(mini):
  s = _sampler(_single_excerpt_config(mini, swap_channels=True))
  swapped = []
  for k in range(12):
    _, tgt = s.example(1, k)
    (v,), _ = s.draws(1, k)
    ref = _segment(s, ["vocals"], v.track, v.start)
    np.testing.assert_array_equal(tgt[0], ref[:, ::-1] if v.swap else ref)
    swapped.append(v.swap)
  assert any(swapped) and not all(swapped)


def test_polarity_flip_is_a_sign_per_channel(mini):
  s = _sampler(_single_excerpt_config(mini, flip_polarity=True))
  patterns = set()
  for k in range(16):
    _, tgt = s.example(2, k)
    (v,), _ = s.draws(2, k)
    ref = _segment(s, ["vocals"], v.track, v.start)
    np.testing.assert_array_equal(tgt[0], ref * np.asarray(v.signs, np.float32))
    patterns.add(v.signs)
  assert len(patterns) >= 3  # of (+,+), (+,-), (-,+), (-,-)


def test_random_gain_is_bounded_and_applied(mini):
  s = _sampler(_single_excerpt_config(mini, gain_db=6.0))
  gains = []
  for k in range(10):
    _, tgt = s.example(3, k)
    (v,), _ = s.draws(3, k)
    assert abs(v.gain_db) <= 6.0
    ref = _segment(s, ["vocals"], v.track, v.start)
    np.testing.assert_allclose(tgt[0], ref * 10 ** (v.gain_db / 20), rtol=1e-6, atol=1e-9)
    gains.append(v.gain_db)
  assert np.ptp(gains) > 3.0


def test_mix_audio_sums_k_independent_excerpts_of_the_source(mini):
  s = _sampler(_single_excerpt_config(mini, mix_audio={"vocals": 3}))
  for k in range(4):
    _, tgt = s.example(4, k)
    v_excerpts, (a,) = s.draws(4, k)
    assert len(v_excerpts) == 3
    expected = sum(_segment(s, ["vocals"], e.track, e.start) for e in v_excerpts)
    np.testing.assert_allclose(tgt[0], expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(tgt[1], _segment(s, ["drums", "bass", "other"], a.track, a.start),
                               rtol=0, atol=1e-7)


def test_remix_draws_sources_independently_and_no_remix_keeps_one_song(mini):
  remix = _sampler(_single_excerpt_config(mini, remix=True))
  same = [remix.draws(5, k)[0][0].start == remix.draws(5, k)[1][0].start and
          remix.draws(5, k)[0][0].track == remix.draws(5, k)[1][0].track for k in range(20)]
  assert not all(same)
  s = _sampler(_single_excerpt_config(mini, remix=False))
  for k in range(4):
    mix, _ = s.example(5, k)
    (v,), (a,) = s.draws(5, k)
    assert (v.track, v.start) == (a.track, a.start)
    np.testing.assert_allclose(mix, _segment(s, ["vocals", "drums", "bass", "other"], v.track,
                                             v.start), rtol=0, atol=1e-6)


def test_switching_one_augmentation_off_keeps_the_other_draws(mini):
  on = _sampler(data_config(mini)).draws(6, 1)
  cfg = data_config(mini)
  cfg.augment.swap_channels = False
  off = _sampler(cfg).draws(6, 1)
  for src_on, src_off in zip(on, off):
    for a, b in zip(src_on, src_off):
      assert (a.track, a.start, a.signs) == (b.track, b.start, b.signs) and not b.swap


def test_segments_of_short_tracks_are_zero_padded(tmp_path):
  from resunet_jax.data import segment_cache  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  lengths = [1000, 200000]
  for s in sources.STEMS:
    np.ones((sum(lengths), 2), "<i2").tofile(tmp_path / f"{s}.i16")
  (tmp_path / "index.json").write_text(json.dumps(
      {"format": 1, "sources": list(sources.STEMS), "names": ["a", "b"], "lengths": lengths}))
  cache = segment_cache.SegmentCache(str(tmp_path))
  x = cache.segment("vocals", 0, 0, L)
  assert x.shape == (L, 2) and x[:1000].min() == 1 and not x[1000:].any()
  assert sampling.num_starts(cache.lengths, L, 4410).tolist() == [1, 16]


# ---------------------------------------------------------------------------------------------
# Evaluation.


def test_eval_tracks_yields_whole_tracks_in_name_order(mini):
  cfg = data_config(mini)
  tracks = list(heldout.eval_tracks(cfg))
  assert [t["name"] for t in tracks] == sorted(mini["names"]["test"])
  ref = stems_io.read_stem_file(__import__("stempeg").example_stem_path())
  (excerpt,) = [t for t in tracks if t["name"] == synthetic.EXAMPLE_TRACK]
  assert excerpt["sample_rate"] == 44100 and excerpt["mixture"].dtype == np.float32
  np.testing.assert_array_equal(excerpt["mixture"], ref["mixture"] / np.float32(32768))
  for s in sources.STEMS:
    np.testing.assert_array_equal(excerpt["stems"][s], ref[s] / np.float32(32768))
  st = excerpt["stems"]
  np.testing.assert_array_equal(st["accompaniment"], (st["drums"] + st["bass"]) + st["other"])
  assert set(st) == {"drums", "bass", "other", "vocals", "accompaniment"}
  assert [t["name"] for t in heldout.eval_tracks(cfg, num_tracks=1)] == [tracks[0]["name"]]
  picked = list(heldout.eval_tracks(cfg, "train_full", track_names=[mini["names"]["train"][1]]))
  assert [t["name"] for t in picked] == [mini["names"]["train"][1]]
  with pytest.raises(KeyError, match="not in split"):
    list(heldout.eval_tracks(cfg, track_names=["No Such - Track"]))


def test_validation_segments_are_fixed_and_consistent(mini):
  cfg = data_config(mini, input_sources=("vocals", "accompaniment"),
                    target_sources=("vocals", "accompaniment"))
  a = heldout.validation_segments(cfg, split="validation", num_segments=5, seed=1)
  b = heldout.validation_segments(cfg, split="validation", num_segments=5, seed=1)
  assert a["mixture"].shape == (5, L, 2) and a["targets"].shape == (5, 2, L, 2)
  np.testing.assert_array_equal(a["mixture"], b["mixture"])
  np.testing.assert_array_equal(a["mixture"], a["targets"][:, 0] + a["targets"][:, 1])
  assert set(a["names"]) == set(heldout.split_track_order(
      prepare.prepare(cfg), "validation")[i][0] for i in range(2))  # spread over the split
  assert np.all(np.sqrt(np.mean(a["targets"] ** 2, axis=(2, 3))) >= 1e-3)
  c = heldout.validation_segments(cfg, split="validation", num_segments=5, seed=2)
  assert not np.array_equal(a["starts"], c["starts"])


def test_hq_variant_feeds_the_same_pipeline(mini):
  cfg = data_config(mini, variant="hq")
  (b,) = _take(pipeline.train_batches(cfg, seed=0, global_batch_size=2), 1)
  assert b["mixture"].shape == (2, L, 2)
  names = [t["name"] for t in heldout.eval_tracks(cfg, num_tracks=2)]
  assert names == sorted(mini["names"]["test"])[:2]


@pytest.mark.slow
def test_builtin_data_runs_out_of_the_box(tmp_path):
  cfg = recipes.default_data_config()
  cfg.builtin_cache_dir = str(tmp_path)
  (b,) = _take(pipeline.train_batches(cfg, seed=0, global_batch_size=2), 1)
  assert b["mixture"].shape == (2, L, 2)
  root = prepare.builtin_manual_dir(str(tmp_path))
  assert sorted(p.name for p in (tmp_path.glob("*/stem/test/*"))) == sorted(
      p.name for p in __import__("pathlib").Path(root, "test").iterdir())
  names = [t["name"] for t in heldout.eval_tracks(cfg)]
  assert synthetic.EXAMPLE_TRACK in names and len(names) == 3


def test_orientation_table_matches_swap_and_per_channel_signs():
  import itertools  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for swap, s0, s1, first in itertools.product([False, True], [1.0, -1.0], [1.0, -1.0],
                                               [True, False]):
    src = rng.standard_normal((64, 2)).astype(np.float32)
    dst = rng.standard_normal((64, 2)).astype(np.float32)
    expected = (src[:, ::-1] if swap else src) * np.float32([s0, s1]) + (0 if first else dst)
    sampling._accumulate_oriented(dst, src.copy(), swap, (s0, s1), first)  # pylint: disable=protected-access
    np.testing.assert_array_equal(dst, expected)
