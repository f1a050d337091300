r"""Training-step throughput: our JAX step vs the authors' PyTorch step, same model and batch.

For each architecture (the paper's 3 s segments, a small global batch): steps/s and examples/s of
* ours: ``resunet_jax.training.step.make_train_step`` (shard_map over the local devices, L1 loss,
  PyTorch-exact AMSGrad, LambdaLR schedule), compilation excluded;
* bytesep: ``model({'waveform': x})['waveform']``, L1 loss, ``backward()``,
  ``torch.optim.Adam(amsgrad=True).step()`` and ``LambdaLR.step()``, when bytesep and torch import.

Each side runs in its own subprocess (one model at a time, so the two never compete for the CPU),
with tcmalloc preloaded when it exists (PyTorch's CPU allocator needs it; ``--jax_preload=none``
measures ours without). Both sides get the same batch (tones in noise, seed 0).

  python bench/bench_train.py                        # all three models, batch 1, 3 s
  python bench/bench_train.py --models=mobilenet_subbandtime --batch=2 --steps=5 --conv_backend=cpu

Expected run time on 2 CPU cores: roughly 10-15 minutes (compiling the two ResUNet143 train steps
takes a few minutes).
"""
import argparse
import json
import os
import sys
import time

import workers  # bench/workers.py: this script's folder is first on sys.path

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
ARCHS = ("resunet143_ismir2021", "resunet143_subbandtime", "mobilenet_subbandtime")
PQMF_DIR = os.path.join(REPO, "..", "shared", "data", "pqmf")  # optional (bytesep_shim)


def make_batch(batch, seconds, seed=0):
  sys.path.insert(0, REPO)
  import ml_collections  # pylint: disable=g-import-not-at-top
  from resunet_jax.training import inputs  # pylint: disable=g-import-not-at-top
  data = ml_collections.ConfigDict(dict(input_sources=("vocals", "accompaniment"),
                                        target_sources=("vocals",), segment_seconds=seconds))
  return inputs.RandomBatches(data, seed=seed, global_batch_size=batch).batch(0)


def run_jax(arch, batch, seconds, steps, warmup, dtype="float32", backend="xla"):
  sys.path.insert(0, REPO)
  from resunet_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.set_xla_cpu_flags()
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from resunet_jax import models  # pylint: disable=g-import-not-at-top
  from resunet_jax.training import optim  # pylint: disable=g-import-not-at-top
  from resunet_jax.training import state as state_lib  # pylint: disable=g-import-not-at-top
  from resunet_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top

  config = ml_collections.ConfigDict(dict(
      optimizer=dict(name="pytorch_amsgrad", learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8,
                     weight_decay=0.0),
      schedule=dict(name="lambda_lr", warm_up_steps=1000, decay_steps=15000, decay_rate=0.9)))
  model = models.build_model(arch, dtype=dtype, conv_backend=backend)
  tx = optim.make_optimizer(config)
  devices = jax.local_devices()
  devices = devices[:max(d for d in range(1, len(devices) + 1) if batch % d == 0)]
  mesh = step_lib.make_mesh(devices)
  t0 = time.time()
  state = state_lib.init_train_state(model, tx, 0, sharding=step_lib.replicated(mesh))
  jax.block_until_ready(state)
  init_s = time.time() - t0
  host = make_batch(batch, seconds)
  train_step = step_lib.make_train_step(mesh, model, tx, optim.make_schedule(config))
  gbatch = step_lib.global_batch(mesh, host)
  metrics = step_lib.empty_metrics(mesh)
  t0 = time.time()
  compiled = train_step.lower(state, gbatch, metrics).compile()
  compile_s = time.time() - t0
  for _ in range(warmup):
    state, metrics = compiled(state, gbatch, metrics)
    jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    t0 = time.time()
    state, metrics = compiled(state, gbatch, metrics)
    jax.block_until_ready(metrics)
    times.append(time.time() - t0)
  return {"side": "jax", "arch": arch, "devices": len(devices), "platform": devices[0].platform,
          "dtype": dtype, "init_s": init_s,
          "compile_s": compile_s, "step_times": times, "loss": float(metrics.compute()["loss"]),
          "params": models.count_params(state.params)}


def run_torch(arch, batch, seconds, steps, warmup):
  sys.path.insert(0, HERE)
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import bytesep_shim  # pylint: disable=g-import-not-at-top
  host = make_batch(batch, seconds)
  model = bytesep_shim.make_model(arch, pqmf_dir=PQMF_DIR)
  model.train()
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                               weight_decay=0.0, amsgrad=True)
  scheduler = torch.optim.lr_scheduler.LambdaLR(
      optimizer, lambda s: s / 1000 if s <= 1000 else 0.9 ** (s // 15000))
  mixture = torch.from_numpy(np.ascontiguousarray(host["mixture"].transpose(0, 2, 1)))
  # (B, S, L, C) -> (B, S*C, L), source-major as the authors' targets.
  b, s, length, c = host["targets"].shape
  target = torch.from_numpy(np.ascontiguousarray(
      host["targets"].transpose(0, 1, 3, 2).reshape(b, s * c, length)))

  def step():
    optimizer.zero_grad()
    out = model({"waveform": mixture})["waveform"]
    loss = torch.mean(torch.abs(out - target))
    loss.backward()
    optimizer.step()
    scheduler.step()
    return float(loss)

  for _ in range(warmup):
    step()
  times = []
  for _ in range(steps):
    t0 = time.time()
    loss = step()
    times.append(time.time() - t0)
  return {"side": "torch", "arch": arch, "threads": torch.get_num_threads(), "step_times": times,
          "loss": loss, "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
          "stand_ins": list(bytesep_shim.STAND_INS)}


def _child(args):
  if args.child == "jax":
    result = run_jax(args.models, args.batch, args.seconds, args.steps, args.warmup, args.dtype,
                     args.conv_backend)
  else:
    result = run_torch(args.models, args.batch, args.seconds, args.steps, args.warmup)
  workers.report(result)


def _spawn(side, arch, args, preload):
  env = {"TF_CPP_MIN_LOG_LEVEL": "2"}
  if side == "torch" or args.jax_platform == "cpu":
    env["CUDA_VISIBLE_DEVICES"] = ""  # PyTorch's side is the CPU one; so is ours unless asked
  return workers.run(__file__, [f"--child={side}", f"--models={arch}", f"--batch={args.batch}",
                                f"--seconds={args.seconds}", f"--steps={args.steps}",
                                f"--warmup={args.warmup}", f"--dtype={args.dtype}",
                                f"--conv_backend={args.conv_backend}"],
                     tcmalloc=preload, env=env)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default=",".join(ARCHS))
  parser.add_argument("--batch", type=int, default=1, help="global batch")
  parser.add_argument("--seconds", type=float, default=3.0, help="segment length (paper: 3 s)")
  parser.add_argument("--steps", type=int, default=3, help="timed steps per side")
  parser.add_argument("--warmup", type=int, default=1, help="untimed steps after compilation")
  parser.add_argument("--jax_preload", choices=("tcmalloc", "none"), default="tcmalloc")
  parser.add_argument("--no_torch", action="store_true")
  parser.add_argument("--jax_platform", choices=("cpu", "gpu"), default="cpu",
                      help="gpu: our step on the GPUs (the PyTorch side stays on the CPU)")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="our compute dtype (parameters stay float32)")
  parser.add_argument("--conv_backend", choices=("xla", "cpu"), default="xla",
                      help="our convolution backend (resunet_jax.backends; cpu: the MobileNet's "
                           "depthwise convolutions as XLA:CPU runs them fastest)")
  parser.add_argument("--child", choices=("jax", "torch"), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    return _child(args)

  sys.path.insert(0, HERE)
  import bytesep_shim  # pylint: disable=g-import-not-at-top
  torch_reason = "--no_torch" if args.no_torch else bytesep_shim.available()
  print(f"# batch {args.batch} x {args.seconds} s stereo, {args.steps} timed steps after "
        f"{args.warmup} warm-up; CPU cores: {os.cpu_count()}; tcmalloc: "
        f"{'yes' if workers.have_tcmalloc() else 'no'} (ours: {args.jax_preload}); "
        f"bytesep: {torch_reason or 'yes'}", flush=True)
  rows = []
  for arch in args.models.split(","):
    ours = _spawn("jax", arch, args, preload=args.jax_preload == "tcmalloc")
    theirs = _spawn("torch", arch, args, preload=True) if not torch_reason else None
    rows.append((arch, ours, theirs))
    print(f"# {arch}: jax {json.dumps(ours)}", flush=True)
    if theirs:
      print(f"# {arch}: torch {json.dumps(theirs)}", flush=True)

  def rate(result):
    if not result or "error" in result:
      return None
    return len(result["step_times"]) / sum(result["step_times"])

  print()
  print(f"{'model':26s} {'params':>11s} {'jax steps/s':>11s} {'ex/s':>7s} {'compile s':>9s} "
        f"{'torch steps/s':>13s} {'ex/s':>7s} {'jax/torch':>9s}")
  for arch, ours, theirs in rows:
    r_ours, r_theirs = rate(ours), rate(theirs)
    cells = [f"{arch:26s}", f"{ours.get('params', 0):>11,d}"]
    cells += ([f"{r_ours:11.3f}", f"{r_ours * args.batch:7.3f}", f"{ours['compile_s']:9.1f}"]
              if r_ours else [f"{'error':>11s}", f"{'':>7s}", f"{'':>9s}"])
    if r_theirs:
      cells += [f"{r_theirs:13.3f}", f"{r_theirs * args.batch:7.3f}",
                f"{r_ours / r_theirs:9.2f}" if r_ours else f"{'':>9s}"]
    else:
      cells += [f"{'n/a':>13s}", f"{'':>7s}", f"{'':>9s}"]
    print(" ".join(cells))
  for arch, ours, theirs in rows:
    for side, result in (("jax", ours), ("torch", theirs)):
      if result and "error" in result:
        print(f"{arch} {side} failed: {result['error']}")


if __name__ == "__main__":
  main()
