r"""The paper model on a large slice: global batch 256 x 3 s, the recipe scaled by a stated rule.

Scaling rule from the paper's recipe (batch 16, lr 1e-3, 500 001 updates, x0.9 every 15 000), for
a global batch B = 256 (k = B / 16 = 16):
  * the same number of training examples: 500 001 * 16 / 256 -> 31 251 updates; validation and
    checkpoints every 625 updates (10 000 / 16); the x0.9 decay every 938 updates (15 000 / 16),
    i.e. after the same number of examples as the paper's;
  * learning rate x sqrt(k) = 4e-3: the square-root rule for Adam-type optimisers (Malladi et al.,
    "On the SDEs and Scaling Rules for Adaptive Gradient Algorithms", NeurIPS 2022), not the linear
    rule of SGD; betas and eps unchanged;
  * a warm-up of 1 000 updates, as the paper's in updates (16x its examples): the larger rate is
    reached more gently.
This is the rule, not a tuned result: no run at this batch size was made for this repository.
Scale the batch again the same way (``--config.global_batch_size=512 --config.optimizer.
learning_rate=5.66e-3 ...``). The global batch must be a multiple of the number of devices of all
processes; train.py stops at once, naming the nearest valid sizes, when it is not.

Prepare the data once, before the hosts start (else process 0 builds it from
``data.manual_dir`` while the others wait)::

  python -m resunet_jax.data.build --variant=stem --manual_dir=/data/musdb18 \
      --data_dir=gs://BUCKET/tfds

TPU pod slice (e.g. v5e-64: 16 hosts x 4 chips; one process per host, the same command on every
host; ``jax.distributed`` reads the slice from the TPU environment). 4 examples per chip fit with
the remat this config inherits (``model.remat = "stage"``): 7.94 of 15.75 GiB of HBM per chip
(``resunet-aot --config=configs/resunet143_ismir2021_pod.py --topology=v5e:8x8``; compiler
estimate, libtpu 0.0.42.1)::

  gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all --command="cd resunet_jax && \
      python train.py --config=configs/resunet143_ismir2021_pod.py \
      --workdir=gs://BUCKET/runs/ismir_b256 --config.data.data_dir=gs://BUCKET/tfds"

8-GPU node of 80 GB GPUs (one process drives the 8 local GPUs: 32 examples per GPU; estimated from
the TPU compiles, 0.35 GiB per example with remat=stage: ~13 GiB at 32; not compiled for a GPU,
none was available)::

  python train.py --config=configs/resunet143_ismir2021_pod.py --workdir=/checkpoints/ismir_b256 \
      --config.data.data_dir=/data/tfds --config.data.manual_dir=/data/musdb18

Several GPU nodes under SLURM (one process per node; JAX reads SLURM's variables)::

  srun --nodes=4 --ntasks-per-node=1 python train.py --config=configs/resunet143_ismir2021_pod.py \
      --workdir=gs://BUCKET/runs/ismir_b256 --config.data.data_dir=gs://BUCKET/tfds

Each host writes its own segment cache on local disk (``data.cache_dir``, ~16.5 GB for MUSDB18).
After a preemption every process exits with code 143; the same command resumes at the saved step,
also on another number of hosts (same global batch). Expected run time: accelerator work, not
measured here (one H200 ran the paper model at 109 examples/s in bfloat16: 31 251 updates of 256
are 8 M examples, ~20 h on one such GPU).
"""
from configs import default

PAPER_BATCH = 16


def get_config():
  config = default.get_config()
  batch = 256
  k = batch / PAPER_BATCH
  config.global_batch_size = batch
  config.num_train_steps = -(-500_001 * PAPER_BATCH // batch)  # ceil: 31 251
  config.optimizer.learning_rate = 1e-3 * k ** 0.5
  config.schedule.warm_up_steps = 1000
  config.schedule.decay_steps = round(15_000 / k)  # 938
  config.eval_every_steps = round(10_000 / k)  # 625
  config.checkpoint_every_steps = round(10_000 / k)
  config.log_every_steps = 50
  config.model.dtype = "bfloat16"  # bf16 compute, float32 parameters (accelerators)
  return config
