r"""The paper's training recipe: ResUNet143 DecouplePlus (ISMIR 2021 model), vocals.

REFERENCE §6.1: 3 s segments, global batch 16, Adam with PyTorch's amsgrad, lr 1e-3, linear warm-up
over 1 000 updates then x0.9 every 15 000, L1 waveform loss, validation every 10 000 steps,
500 001 updates (the authors' ``max_steps``; their ``step=500000.pth`` = our step 500001: a
Lightning file ``step=n.pth`` holds the weights after n + 1 updates, our step counts updates).
Every other config in this folder is derived from this one.

  python train.py --config=configs/default.py --workdir=/tmp/resunet143_vocals \
      --config.data.manual_dir=/data/musdb18

Expected run time: accelerator work. Not measured on a GPU/TPU here; on the 2-core CPU one update at
batch 1 takes ~34 s (bench/bench_train.py), i.e. ~9 min per update at batch 16. Without
``manual_dir`` it trains on the small built-in data set.
"""
import ml_collections

from resunet_jax import models
from resunet_jax.data import recipes


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0  # model init, data sampling and the per-step RNG all derive from it.
  # Independent runs trained in one program (seeds seed .. seed + replicas - 1, each with its own
  # initialisation and data order; global_batch_size is per replica): README "Replicas".
  config.replicas = 1
  # How a device runs the replicas it holds: "auto" (unroll on CPU, vmap elsewhere), "vmap",
  # "unroll" or "map" (resunet_jax.training.program.resolve_replica_method has the measurements).
  config.replica_method = "auto"

  # The preset (a key of resunet_jax.models.ARCHITECTURES) and every Separator field, each None =
  # the preset's value: e.g. --config.model.width=0.25 --config.model.levels=4 (smaller networks
  # from the same blocks), --config.model.mask=irm (ablations: resunet_jax.masks.MASKS),
  # --config.model.dtype=bfloat16 (bf16 compute, float32 parameters), --config.model.conv_backend=cpu
  # (resunet_jax.backends). Unknown or invalid values stop before anything starts, naming the key.
  config.model = models.model_config("resunet143_ismir2021")
  # Rematerialisation each encoder/decoder stage: the paper's batch of 16 x 3 s then fits on one
  # 16 GB TPU v5e chip (bfloat16: README "The accelerator, measured from any machine"), at the
  # cost of recomputing each stage's forward pass in the backward pass. Where memory allows
  # (an H200 at batch 16), --config.model.remat=none is faster.
  config.model.remat = "stage"

  config.data = recipes.default_data_config()  # "random" as data.name: no-TF tones in noise

  config.global_batch_size = 16  # split over every device of every process
  config.num_train_steps = 500_001
  config.loss = "l1_wav"

  config.optimizer = ml_collections.ConfigDict(dict(
      name="pytorch_amsgrad",  # torch.optim.Adam(amsgrad=True); or "optax_amsgrad", "adam", "sgd"
      learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0))
  config.schedule = ml_collections.ConfigDict(dict(
      name="lambda_lr",  # or "constant"
      warm_up_steps=1000, decay_steps=15000, decay_rate=0.9))

  config.log_every_steps = 100
  config.eval_every_steps = 10_000  # validation SDR (and audio examples); 0 = never
  config.checkpoint_every_steps = 10_000
  config.keep_checkpoints = 3  # the last k, plus the one with the best validation SDR
  config.keep_best_checkpoint = True
  config.async_checkpoints = True

  config.validation = ml_collections.ConfigDict(dict(
      num_segments=32,  # fixed held-out segments of data.validation_split
      seed=0,
      batch_size=16,  # global; rounded up to a multiple of the device count
      window_seconds=1.0,  # SDR windows (museval: 1 s); median over windows, then over segments
      audio_examples=2,  # validation separations written to TensorBoard as audio
  ))

  config.num_devices = 0  # 0: every device of every process; n: the first n (one process only)
  # Persistent XLA compilation cache (a restart does not compile again): "auto" = WORKDIR/xla_cache,
  # a path or URL, or "" for none.
  config.compilation_cache_dir = "auto"
  config.max_steps_in_flight = 2  # updates dispatched ahead of the devices (bounds a preemption save)
  config.profile_steps = 0  # > 0: a profiler trace of that many updates into the work directory
  config.profile_first_step = 10  # ... starting this many updates after the (re)start
  return config
