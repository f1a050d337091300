"""Regenerates tests/fixtures/parity/: the authors' PyTorch models (bytesep) run on known weights.

Needs the reference stack (``bash scripts/setup.sh`` installs it; by hand:
``pip install torch torchlibrosa==0.1.0 librosa && pip install --no-deps bytesep==0.1.1``), then

    python scripts/make_parity_fixtures.py                     # ~1-2 min on 2 CPU cores

For each architecture (``resunet143_ismir2021`` = ResUNet143_DecouplePlusInplaceABN_ISMIR2021,
``resunet143_subbandtime`` = ResUNet143_Subbandtime, ``mobilenet_subbandtime`` =
MobileNet_Subbandtime; stereo in and out, one source) it writes ``<arch>.npz``
(``np.savez_compressed``) with

  input           (1, 2, L) float32   the waveform fed to the model (synthetic tones and noise)
  output          (1, 2, L) float32   bytesep in float32 (eval mode)
  output_float64  (1, 2, L) float64   bytesep built after ``torch.set_default_dtype(torch.float64)``:
                                      every tensor of the model, torchlibrosa's DFT bases included,
                                      is float64 (the weights are the same float32 values)
  head_output     (1, K', T_pad, F)   the head conv's output (``after_conv2``, before masking, NCHW)
                  float32             of the float64 run, rounded to float32 to keep the folder small
  meta            JSON string         versions, weight rule and seed, input, state-dict keys/shapes,
                                      torch's own float32-vs-float64 error

L = 13232 samples (0.3 s, a multiple of 4 so that the PQMF models return every sample): 31 STFT frames
padded to 32 (the models' time multiple) for all three models, the shortest input with a full UNet.

The weights follow ``bytesep_reference.WEIGHT_RULE`` (seed 1) and are not stored, except in
``mobilenet_subbandtime_checkpoint.pth``: the MobileNet's full float32 state dict saved the way the
released checkpoints are, ``torch.save({"step": 500000, "model": state_dict})``.
``pqmf_frozen.npz`` holds the frozen PQMF conv tensors of the subband models (those of every
released checkpoint). They are read from ``--pqmf_kernels`` (default: the copy already in the output
folder, else ../shared/fixtures/parity/pqmf_frozen.npz, or the ``pqmf.*`` tensors of any released
subband ``.pth``); bytesep gets its filter files written back from them
(``bytesep_reference.bytesep_home``) and the script checks that the models it builds hold exactly
those tensors.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from resunet_jax.testing import bytesep_reference as ref  # noqa: E402

ARCHS = ("resunet143_ismir2021", "resunet143_subbandtime", "mobilenet_subbandtime")
SEED = 1
SAMPLES = 13232
CHECKPOINT_NAME = "mobilenet_subbandtime_checkpoint.pth"
INPUT_DESCRIPTION = (
    "rng = numpy.random.default_rng([seed, 1]); t = arange(L) / 44100; 6 sines, for each: "
    "frequency 80 * 100 ** rng.uniform() Hz, phase rng.uniform(0, 2 pi), amplitude "
    "rng.uniform(0.02, 0.1), per-channel gains rng.uniform(0.2, 1.0, 2); plus "
    "0.02 * rng.standard_normal((2, L)); float32, shape (1, 2, L)")


def make_input(seed, length):
  """(1, 2, length) float32 (see INPUT_DESCRIPTION)."""
  rng = np.random.default_rng([seed, 1])
  t = np.arange(length) / 44100.0
  x = np.zeros((2, length))
  for _ in range(6):
    freq = 80.0 * 100.0 ** rng.uniform()
    phase = rng.uniform(0, 2 * np.pi)
    amp = rng.uniform(0.02, 0.1)
    gains = rng.uniform(0.2, 1.0, 2)
    x += gains[:, None] * amp * np.sin(2 * np.pi * freq * t + phase)[None]
  x += 0.02 * rng.standard_normal((2, length))
  return x[None].astype(np.float32)


def default_pqmf_source(out_dir):
  for path in (os.path.join(out_dir, "pqmf_frozen.npz"),
               os.path.join(ROOT, "..", "shared", "fixtures", "parity", "pqmf_frozen.npz")):
    if os.path.isfile(path):
      return path
  raise SystemExit("no PQMF kernels found: pass --pqmf_kernels (an .npz with them or a released "
                   "subband .pth)")


def rel_l2(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def build(arch, kernels, dtype):
  """A bytesep model in ``dtype`` whose frozen PQMF tensors are checked against ``kernels``."""
  import torch  # pylint: disable=g-import-not-at-top
  with ref.default_dtype(dtype):
    model = ref.make_model(arch, pqmf_kernels=kernels)
  if arch != "resunet143_ismir2021":
    own = ref.state_dict_numpy(model)
    for key in ref.PQMF_KEYS:  # the .mat files written from the kernels give them back exactly
      if not np.array_equal(own[key], kernels[key].astype(own[key].dtype)):
        raise AssertionError(f"{arch}: {key} differs from the kernels the filters came from")
  if dtype == torch.float64:
    wrong = [k for k, v in model.state_dict().items()
             if v.is_floating_point() and v.dtype != torch.float64]
    if wrong:
      raise AssertionError(f"{arch}: float64 model has non-float64 tensors {wrong[:5]}")
  return model


def make_one(arch, kernels, x, seed):
  import torch  # pylint: disable=g-import-not-at-top
  start = time.time()
  model32 = build(arch, kernels, torch.float32)
  keys = ref.state_dict_keys(model32)
  state = ref.rule_state_dict(keys, seed)
  ref.load_numpy_state(model32, state)
  y32 = ref.forward(model32, x)
  full_state32 = model32.state_dict()
  del model32
  model64 = build(arch, kernels, torch.float64)
  ref.load_numpy_state(model64, state)
  y64, head64 = ref.forward(model64, x, head=True)
  del model64
  meta = {
      "arch": arch,
      "model": ref.CLASSES[arch][1],
      "audio_channels": 2,
      "target_sources": 1,
      "seed": seed,
      "weight_rule": ref.WEIGHT_RULE,
      "input": INPUT_DESCRIPTION,
      "samples": int(x.shape[-1]),
      "versions": ref.versions(),
      "float64_reference": "bytesep built after torch.set_default_dtype(torch.float64): every "
                           "tensor float64, torchlibrosa's DFT bases included",
      "head_output": "after_conv2 output of the float64 run, NCHW, stored as float32",
      "state_dict_keys": [[k, list(s)] for k, s in keys],
      "torch_float32_vs_float64_rel_l2": rel_l2(y32, y64),
      "torch_float32_vs_float64_max_abs": float(np.max(np.abs(y32 - y64))),
      "output_rms": float(np.sqrt(np.mean(y64 ** 2))),
      "input_rms": float(np.sqrt(np.mean(x.astype(np.float64) ** 2))),
  }
  arrays = {"input": x, "output": y32.astype(np.float32), "output_float64": y64.astype(np.float64),
            "head_output": head64.astype(np.float32), "meta": np.asarray(json.dumps(meta))}
  print(f"{arch}: output {y64.shape}, head {head64.shape}, torch float32 vs float64 rel L2 "
        f"{meta['torch_float32_vs_float64_rel_l2']:.2e} ({time.time() - start:.0f} s)", flush=True)
  return arrays, full_state32


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "parity"))
  parser.add_argument("--pqmf_kernels", default=None,
                      help="an .npz with the two pqmf.* tensors, or a released subband .pth")
  parser.add_argument("--archs", default=",".join(ARCHS))
  parser.add_argument("--seed", type=int, default=SEED)
  parser.add_argument("--samples", type=int, default=SAMPLES)
  args = parser.parse_args(argv)

  reason = ref.available()
  if reason:
    raise SystemExit(f"cannot build the bytesep models: {reason}")
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)  # bytesep's own initialisation is overwritten; this only pins its draws
  os.makedirs(args.out, exist_ok=True)
  kernels = ref.load_pqmf_kernels(args.pqmf_kernels or default_pqmf_source(args.out))
  np.savez_compressed(os.path.join(args.out, "pqmf_frozen.npz"), **kernels)
  x = make_input(args.seed, args.samples)
  for arch in args.archs.split(","):
    arrays, state32 = make_one(arch, kernels, x, args.seed)
    np.savez_compressed(os.path.join(args.out, f"{arch}.npz"), **arrays)
    if arch == "mobilenet_subbandtime":
      torch.save({"step": 500000, "model": state32}, os.path.join(args.out, CHECKPOINT_NAME))
  for name in sorted(os.listdir(args.out)):
    print(f"  {name}: {os.path.getsize(os.path.join(args.out, name)) / 2 ** 20:.2f} MiB")
  return 0


if __name__ == "__main__":
  sys.exit(main())
