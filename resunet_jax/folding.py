"""The frequency-folded activation layout: narrow channel counts made lane-wide, same arithmetic.

TPU memory is tiled with 128 lanes in the minor dimension. The ResUNet runs its widest activations
(every frequency bin of every frame) at 32 channels, and in the natural (B, T, F, C) layout a
32-wide minor dimension is stored and moved as 128: four times its size (the paper model's train
step compiled for a v5e chip accessed 134 GB per example, 12.7 FLOP per byte). Folding ``s``
neighbouring frequency bins into the channel dimension,

    (B, T, F, C) -> (B, T, F / s, s * C),   folded[b, t, q, j * C + c] = x[b, t, q * s + j, c],

is a plain reshape (row-major), so it costs nothing to enter or leave, and with s = 128 / C the
minor dimension is a full lane width. Every layer of the backbone then computes exactly what it
computed before, from the same parameters (in the authors' layout), on the folded grid:

* a k x k "SAME" convolution over (time, frequency) is a convolution over (time, folded
  frequency) whose kernel (``fold_kernel``) places each original tap where the folded grid puts
  it: the output bin q * s + j_out reads the input bin q * s + j_out + b - k // 2, i.e. folded cell
  q + d, sub-position j_in, with b = j_in - j_out + s * d + k // 2. Zero padding of the folded grid
  by D = ceil((k // 2) / s) cells is the original zero padding. The folded kernel is dense
  (s * C_in x s * C_out per tap), so it multiplies ~s times as many (mostly zero) terms: FLOPs for
  bytes, a good trade on a chip whose step is memory-bound;
* BatchNorm statistics per channel are the lane statistics summed over the s sub-positions;
* average pooling and transposed-convolution upsampling by the frequency factor move bins between
  sub-positions of the same folded cell (``pool``, ``upsample_kernel``);
* channel concatenation of two folded tensors of C channels each is a concatenation of their lane
  blocks: a "grouped" folded layout, lanes (g, j, c) for channel g * C + c, which the consumer's
  kernel and BatchNorm read as such (``groups``), so no lane shuffle is written.

With s = 1 every function here is the identity (or the original operation).

Chunks, for a small per-device batch. TPU tiles hold 8 rows ("sublanes") of 128 lanes. With 8 or
more examples per device XLA's TPU convolution puts examples in the sublanes and both spatial axes
in major positions, and a unit of the paper model's first stage moves ~25 tensors' worth of bytes;
with fewer it splits the frequency axis into 8 pieces with halos of neighbouring cells, stores
them in the sublanes, and converts every activation between that layout and the one the
elementwise operations use: ~3x the bytes (a 4-unit stage at 2 x 304 frames x 1024 bins, fold 4,
bfloat16, forward and backward, one v5e chip: 16.8 GB; the same data as 8 examples of 64 cells:
5.4 GB; compiler estimates). In training ``chunk`` makes that split once, in the model's own
layout (inference does not need it: ``models.Separator.chunks``):

    (B, T, Q, L) -> (B * K, T, Q / K, L),   chunked[b * K + k, t, i] = x[b, t, k * Q / K + i],

so that every layer sees B * K "examples". Everything but a convolution's frequency taps is local
to a chunk (BatchNorm reduces over all of them; pooling, upsampling and concatenation keep a cell
in its chunk); a convolution computes each chunk with zero padding and adds what the neighbouring
chunks' edge cells contribute (``chunked_conv``), so the result is the convolution of the whole
axis, as before. ``unchunk`` is the inverse; both are a transpose, made once per model.
"""
import math

import jax.numpy as jnp
import numpy as np

LANES = 128  # the minor tile of TPU memory (v4, v5e, v5p, v6e); read when a model is applied
SUBLANES = 8  # its rows; read when a model is applied (1 turns chunking off)


def fold_factor(channels, bins, lanes=None):
  """The fold for a level: the largest power of two s <= lanes / channels (default ``LANES``)
  that divides ``bins`` (1 when the channels already fill the lanes)."""
  lanes = LANES if lanes is None else lanes
  s = 1
  while s * 2 * channels <= lanes and bins % (s * 2) == 0:
    s *= 2
  return s


def fold(x, s):
  """(B, T, F, C) -> (B, T, F / s, s * C)."""
  if s == 1:
    return x
  b, t, f, c = x.shape
  if f % s:
    raise ValueError(f"cannot fold {f} frequency bins by {s}")
  return x.reshape(b, t, f // s, s * c)


def unfold(x, s):
  """(B, T, F / s, s * C) -> (B, T, F, C)."""
  if s == 1:
    return x
  b, t, q, sc = x.shape
  return x.reshape(b, t, q * s, sc // s)


def refold(x, s_from, s_to):
  return x if s_from == s_to else fold(unfold(x, s_from), s_to)


def lane_vector(v, s, groups=1):
  """A per-channel vector (C,) as a per-lane vector (s * C,) of the layout (groups, s, C / groups)."""
  if s == 1:
    return v
  return jnp.broadcast_to(v.reshape(groups, 1, -1), (groups, s, v.shape[0] // groups)).reshape(-1)


def channel_sum(v, s, groups=1):
  """A per-lane vector (..., s * C) summed over the sub-positions: per-channel (..., C)."""
  if s == 1:
    return v
  lead = v.shape[:-1]
  return v.reshape(lead + (groups, s, v.shape[-1] // (groups * s))).sum(axis=-2).reshape(
      lead + (-1,))


def _selector(s, k):
  """sel[d + D, j_in, j_out, b] = 1 where tap b of a width-k kernel joins folded sub-positions."""
  r = k // 2
  reach = math.ceil(r / s) if r else 0
  sel = np.zeros((2 * reach + 1, s, s, k), np.float32)
  for d in range(-reach, reach + 1):
    for j_in in range(s):
      for j_out in range(s):
        b = j_in - j_out + s * d + r
        if 0 <= b < k:
          sel[d + reach, j_in, j_out, b] = 1.0
  return sel, reach


def fold_kernel(kernel, s, groups=1):
  """A (kt, kf, C_in, C_out) convolution kernel (HWIO, odd kf) for the folded grid:
  (kt, 2 D + 1, s * C_in, s * C_out), input lanes in the layout (groups, s, C_in / groups), output
  lanes (s, C_out). Returns (kernel, D): pad the folded frequency axis by D cells each side."""
  kt, kf, cin, cout = kernel.shape
  if s == 1 and groups == 1:
    return kernel, kf // 2
  sel, reach = _selector(s, kf)
  w = kernel.reshape(kt, kf, groups, cin // groups, cout)
  folded = jnp.einsum("exyb,abgco->aegxcyo", jnp.asarray(sel, kernel.dtype), w)
  return folded.reshape(kt, 2 * reach + 1, s * cin, s * cout), reach


def pool(x, pools, s_in):
  """Average pooling by ``pools`` = (pt, pf) of a tensor folded by ``s_in``; returns (y, s_out).

  When pf divides s_in the frequency pairs are sub-positions of one folded cell and the result is
  folded by s_in / pf; otherwise the tensor is unfolded, pooled and returned unfolded (s_out = 1).
  """
  pt, pf = pools
  b, t, q, lanes = x.shape
  if (pt, pf) == (1, 1):
    return x, s_in
  if s_in % pf:
    x = unfold(x, s_in)
    c = x.shape[-1]
    y = x.reshape(b, t // pt, pt, x.shape[2] // pf, pf, c).mean(axis=(2, 4))
    return y, 1
  c = lanes // s_in
  y = x.reshape(b, t // pt, pt, q, s_in // pf, pf, c).mean(axis=(2, 5))
  return y.reshape(b, t // pt, q, (s_in // pf) * c), s_in // pf


def upsample_kernel(kernel, s_in):
  """A (pt, pf, C_in, C_out) transposed-convolution kernel (kernel = stride) as one matrix
  (s_in * C_in, pt * s_out * C_out), s_out = s_in * pf: folded cell q of the input becomes folded
  cell q of the output (time rows a = 0 .. pt - 1 side by side), sub-position j_in * pf + c of the
  output coming from sub-position j_in and kernel column c."""
  pt, pf, cin, cout = kernel.shape
  s_out = s_in * pf
  sel = np.zeros((s_in, pf, s_out), np.float32)
  for j in range(s_in):
    for c in range(pf):
      sel[j, c, j * pf + c] = 1.0
  w = jnp.einsum("xcy,acio->xiayo", jnp.asarray(sel, kernel.dtype), kernel)
  return w.reshape(s_in * cin, pt * s_out * cout), s_out


def chunk_count(batch, cells, reach=1, sublanes=None):
  """The chunks of a folded model's frequency axis for a per-device ``batch``: the smallest power
  of two K with batch * K >= ``sublanes`` (default ``SUBLANES``) that divides every level's
  ``cells`` (folded frequency cells) leaving at least ``reach`` cells (a kernel's reach) per chunk;
  smaller where that is not possible, 1 (no chunks) from ``sublanes`` examples on."""
  sublanes = SUBLANES if sublanes is None else sublanes
  k = 1
  while batch * k < sublanes and all(c % (2 * k) == 0 and c // (2 * k) >= max(reach, 1)
                                     for c in cells):
    k *= 2
  return k


def chunk(x, k):
  """(B, T, Q, L) -> (B * K, T, Q / K, L): frequency chunk k of example b is example b * K + k."""
  if k == 1:
    return x
  b, t, q, lanes = x.shape
  if q % k:
    raise ValueError(f"cannot split {q} frequency cells into {k} chunks")
  return x.reshape(b, t, k, q // k, lanes).transpose(0, 2, 1, 3, 4).reshape(b * k, t, q // k, lanes)


def unchunk(x, k):
  """(B * K, T, Q / K, L) -> (B, T, Q, L)."""
  if k == 1:
    return x
  bk, t, qc, lanes = x.shape
  return x.reshape(bk // k, k, t, qc, lanes).transpose(0, 2, 1, 3, 4).reshape(bk // k, t, k * qc,
                                                                                lanes)


def chunked_conv(x, kernel, reach, chunks, conv):
  """``conv(x, kernel, freq_padding)`` ((lo, hi) cells of zeros on the frequency axis; the time
  padding is conv's) of a chunked ``x`` (B * K, T, Qc, L) as the convolution of the unchunked
  frequency axis with ``reach`` cells of zero padding: each chunk with zero padding, plus the
  taps that reach into the neighbouring chunks, computed from their ``reach`` edge cells."""
  y = conv(x, kernel, (reach, reach))
  if chunks == 1 or reach == 0:
    return y
  bk, t, qc, lanes = x.shape
  if qc < reach:
    raise ValueError(f"a chunk of {qc} cells is narrower than the kernel's reach {reach}")

  def from_neighbour(cells, step):
    """Chunk k's copy of chunk k - step's ``cells`` (zeros past the ends: the axis' own zero
    padding). Reshaped here, on the edge cells only: a reshape of the whole activation's batch
    axis makes XLA's TPU layout assignment copy it."""
    v = cells.reshape(bk // chunks, chunks, t, reach, lanes)
    v = jnp.pad(v[:, :-1], ((0, 0), (1, 0), (0, 0), (0, 0), (0, 0))) if step > 0 else jnp.pad(
        v[:, 1:], ((0, 0), (0, 1), (0, 0), (0, 0), (0, 0)))
    return v.reshape(bk, t, reach, lanes)

  # One strip per chunk: [left neighbours, 2 * reach zeros, right neighbours]; its convolution
  # (no padding) gives the missing terms of the first reach cells, then of the last reach cells.
  strip = jnp.concatenate([from_neighbour(x[:, :, qc - reach:], 1),
                           jnp.zeros((bk, t, 2 * reach, lanes), x.dtype),
                           from_neighbour(x[:, :, :reach], -1)], axis=2)
  e = conv(strip, kernel, (0, 0))
  edges = lambda v, lo, hi: jnp.pad(v, ((0, 0), (0, 0), (lo, hi), (0, 0)))
  return y + edges(e[:, :, :reach], 0, qc - reach) + edges(e[:, :, reach:], qc - reach, 0)
