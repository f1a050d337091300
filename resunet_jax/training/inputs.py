"""Training batches and validation segments for the loop, from ``config.data``.

``data.name``:
  * "musdb18": the tf.data pipeline of :mod:`resunet_jax.data.pipeline` (MUSDB18, or with
    ``manual_dir=""`` the built-in synthetic tracks + the real stempeg excerpt);
  * "random": tones-in-noise generated in numpy, no TensorFlow -- for tests and benchmarks.
Either way example k of global step n is a pure function of (seed, n, k), so a run resumed at step n
and a run split over several processes see exactly the batches of one uninterrupted run.

Replicas (``config.replicas`` = R > 1): replica k's batches are those of a run with seed
``seed + k`` (``ReplicaBatches``: one pipeline per replica), stacked to (R, B, ...).
"""
import copy
from typing import Dict, Iterator, Sequence

import numpy as np

from resunet_jax import sources as sources_lib

SAMPLE_RATE = sources_lib.SAMPLE_RATE  # the name training.loop reads


def segment_samples(data_config) -> int:
  return int(round(float(data_config.segment_seconds) * SAMPLE_RATE))


def prepare(config) -> None:
  """Once per run, before the data is read (collective: every process calls it).

  Process 0 prepares the TFDS data (the built-in set, or a build from ``data.manual_dir``) while
  the others wait; then each process opens it -- on storage all hosts share that is the one
  build, a host-local data dir is built by that host (processes of one machine take turns: a
  file lock). A failure on process 0 stops every process (no one is left waiting). Each process
  then writes or opens its own local segment cache and the stored validation segments when it
  first reads them. A remote ``data.cache_dir`` is refused here, before anything is built.
  """
  if config.data.name == "random":
    return
  from resunet_jax.data import prepare as prepare_lib  # pylint: disable=g-import-not-at-top
  from resunet_jax.training import distributed  # pylint: disable=g-import-not-at-top
  prepare_lib.check_cache_dir(config.data)
  error = None
  if distributed.jax.process_index() == 0:
    try:
      prepare_lib.prepare(config.data)
    except Exception as e:  # pylint: disable=broad-except  (re-raised below, after telling others)
      error = e
  if not all(distributed.all_processes(int(error is None))):
    if error is not None:
      raise error
    raise RuntimeError("preparing the data failed on process 0 (see its log); stopping")
  if distributed.jax.process_index() != 0:
    prepare_lib.prepare(config.data)


def train_batches(config, *, start_step: int, process_index: int = 0, process_count: int = 1
                  ) -> Iterator[Dict[str, np.ndarray]]:
  """Host batches {"mixture": (B_host, L, 2), "targets": (B_host, S, L, 2)} from ``start_step``."""
  data = config.data
  if data.name == "random":
    return RandomBatches(data, seed=config.seed, global_batch_size=config.global_batch_size,
                         start_step=start_step, process_index=process_index,
                         process_count=process_count)
  from resunet_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.train_batches(data, seed=config.seed, global_batch_size=config.global_batch_size,
                                start_step=start_step, process_index=process_index,
                                process_count=process_count)


def _row_blocks(rows: Sequence[int], batch: int, chunk: int):
  """``rows`` (sorted example indices of a global batch of ``batch``) as pipeline shares
  (process_index, process_count): each contiguous run of rows is one share when it is aligned to
  its length, else one share per ``chunk`` rows (a device's share, always aligned)."""
  runs = []
  for r in rows:
    if runs and r == runs[-1][1]:
      runs[-1][1] += 1
    else:
      runs.append([r, r + 1])
  blocks = []
  for a, b in runs:
    n = b - a
    if batch % n == 0 and a % n == 0:
      blocks.append((a // n, batch // n))
    else:
      if a % chunk or n % chunk:
        raise ValueError(f"examples [{a}, {b}) of a batch of {batch} are not whole device "
                         f"shares of {chunk}")
      blocks.extend((i, batch // chunk) for i in range(a // chunk, b // chunk))
  return blocks


class ReplicaBatches:
  """Host batches {"mixture": (R_p, B_p, L, 2), "targets": (R_p, B_p, S, L, 2)} of replicated
  training: for each replica k of ``replicas``, the examples ``rows`` of the global batch that a
  run with seed ``config.seed + k`` sees (``train_batches``), i.e. what this process's devices
  hold (``step.process_indices``; all replicas and examples in one process)."""

  def __init__(self, config, *, start_step: int, replicas: Sequence[int], rows: Sequence[int],
               chunk: int):
    batch = int(config.global_batch_size)
    self.blocks = _row_blocks(list(rows), batch, chunk)
    self.pipelines = []
    for k in replicas:
      replica_config = copy.deepcopy(config)
      replica_config.seed = int(config.seed) + int(k)
      self.pipelines.append([train_batches(replica_config, start_step=start_step,
                                           process_index=i, process_count=n)
                             for i, n in self.blocks])

  def __iter__(self):
    return self

  def __next__(self):
    per_replica = []
    for blocks in self.pipelines:
      parts = [next(p) for p in blocks]
      per_replica.append({k: np.concatenate([p[k] for p in parts]) if len(parts) > 1
                          else parts[0][k] for k in parts[0]})
    return {k: np.stack([b[k] for b in per_replica]) for k in per_replica[0]}

  def close(self):
    for blocks in self.pipelines:
      for p in blocks:
        if hasattr(p, "close"):
          p.close()


def validation_segments(config) -> Dict[str, np.ndarray]:
  """{"mixture": (N, L, 2), "targets": (N, S, L, 2)}: the fixed held-out segments."""
  val = config.validation
  if config.data.name == "random":
    gen = RandomBatches(config.data, seed=val.seed + 1_000_003, global_batch_size=val.num_segments)
    return gen.batch(0)
  from resunet_jax.data import heldout  # pylint: disable=g-import-not-at-top
  out = heldout.validation_segments(config.data, num_segments=val.num_segments, seed=val.seed)
  return {"mixture": out["mixture"], "targets": out["targets"]}


class RandomBatches:
  """Tones in noise: input source j is two sines from its own octave band (at 110 * 4^j Hz and up)
  with a random envelope; the last input source also carries white noise. Targets are the named
  input sources, the mixture their sum -- separable, so a model learns something."""

  def __init__(self, data_config, *, seed: int, global_batch_size: int, start_step: int = 0,
               process_index: int = 0, process_count: int = 1):
    if global_batch_size % process_count:
      raise ValueError(f"global_batch_size {global_batch_size} is not divisible by the process "
                       f"count {process_count}")
    self.inputs = tuple(data_config.input_sources)
    targets = tuple(data_config.target_sources)
    missing = [t for t in targets if t not in self.inputs]
    if missing:
      raise ValueError(f"config.data.target_sources {missing} are not input sources "
                       f"{self.inputs} (data.name='random' needs targets among the inputs)")
    self.target_index = [self.inputs.index(t) for t in targets]
    self.length = segment_samples(data_config)
    self.seed = int(seed)
    self.host_batch = global_batch_size // process_count
    self.first_k = process_index * self.host_batch
    self.step = int(start_step)

  def example(self, step: int, k: int):
    rng = np.random.default_rng([self.seed, int(step), int(k)])
    t = np.arange(self.length) / SAMPLE_RATE
    sources = np.empty((len(self.inputs), self.length, 2), np.float32)
    for j in range(len(self.inputs)):
      low = 110.0 * 4.0 ** j
      freqs = rng.uniform(low, 2 * low, size=2)
      phases = rng.uniform(0, 2 * np.pi, size=2)
      amp = rng.uniform(0.03, 0.15, size=2)
      pan = rng.uniform(0.3, 1.0, size=2)
      rate = rng.uniform(0.5, 4.0)
      envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))
      tone = sum(a * np.sin(2 * np.pi * f * t + p) for a, f, p in zip(amp, freqs, phases))
      sources[j] = (envelope * tone)[:, None] * pan[None, :]
      if j == len(self.inputs) - 1:
        sources[j] += 0.02 * rng.standard_normal((self.length, 2))
    return sources.sum(axis=0), sources[self.target_index]

  def batch(self, step: int):
    pairs = [self.example(step, self.first_k + i) for i in range(self.host_batch)]
    return {"mixture": np.stack([p[0] for p in pairs]).astype(np.float32),
            "targets": np.stack([p[1] for p in pairs]).astype(np.float32)}

  def __iter__(self):
    return self

  def __next__(self):
    out = self.batch(self.step)
    self.step += 1
    return out
