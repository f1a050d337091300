#!/usr/bin/env bash
# Sets up a fresh Debian/Ubuntu machine (run as root, or with sudo available) for resunet_jax:
# system packages, then the package itself with its test, PyTorch, gs:// (gcs) and TPU
# cross-compilation (tpu: libtpu) extras.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
need=()
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)  # stempeg/museval decode .stem.mp4 with it
[ -e /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 ] || need+=(libtcmalloc-minimal4)
command -v strace >/dev/null 2>&1 || need+=(strace)  # tests/test_aot.py: a compile contacts nothing
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi

python -m pip install -q --upgrade pip
# The CPU build of PyTorch (reading the authors' .pth files, PyTorch-side tests); pinning it keeps
# pip from pulling a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0" || python -m pip install -q torch \
  --index-url https://download.pytorch.org/whl/cpu
python -m pip install -q -e ".[test,torch,gcs,tpu]"
# The authors' PyTorch code as the parity reference (resunet_jax/testing/bytesep_reference.py;
# tests/test_parity.py, tests/test_step_parity.py, scripts/make_parity_fixtures.py, bench/).
# bytesep 0.1.1 pins torch 1.7.1, librosa 0.8.0, ... which no longer resolve: install it without
# dependencies, plus what its models import. torchlibrosa 0.1.0 is 0.0.9 (bytesep's pin) with
# identical numerics that works with librosa >= 0.9. Where this fails, the tests that need bytesep
# skip and say why (the stored fixtures still run).
if python -m pip install -q "torchlibrosa==0.1.0" "librosa==0.11.0" \
    && python -m pip install -q --no-deps "bytesep==0.1.1"; then
  python -c "from resunet_jax.testing import bytesep_reference as r; why = r.available(); print('bytesep reference:', why or 'ok', r.versions())" \
    || echo "WARNING: the bytesep reference does not import" >&2
else
  echo "WARNING: the bytesep reference (torchlibrosa, librosa, bytesep) did not install" >&2
fi
python -c "import resunet_jax, jax, flax, optax, orbax.checkpoint, tensorflow_datasets, museval; print('resunet_jax', resunet_jax.__version__, '| jax', jax.__version__, '| devices', jax.devices())"
