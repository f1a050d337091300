"""Separating songs of any length at constant memory: fixed-shape chunks through one compiled function.

    from resunet_jax import checkpoint, separate
    model, variables, desc = checkpoint.load_model("models/vocals")
    separator = separate.SongSeparator.from_model(model, variables, desc["sources"])
    estimates = separator.separate(mixture, sample_rate=44100)   # {"vocals": (L, C)}

    python -m resunet_jax.separate song.mp3 folder/ --checkpoint models/vocals --out separated/
    resunet-separate song.mp3 folder/ --checkpoint models/vocals --out separated/   # the same

One module a concern (their public names are re-exported here):

  chunking   chunk plans ("crossfade", the authors' scheme), cutting inputs, overlap-adding outputs
  separator  ``SongSeparator``: the compiled model over chunks, streams, arrays and files
  files      input checks from the header, output paths, folders of inputs

The command line is ``resunet_jax.cli.separate``.
"""
from resunet_jax.separate.chunking import DEFAULT_CHUNK_SECONDS
from resunet_jax.separate.chunking import DEFAULT_OVERLAP_SECONDS
from resunet_jax.separate.chunking import SCHEMES
from resunet_jax.separate.chunking import ChunkPlan
from resunet_jax.separate.chunking import make_plan
from resunet_jax.separate.files import check_input
from resunet_jax.separate.files import expand_inputs
from resunet_jax.separate.files import output_paths
from resunet_jax.separate.files import song_name
from resunet_jax.separate.separator import SongSeparator
from resunet_jax.separate.separator import min_samples
from resunet_jax.separate.separator import residual_name
