"""C++ CPU kernels for the convolutions of ``resunet_jax.layers`` (XLA FFI custom calls).

Where XLA:CPU is slowest for these models, ``csrc/conv_kernels.cc`` computes directly
(register-tiled, AVX-512 / AVX2 / generic copies chosen at run time, split over XLA's intra-op
threads). Measured on
a 2-core Xeon (``bench/bench_conv_grad.py``; 3x3 layers (1, T, F, C) -> C):
* ``conv_kernel_grad``, the kernel gradient of a stride-1 "SAME" convolution (XLA: a "backprop
  filter" convolution 3-6x slower than the forward pass): (320, 1024, 32) 106 ms, or 44 ms as
  blocked forward convolutions (``layers._kernel_gradient_cpu``), -> 22 ms;
* ``conv``, the forward convolution, used for <= 32 input channels, where XNNPACK is weakest:
  (320, 1024, 32) 24.5 -> 20.7 ms;
* ``conv_input_grad``, the input gradient, used for the deep layers (few pixels, many channels):
  a flipped, transposed kernel copy plus a convolution elsewhere; (10, 8, 384) 2.34 -> 0.94 ms;
* ``flip_swap``, that flipped, transposed kernel (elsewhere): (3, 3, 384, 384) 1.28 -> 0.45 ms;
* ``depthwise_kernel_grad``, the kernel gradient of a 3x3 depthwise convolution (XLA: nine
  reductions): (1, 304, 256, 64) 24.5 -> 1.6 ms.

The source is compiled on first use with the system C++ compiler (``$CXX``, else ``c++``, ``g++``
or ``clang++``; about 5 s) into a cache directory (``$RESUNET_JAX_KERNEL_CACHE``, else
``$XDG_CACHE_HOME/resunet_jax`` or ``~/.cache/resunet_jax``), keyed by the source, jaxlib's version
and the compiler, and written atomically (several processes may build it at once). Without a
compiler, or when the build fails, a warning says why once and XLA's ops are used.
``RESUNET_CPU_KERNELS=0`` turns the kernels off. All take float32 and, but for ``flip_swap``, a
multiple of 16 output channels; ``layers`` checks that and falls back to XLA otherwise.

Results do not depend on the number of threads (work is split by shapes only), but sums run in
another order than XLA's: results differ from XLA's by float rounding (~1e-6 relative).
"""
import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import warnings

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

KERNEL_GRAD_TARGET = "resunet_conv_kernel_grad_f32"
FLIP_SWAP_TARGET = "resunet_flip_swap_f32"
CONV_TARGET = "resunet_conv_f32"
DEPTHWISE_TARGET = "resunet_depthwise_kernel_grad_f32"
INPUT_GRAD_TARGET = "resunet_conv_input_grad_f32"
_TARGETS = ((KERNEL_GRAD_TARGET, "ResunetConvKernelGradF32"), (CONV_TARGET, "ResunetConvF32"),
            (DEPTHWISE_TARGET, "ResunetDepthwiseKernelGradF32"),
            (FLIP_SWAP_TARGET, "ResunetFlipSwapF32"),
            (INPUT_GRAD_TARGET, "ResunetConvInputGradF32"))
SOURCES = ("conv_kernels.cc", "conv_kernels_loops.inc")
SOURCE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
# Output channels must be a multiple of this (the widest vector, AVX-512's 16 floats).
CHANNEL_MULTIPLE = 16
# The ``isa`` attribute of the custom call: the best the CPU has, or one forced (tests).
ISA_AUTO, ISA_GENERIC, ISA_AVX2, ISA_AVX512 = 0, 1, 2, 3
CXXFLAGS = ("-O3", "-DNDEBUG", "-std=gnu++17", "-fPIC", "-shared", "-w")

_lock = threading.Lock()
_state = {"loaded": None, "error": None, "path": None}


def enabled():
  """False when ``RESUNET_CPU_KERNELS=0``."""
  return os.environ.get("RESUNET_CPU_KERNELS", "1") != "0"


def cache_dir():
  if os.environ.get("RESUNET_JAX_KERNEL_CACHE"):
    return os.environ["RESUNET_JAX_KERNEL_CACHE"]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "resunet_jax")


def find_compiler():
  for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
    if name and shutil.which(name):
      return shutil.which(name)
  return None


def _library_name(compiler):
  h = hashlib.sha256()
  for name in SOURCES:
    with open(os.path.join(SOURCE_DIR, name), "rb") as f:
      h.update(f.read())
  h.update(jaxlib.__version__.encode())  # the FFI headers come with jaxlib
  h.update(compiler.encode())
  h.update(" ".join(CXXFLAGS).encode())
  h.update(os.uname().machine.encode())
  return f"conv_kernels-{h.hexdigest()[:16]}.so"


def build(compiler=None, directory=None):
  """Compiles the kernels (if not cached) and returns the library's path; raises on failure."""
  compiler = compiler or find_compiler()
  if compiler is None:
    raise RuntimeError("no C++ compiler found ($CXX, c++, g++, clang++)")
  directory = directory or cache_dir()
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, _library_name(compiler))
  if os.path.exists(path):
    return path
  fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=directory)
  os.close(fd)
  cmd = [compiler, *CXXFLAGS, "-I", jax.ffi.include_dir(),
         os.path.join(SOURCE_DIR, SOURCES[0]), "-o", tmp]
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
      raise RuntimeError(f"compiling {SOURCES[0]} failed ({' '.join(cmd)}):\n"
                         f"{proc.stderr.strip()[-2000:]}")
    os.chmod(tmp, 0o755)  # mkstemp makes it private; a shared cache directory needs it readable
    os.replace(tmp, path)  # atomic: another process sees the whole library or none
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def load():
  """Builds (once per machine) and registers the kernels; False, with one warning, if it cannot."""
  with _lock:
    if _state["loaded"] is None:
      try:
        path = build()
        lib = ctypes.CDLL(path)
        for target, symbol in _TARGETS:
          jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                      platform="cpu")
        _state.update(loaded=True, path=path)
      except Exception as e:  # pylint: disable=broad-except
        _state.update(loaded=False, error=f"{type(e).__name__}: {e}")
        warnings.warn("resunet_jax: the C++ CPU kernels for convolutions are not available, "
                      f"using XLA's ops (slower): {_state['error']}", RuntimeWarning,
                      stacklevel=2)
    return _state["loaded"]


def conv_kernel_grad(x, dy, kh, kw, isa=ISA_AUTO):
  """dW (kh, kw, I, O) of a stride-1 "SAME" convolution: x (N, T, F, I), dy (N, T, F, O), float32.

  CPU only (an XLA custom call); call ``load()`` first. Not differentiable by itself (see
  ``layers._bilinear_ffi``).
  """
  out = jax.ShapeDtypeStruct((kh, kw, x.shape[-1], dy.shape[-1]), jnp.float32)
  call = jax.ffi.ffi_call(KERNEL_GRAD_TARGET, out, vmap_method="sequential")
  return call(x, dy, isa=np.int64(isa))


def conv(x, kernel, isa=ISA_AUTO):
  """Stride-1 "SAME" convolution, x (N, T, F, I) NHWC, kernel (kh, kw, I, O) HWIO, float32.

  CPU only (an XLA custom call); call ``load()`` first. Not differentiable by itself (see
  ``layers._bilinear_ffi``).
  """
  n, t, f, _ = x.shape
  out = jax.ShapeDtypeStruct((n, t, f, kernel.shape[-1]), jnp.float32)
  return jax.ffi.ffi_call(CONV_TARGET, out, vmap_method="sequential")(x, kernel,
                                                                       isa=np.int64(isa))


def conv_input_grad(dy, kernel, isa=ISA_AUTO):
  """dx (N, T, F, I) of a stride-1 "SAME" convolution: dy (N, T, F, O), kernel (kh, kw, I, O).

  float32, CPU only (an XLA custom call); call ``load()`` first.
  """
  n, t, f, _ = dy.shape
  out = jax.ShapeDtypeStruct((n, t, f, kernel.shape[2]), jnp.float32)
  call = jax.ffi.ffi_call(INPUT_GRAD_TARGET, out, vmap_method="sequential")
  return call(dy, kernel, isa=np.int64(isa))


def depthwise_kernel_grad(x, dy, isa=ISA_AUTO):
  """dK (3, 3, 1, C) of a 3x3 "SAME" depthwise convolution: x, dy (N, T, F, C), float32.

  CPU only (an XLA custom call); call ``load()`` first.
  """
  out = jax.ShapeDtypeStruct((3, 3, 1, x.shape[-1]), jnp.float32)
  return jax.ffi.ffi_call(DEPTHWISE_TARGET, out, vmap_method="sequential")(x, dy,
                                                                            isa=np.int64(isa))


def flip_swap(kernel):
  """(kh, kw, I, O) -> (kh, kw, O, I), spatially flipped: the kernel of the input gradient.

  float32, CPU only (an XLA custom call); call ``load()`` first. Differentiable in reverse mode
  (the map is a permutation that is its own inverse and transpose).
  """
  return _flip_swap(kernel)


def _flip_swap_call(kernel):
  kh, kw, i, o = kernel.shape
  out = jax.ShapeDtypeStruct((kh, kw, o, i), jnp.float32)
  return jax.ffi.ffi_call(FLIP_SWAP_TARGET, out, vmap_method="sequential")(kernel)


@jax.custom_vjp
def _flip_swap(kernel):
  return _flip_swap_call(kernel)


_flip_swap.defvjp(lambda k: (_flip_swap_call(k), None), lambda _, g: (_flip_swap(g),))
