"""Training: the paper's recipe on one CPU, one GPU or a TPU pod with the same code.

  optim          PyTorch-exact AMSGrad (optax) and the authors' LambdaLR schedule
  state          TrainState: step, variables, optimiser state, base RNG key
  step           the per-device train / validation steps and their shard_map wrappers
  inputs         training batches and validation segments from ``config.data``
  sdr            a jit-compiled windowed SDR for validation
  checkpointing  Orbax checkpoints (async, atomic, last k + best SDR), SIGTERM, model loading
  distributed    jax.distributed start-up
  loop           ``train_and_evaluate(config, workdir)``

Submodules are imported on demand (``from resunet_jax.training import loop``).
"""
