"""resunet_jax: decoupled magnitude/phase ResUNet music source separation in JAX/Flax."""
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
  LONG_DESCRIPTION = f.read()

INSTALL_REQUIRES = [
    "jax>=0.8",
    "flax>=0.12",
    "optax>=0.2.5",
    "orbax-checkpoint>=0.11",
    "ml-collections>=1.0",
    "clu>=0.0.12",
    "numpy>=1.26",
    "scipy>=1.15",  # resunet_jax.compare: scipy.stats.bootstrap(rng=...)
    "tensorflow-cpu>=2.18",  # tf.data and TFDS only; the model never runs in TF.
    "tensorflow-datasets>=4.9.6",
    "importlib_resources>=6",  # TFDS custom builders import it.
    "museval>=0.4.1",  # pulls musdb and stempeg; stempeg needs the ffmpeg binary.
    "soundfile>=0.12",
    "absl-py>=2.0",
    "tqdm>=4.60",
    "tensorboard>=2.15",  # clu.metric_writers needs it for TensorBoard summaries
    "matplotlib>=3.7",  # resunet_jax.compare's plots (Agg backend)
]

EXTRAS = {
    # Reading the authors' .pth files and benchmarking against their PyTorch code.
    # torch is the only extra needed to read .pth; bytesep itself must be installed with
    # `pip install --no-deps bytesep` (its 2021 pins do not resolve today).
    "torch": ["torch>=2.1"],
    # gs:// work directories, model directories, TFDS data and evaluation outputs: Orbax needs
    # google-cloud-storage at run time for gs:// (bucket lookups when it lists and deletes steps).
    "gcs": ["google-cloud-storage>=2.18"],
    # resunet-aot: cross-compiling for TPU slices on any host (libtpu as a compiler; nothing is
    # contacted, see resunet_jax.aot). jax[tpu] pins the libtpu that matches the installed jax.
    "tpu": ["jax[tpu]>=0.8"],
    "test": [
        "pytest>=8",
        "pytest-timeout>=2.2",
        "pytest-xdist>=3.5",  # the README's test command runs the test files on 2 processes
        # tests/remote_storage.py: a local GCS emulator for the gs:// tests (pinned: the tests
        # extend its request handler) and the throw-away CA of its TLS proxy.
        "gcp-storage-emulator==2026.7.19",
        "cryptography>=41",
    ],
}
EXTRAS["dev"] = (EXTRAS["test"] + EXTRAS["torch"] + EXTRAS["gcs"] + EXTRAS["tpu"]
                 + ["torchlibrosa>=0.1.0"])

setup(
    name="resunet_jax",
    version="0.2.0",
    description=("JAX/Flax reimplementation of 'Decoupling Magnitude and Phase Estimation "
                 "with Deep ResUNet for Music Source Separation' (Kong et al., ISMIR 2021)."),
    long_description=LONG_DESCRIPTION,
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["resunet_jax", "resunet_jax.*"]),
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "resunet-train = resunet_jax.cli.train:run",
            "resunet-eval = resunet_jax.cli.evaluate:run",
            "resunet-separate = resunet_jax.cli.separate:main",
            "resunet-convert = resunet_jax.convert:main",
            "resunet-compare = resunet_jax.compare.cli:main",
            "resunet-build-data = resunet_jax.data.build:main",
            "resunet-aot = resunet_jax.cli.aot:run",
        ],
    },
)
