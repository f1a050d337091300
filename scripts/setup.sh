#!/usr/bin/env bash
# Sets up a fresh Debian/Ubuntu machine (run as root, or with sudo available) for resunet_jax:
# system packages, then the package itself with its test and PyTorch extras.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
need=()
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)  # stempeg/museval decode .stem.mp4 with it
[ -e /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 ] || need+=(libtcmalloc-minimal4)
# A C++ compiler builds the CPU kernel for convolution weight gradients on first use
# (resunet_jax/cpu_kernels.py); without one the slower XLA path is used.
command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || need+=(g++)
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi

python -m pip install -q --upgrade pip
# The CPU build of PyTorch (reading the authors' .pth files, PyTorch-side tests); pinning it keeps
# pip from pulling a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0" || python -m pip install -q torch \
  --index-url https://download.pytorch.org/whl/cpu
python -m pip install -q -e ".[test,torch]"
python -c "import resunet_jax, jax, flax, optax, orbax.checkpoint, tensorflow_datasets, museval; print('resunet_jax', resunet_jax.__version__, '| jax', jax.__version__, '| devices', jax.devices())"
