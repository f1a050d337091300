r"""One 3x3 convolution layer of the ResUNet143 models, forward and both gradients, per level.

For each (1, T, F, C) -> C layer shape of the paper model (STFT bins 1024 at 3 s) and of the subband
model (256 bins), median milliseconds of
* ours: forward (``layers._conv_same``: XLA's, or the C++ kernel for <= 32 input channels), input
  gradient (``layers._input_gradient``: a convolution with the flipped, transposed kernel, or the
  C++ input gradient for the deep layers), and the kernel gradient three ways: the C++ kernel (``cpu_kernels``, what training uses on CPU),
  the blocked forward-convolution rewrite (``layers._kernel_gradient_cpu``, the fallback) and
  XLA's own (``layers._kernel_gradient_xla``);
* PyTorch (when importable): ``conv2d`` and ``aten.convolution_backward`` for each gradient.

Each side runs in its own subprocess with tcmalloc preloaded when installed.

  python bench/bench_conv_grad.py
  python bench/bench_conv_grad.py --shapes=320x1024x32,160x512x64 --repeats=21
"""
import argparse
import os
import sys
import time

import workers  # bench/workers.py: this script's folder is first on sys.path

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHAPES = ("320x1024x32,160x512x64,80x256x128,40x128x256,20x64x384,10x32x384,"
          "304x256x32,152x128x64,76x64x128,38x32x256,19x16x384,10x8x384")


def _median_ms(fn, repeats):
  import numpy as np  # pylint: disable=g-import-not-at-top
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return 1e3 * float(np.median(times))


def run_jax(shapes, repeats):
  sys.path.insert(0, REPO)
  import resunet_jax  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from resunet_jax import cpu_kernels, layers  # pylint: disable=g-import-not-at-top
  have_kernel = cpu_kernels.load()
  rng = np.random.default_rng(0)
  out = {}
  for t, f, c in shapes:
    x = jnp.asarray(rng.standard_normal((1, t, f, c)), jnp.float32)
    dy = jnp.asarray(rng.standard_normal((1, t, f, c)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, c, c)) * 0.05, jnp.float32)
    fns = {
        "fwd": (jax.jit(lambda x, k: layers._conv_same(x, k, None)), (x, k)),
        "dx": (jax.jit(lambda dy, k: layers._input_gradient(dy, k, None)), (dy, k)),
        "dW_blocked": (jax.jit(lambda x, dy: layers._kernel_gradient_cpu(x, dy, 3, 3, None)),
                       (x, dy)),
        "dW_xla": (jax.jit(lambda x, dy, k: layers._kernel_gradient_xla(x, dy, k, None)),
                   (x, dy, k)),
    }
    if have_kernel:
      fns["dW_cpp"] = (jax.jit(lambda x, dy: cpu_kernels.conv_kernel_grad(x, dy, 3, 3)), (x, dy))
    out[f"{t}x{f}x{c}"] = {name: _median_ms(lambda fn=fn, a=a: jax.block_until_ready(fn(*a)),
                                            repeats)
                           for name, (fn, a) in fns.items()}
  return {"side": "jax", "times": out}


def run_torch(shapes, repeats):
  import torch  # pylint: disable=g-import-not-at-top
  out = {}
  conv_bwd = torch.ops.aten.convolution_backward
  for t, f, c in shapes:
    x, dy = torch.randn(1, c, t, f), torch.randn(1, c, t, f)
    w = torch.randn(c, c, 3, 3) * 0.05

    def grad(mask, x=x, dy=dy, w=w):
      return conv_bwd(dy, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)

    with torch.no_grad():
      out[f"{t}x{f}x{c}"] = {
          "fwd": _median_ms(lambda x=x, w=w: torch.nn.functional.conv2d(x, w, padding=1), repeats),
          "dx": _median_ms(lambda: grad([True, False, False]), repeats),
          "dW": _median_ms(lambda: grad([False, True, False]), repeats)}
  return {"side": "torch", "threads": torch.get_num_threads(), "times": out}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shapes", default=SHAPES, help="TxFxC,... (batch 1, C -> C, 3x3)")
  parser.add_argument("--repeats", type=int, default=11)
  parser.add_argument("--no_torch", action="store_true")
  parser.add_argument("--child", choices=("jax", "torch"), help=argparse.SUPPRESS)
  args = parser.parse_args()
  shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
  if args.child:
    fn = run_jax if args.child == "jax" else run_torch
    return workers.report(fn(shapes, args.repeats))

  argv = [f"--shapes={args.shapes}", f"--repeats={args.repeats}"]
  env = {"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
  ours = workers.run(__file__, ["--child=jax", *argv], tcmalloc=True, env=env)
  theirs = None
  if not args.no_torch:
    try:
      import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
      theirs = workers.run(__file__, ["--child=torch", *argv], tcmalloc=True, env=env)
    except ImportError:
      pass
  for result in (ours, theirs):
    if result and "error" in result:
      print(f"{result.get('side', 'child')} failed: {result['error']}")
      return 1
  print(f"# median ms over {args.repeats} runs; CPU cores: {os.cpu_count()}; tcmalloc: "
        f"{'yes' if workers.have_tcmalloc() else 'no'}; torch: "
        f"{'yes, %d threads' % theirs['threads'] if theirs else 'no'}")
  print(f"{'layer (1,T,F,C)':16s} {'fwd':>6s} {'dx':>6s} {'dW C++':>7s} {'dW blk':>7s} "
        f"{'dW XLA':>7s} | {'torch fwd':>9s} {'dx':>6s} {'dW':>6s} | {'fwd+dx+dW ours/torch':>20s}")
  for key, m in ours["times"].items():
    dw = m.get("dW_cpp", m["dW_blocked"])
    cells = [f"{key:16s}", f"{m['fwd']:6.1f}", f"{m['dx']:6.1f}",
             f"{m['dW_cpp']:7.1f}" if "dW_cpp" in m else f"{'n/a':>7s}",
             f"{m['dW_blocked']:7.1f}", f"{m['dW_xla']:7.1f}", "|"]
    if theirs:
      p = theirs["times"][key]
      cells += [f"{p['fwd']:9.1f}", f"{p['dx']:6.1f}", f"{p['dW']:6.1f}", "|",
                f"{m['fwd'] + m['dx'] + dw:9.1f} / {p['fwd'] + p['dx'] + p['dW']:<9.1f}"]
    print(" ".join(cells))
  return 0


if __name__ == "__main__":
  sys.exit(main())
