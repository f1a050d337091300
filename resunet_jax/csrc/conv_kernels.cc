// CPU kernels for the convolutions of resunet_jax.layers, float32, as XLA FFI custom calls
// (resunet_jax/cpu_kernels.py compiles this file on first use and registers them):
//
// ResunetConvKernelGradF32, the kernel (weight) gradient of a stride-1 "SAME" 2-D convolution,
//   dw[a, b, i, o] = sum_{n, t, f} x[n, t + a - kh / 2, f + b - kw / 2, i] * dy[n, t, f, o]
// with x outside the image taken as zero; x (N, T, F, I) and dy (N, T, F, O) row-major (NHWC), dw
// (kh, kw, I, O) (HWIO), kh and kw odd. XLA:CPU lowers it as a "backprop filter" convolution 3-6x
// slower than the forward pass. Here a tile of (IT input channels) x (2 vectors of output
// channels) stays in registers while an image row streams through it; rows are taken in blocks
// that stay in cache.
// ResunetConvF32, the forward convolution out (N, T, F, O) of x and k (kh, kw, I, O): P pixels of a
// row x 2 vectors of output channels in registers while kernel offsets and input channels stream
// past. Used for few input channels, where XNNPACK is weakest.
// ResunetDepthwiseKernelGradF32, the kernel gradient (3, 3, 1, C) of a 3x3 depthwise convolution
// (XLA: nine separate reductions over the activations).
// ResunetConvInputGradF32, the input gradient dx (N, T, F, I) of dy (N, T, F, O) and k, reading k
// as it is: for each (pixel, input channel) a dot product over the output channels. Used for the
// deep layers (few pixels, many channels).
// ResunetFlipSwapF32, the kernel the input gradient is elsewhere a convolution with:
// k (kh, kw, I, O) -> (kh, kw, O, I), spatially flipped.
//
// The inner loops (conv_kernels_loops.inc) are compiled three times, for AVX-512, AVX2 and any
// CPU, and chosen at run time. Work is split over XLA's intra-op thread pool by the shapes only:
// either into disjoint parts of the output, or into "slots" of rows, each summing into its own
// buffer, the slots added in order at the end; results do not depend on the number of threads.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Dims {
  int64_t n, t, f, ci, co, kh, kw;
};

using RowsFn = void (*)(const Dims&, const float*, const float*, int64_t, int64_t, int64_t, int64_t,
                        float*);

// One copy of the loops per instruction set. Register budget: kInputTile x 2 accumulators plus two
// loaded vectors and a broadcast within the 32 (AVX-512) or 16 (AVX2) vector registers.
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC push_options
#pragma GCC target("avx512f,fma")
namespace avx512 {
struct Ops {
  using V = __m512;
  static constexpr int kLanes = 16, kInputTile = 12;
  static inline V Zero() { return _mm512_setzero_ps(); }
  static inline V Load(const float* p) { return _mm512_loadu_ps(p); }
  static inline void Store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static inline V Splat(float s) { return _mm512_set1_ps(s); }
  static inline V Fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static inline V Add(V a, V b) { return _mm512_add_ps(a, b); }
  static inline float Sum(V v) { return _mm512_reduce_add_ps(v); }
};
#include "conv_kernels_loops.inc"
}  // namespace avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
struct Ops {
  using V = __m256;
  static constexpr int kLanes = 8, kInputTile = 6;
  static inline V Zero() { return _mm256_setzero_ps(); }
  static inline V Load(const float* p) { return _mm256_loadu_ps(p); }
  static inline void Store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static inline V Splat(float s) { return _mm256_set1_ps(s); }
  static inline V Fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static inline V Add(V a, V b) { return _mm256_add_ps(a, b); }
  static inline float Sum(V v) {
    const __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(q, _mm_shuffle_ps(q, q, 1)));
  }
};
#include "conv_kernels_loops.inc"
}  // namespace avx2
#pragma GCC pop_options
#endif

// Any other CPU: GCC vector extensions of 4 floats (SSE2, NEON, ...).
namespace generic {
struct Ops {
  typedef float V __attribute__((vector_size(16)));
  static constexpr int kLanes = 4, kInputTile = 6;
  static inline V Zero() { return V{0.0f, 0.0f, 0.0f, 0.0f}; }
  static inline V Load(const float* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
  static inline void Store(float* p, V v) { std::memcpy(p, &v, sizeof(V)); }
  static inline V Splat(float s) { return V{s, s, s, s}; }
  static inline V Fma(V a, V b, V c) { return a * b + c; }
  static inline V Add(V a, V b) { return a + b; }
  static inline float Sum(V v) { return (v[0] + v[1]) + (v[2] + v[3]); }
};
#include "conv_kernels_loops.inc"
}  // namespace generic

using ChannelsFn = void (*)(const Dims&, const float*, const float*, int64_t, int64_t, float*);

struct Kernel {
  RowsFn fn;             // kernel gradient
  RowsFn conv;           // forward convolution
  RowsFn depthwise;      // 3x3 depthwise kernel gradient
  ChannelsFn input_grad;  // input gradient
  int64_t lanes;         // output channels must be a multiple of this
};

// isa: 0 = the best this CPU has, 1 = generic, 2 = AVX2 + FMA, 3 = AVX-512F + FMA. Returns false
// where the CPU lacks the one asked for.
bool SelectKernel(int64_t isa, Kernel* kernel) {
  bool avx2 = false, avx512 = false;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  const bool fma = __builtin_cpu_supports("fma");
  avx2 = fma && __builtin_cpu_supports("avx2");
  avx512 = fma && __builtin_cpu_supports("avx512f");
  if ((isa == 0 && avx512) || (isa == 3 && avx512)) {
    *kernel = {avx512::Rows, avx512::ConvRows, avx512::DepthwiseRows, avx512::InputGradChannels,
               avx512::Ops::kLanes};
    return true;
  }
  if ((isa == 0 && avx2) || (isa == 2 && avx2)) {
    *kernel = {avx2::Rows, avx2::ConvRows, avx2::DepthwiseRows, avx2::InputGradChannels,
               avx2::Ops::kLanes};
    return true;
  }
#endif
  if (isa == 0 || isa == 1) {
    *kernel = {generic::Rows, generic::ConvRows, generic::DepthwiseRows, generic::InputGradChannels,
               generic::Ops::kLanes};
    return true;
  }
  return false;
}

// The kernel for `isa`, checking that `channels` (the vectorised ones) fit its vector width.
ffi::Error GetKernel(const char* name, int64_t isa, int64_t channels, Kernel* kernel) {
  if (!SelectKernel(isa, kernel)) {
    return ffi::Error::InvalidArgument(std::string(name) + ": this CPU lacks isa " +
                                       std::to_string(isa));
  }
  if (channels % kernel->lanes != 0) {
    return ffi::Error::InvalidArgument(std::string(name) +
                                       ": the number of output channels must be a multiple of " +
                                       std::to_string(kernel->lanes));
  }
  return ffi::Error::Success();
}

// Rows per block: about this many bytes of x and dy rows, so that a block stays in L2 while the
// kh * kw * (I / IT) * (O / 2L) tiles stream through it.
constexpr int64_t kBlockBytes = 512 << 10;
// Where dw is at least this large (deep layers: many channels, few pixels), the threads split the
// output channels (each item owns a slice of dw); below it they split the rows, each "slot" summing
// its rows into its own copy of dw.
constexpr int64_t kSplitOutputsBytes = 1 << 20;
constexpr int64_t kMaxSlots = 8;

struct Item {
  int64_t b0, b1;  // row blocks
  int64_t o0, o1;  // output channels
  int64_t slot;    // 0: sum into the output itself, else into partial[slot]
};

// Runs fn(0), ..., fn(n - 1) on the calling thread and up to num_threads - 1 of XLA's intra-op
// threads. The caller never waits for a helper that has not started (that could deadlock when
// every pool thread is itself inside such a call): a helper that starts after all items are taken
// returns at once, holding only `state`.
template <typename F>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, const F& fn) {
  struct State {
    std::atomic<int64_t> next{0}, active{0};
    int64_t n;
    const F* fn;
    void Run() {
      for (int64_t k; (k = next.fetch_add(1)) < n;) (*fn)(k);
    }
  };
  auto state = std::make_shared<State>();
  state->n = n;
  state->fn = &fn;
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), n) - 1;
  for (int64_t h = 0; h < helpers; ++h) {
    pool.Schedule([state] {
      state->active.fetch_add(1);
      state->Run();
      state->active.fetch_sub(1);
    });
  }
  state->Run();
  while (state->active.load() != 0) std::this_thread::yield();
}

ffi::Error ConvKernelGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                              ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dw,
                              int64_t isa) {
  const auto xd = x.dimensions();
  const auto gd = dy.dimensions();
  const auto wd = dw->dimensions();
  if (xd.size() != 4 || gd.size() != 4 || wd.size() != 4) {
    return ffi::Error::InvalidArgument(
        "resunet_conv_kernel_grad: x, dy and dw must be 4-D (NHWC, NHWC, HWIO)");
  }
  const Dims d{xd[0], xd[1], xd[2], xd[3], gd[3], wd[0], wd[1]};
  if (gd[0] != d.n || gd[1] != d.t || gd[2] != d.f || wd[2] != d.ci || wd[3] != d.co ||
      d.kh % 2 == 0 || d.kw % 2 == 0) {
    return ffi::Error::InvalidArgument(
        "resunet_conv_kernel_grad: shapes do not match x (N, T, F, I), dy (N, T, F, O), "
        "dw (kh, kw, I, O) with odd kh, kw");
  }
  Kernel kernel;
  if (ffi::Error e = GetKernel("resunet_conv_kernel_grad", isa, d.co, &kernel); e.failure()) {
    return e;
  }
  float* out = dw->typed_data();
  const int64_t size = d.kh * d.kw * d.ci * d.co;
  const int64_t rows = d.n * d.t;
  if (rows == 0 || d.f == 0 || size == 0) {
    std::fill(out, out + size, 0.0f);
    return ffi::Error::Success();
  }
  const int64_t row_bytes = d.f * (d.ci + d.co) * static_cast<int64_t>(sizeof(float));
  const int64_t rows_per_block =
      std::clamp<int64_t>(kBlockBytes / std::max<int64_t>(row_bytes, 1), 1, rows);
  const int64_t blocks = (rows + rows_per_block - 1) / rows_per_block;
  // The split depends on the shapes only, so the result does not depend on the thread count.
  std::vector<Item> items;
  std::vector<std::vector<float>> partial;  // row split: one per slot but the first
  const int64_t group = 2 * kernel.lanes;
  const int64_t groups = (d.co + group - 1) / group;
  if (size * static_cast<int64_t>(sizeof(float)) >= kSplitOutputsBytes && groups >= 2) {
    for (int64_t g = 0; g < groups; ++g) {
      items.push_back({0, blocks, g * group, std::min(d.co, (g + 1) * group), 0});
    }
  } else {
    const int64_t slots = std::min(blocks, kMaxSlots);
    partial.resize(slots);
    for (int64_t s = 0; s < slots; ++s) {
      items.push_back({s * blocks / slots, (s + 1) * blocks / slots, 0, d.co, s});
    }
  }
  const float* xp = x.typed_data();
  const float* gp = dy.typed_data();
  ParallelFor(pool, static_cast<int64_t>(items.size()), [&](int64_t k) {
    const Item& it = items[k];
    float* acc = out;
    if (it.slot > 0) {
      partial[it.slot].assign(size, 0.0f);
      acc = partial[it.slot].data();
    } else {
      for (int64_t j = 0; j < size / d.co; ++j) {
        std::fill(out + j * d.co + it.o0, out + j * d.co + it.o1, 0.0f);
      }
    }
    for (int64_t blk = it.b0; blk < it.b1; ++blk) {
      const int64_t r0 = blk * rows_per_block, r1 = std::min(rows, r0 + rows_per_block);
      kernel.fn(d, xp, gp, r0, r1, it.o0, it.o1, acc);
    }
  });
  for (size_t s = 1; s < partial.size(); ++s) {
    const float* p = partial[s].data();
    for (int64_t k = 0; k < size; ++k) out[k] += p[k];
  }
  return ffi::Error::Success();
}

// The forward convolution: out (N, T, F, O) from x (N, T, F, I) and k (kh, kw, I, O). Used where
// XLA's (XNNPACK's) is slowest: few input channels, e.g. (1, 304, 256, 32) -> 32: 6.1 -> 5.1 ms.
ffi::Error ConvImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k,
                    ffi::ResultBuffer<ffi::F32> out, int64_t isa) {
  const auto xd = x.dimensions();
  const auto kd = k.dimensions();
  const auto od = out->dimensions();
  if (xd.size() != 4 || kd.size() != 4 || od.size() != 4 || kd[2] != xd[3] || od[0] != xd[0] ||
      od[1] != xd[1] || od[2] != xd[2] || od[3] != kd[3] || kd[0] % 2 == 0 || kd[1] % 2 == 0) {
    return ffi::Error::InvalidArgument(
        "resunet_conv: expected x (N, T, F, I), k (kh, kw, I, O) with odd kh, kw, "
        "out (N, T, F, O)");
  }
  const Dims d{xd[0], xd[1], xd[2], xd[3], kd[3], kd[0], kd[1]};
  Kernel kernel;
  if (ffi::Error e = GetKernel("resunet_conv", isa, d.co, &kernel); e.failure()) return e;
  const int64_t rows = d.n * d.t;
  if (rows == 0 || d.f == 0 || d.co == 0) return ffi::Error::Success();
  // Every item writes its own part of the output: rows in blocks x groups of output channels.
  const int64_t group = 2 * kernel.lanes;
  const int64_t groups = (d.co + group - 1) / group;
  const int64_t row_blocks = std::min<int64_t>(rows, 32);
  const float* xp = x.typed_data();
  const float* kp = k.typed_data();
  float* op = out->typed_data();
  ParallelFor(pool, groups * row_blocks, [&](int64_t item) {
    const int64_t g = item / row_blocks, blk = item % row_blocks;
    kernel.conv(d, xp, kp, blk * rows / row_blocks, (blk + 1) * rows / row_blocks, g * group,
                std::min(d.co, (g + 1) * group), op);
  });
  return ffi::Error::Success();
}

// The input gradient: dx (N, T, F, I) from dy (N, T, F, O) and the kernel k (kh, kw, I, O) as it
// is (no flipped, transposed copy). Used for the deep layers (many channels, few pixels).
ffi::Error ConvInputGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy,
                             ffi::Buffer<ffi::F32> k, ffi::ResultBuffer<ffi::F32> dx,
                             int64_t isa) {
  const auto gd = dy.dimensions();
  const auto kd = k.dimensions();
  const auto xd = dx->dimensions();
  if (gd.size() != 4 || kd.size() != 4 || xd.size() != 4 || kd[3] != gd[3] || xd[0] != gd[0] ||
      xd[1] != gd[1] || xd[2] != gd[2] || xd[3] != kd[2] || kd[0] % 2 == 0 || kd[1] % 2 == 0) {
    return ffi::Error::InvalidArgument(
        "resunet_conv_input_grad: expected dy (N, T, F, O), k (kh, kw, I, O) with odd kh, kw, "
        "dx (N, T, F, I)");
  }
  const Dims d{gd[0], gd[1], gd[2], kd[2], kd[3], kd[0], kd[1]};
  Kernel kernel;
  if (ffi::Error e = GetKernel("resunet_conv_input_grad", isa, d.co, &kernel); e.failure()) {
    return e;
  }
  if (d.n * d.t * d.f * d.ci == 0) return ffi::Error::Success();
  // dy zero-padded by (kh - 1, kw - 1), plus slack for the last tile's dropped positions.
  const int64_t h = d.t + d.kh - 1, w = d.f + d.kw - 1;
  std::vector<float> dyp(d.n * h * w * d.co + (8 + d.kw) * d.co, 0.0f);
  const float* src = dy.typed_data();
  for (int64_t n = 0; n < d.n; ++n)
    for (int64_t t = 0; t < d.t; ++t) {
      std::memcpy(dyp.data() + ((n * h + t + d.kh / 2) * w + d.kw / 2) * d.co,
                  src + (n * d.t + t) * d.f * d.co, d.f * d.co * sizeof(float));
    }
  // Every item owns 24 input channels (4 register tiles) of dx.
  constexpr int64_t kGroup = 24;
  const int64_t groups = (d.ci + kGroup - 1) / kGroup;
  const float* kp = k.typed_data();
  float* out = dx->typed_data();
  ParallelFor(pool, groups, [&](int64_t g) {
    kernel.input_grad(d, dyp.data(), kp, g * kGroup, std::min(d.ci, (g + 1) * kGroup), out);
  });
  return ffi::Error::Success();
}

// The kernel gradient of a 3x3 depthwise convolution: x and dy (N, T, F, C), dk (3, 3, 1, C).
// XLA's nine reductions over (1, 304, 256, 64) take 24.5 ms.
ffi::Error DepthwiseKernelGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                                   ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dk,
                                   int64_t isa) {
  const auto xd = x.dimensions();
  const auto gd = dy.dimensions();
  const auto kd = dk->dimensions();
  if (xd.size() != 4 || gd.size() != 4 || kd.size() != 4 ||
      !std::equal(xd.begin(), xd.end(), gd.begin()) || kd[0] != 3 || kd[1] != 3 || kd[2] != 1 ||
      kd[3] != xd[3]) {
    return ffi::Error::InvalidArgument(
        "resunet_depthwise_kernel_grad: expected x and dy (N, T, F, C), dk (3, 3, 1, C)");
  }
  const Dims d{xd[0], xd[1], xd[2], xd[3], xd[3], 3, 3};
  Kernel kernel;
  if (ffi::Error e = GetKernel("resunet_depthwise_kernel_grad", isa, d.ci, &kernel);
      e.failure()) {
    return e;
  }
  float* out = dk->typed_data();
  const int64_t size = 9 * d.ci, rows = d.n * d.t;
  std::fill(out, out + size, 0.0f);
  if (rows == 0 || d.f == 0) return ffi::Error::Success();
  // Slots of rows (fixed by the shapes: deterministic), each summing into its own copy of dk.
  const int64_t row_bytes = d.f * 2 * d.ci * static_cast<int64_t>(sizeof(float));
  const int64_t rows_per_block =
      std::clamp<int64_t>(kBlockBytes / std::max<int64_t>(row_bytes, 1), 1, rows);
  const int64_t blocks = (rows + rows_per_block - 1) / rows_per_block;
  const int64_t slots = std::min(blocks, kMaxSlots);
  std::vector<std::vector<float>> partial(slots, std::vector<float>(size, 0.0f));
  const float* xp = x.typed_data();
  const float* gp = dy.typed_data();
  ParallelFor(pool, slots, [&](int64_t s) {
    for (int64_t blk = s * blocks / slots; blk < (s + 1) * blocks / slots; ++blk) {
      const int64_t r0 = blk * rows_per_block, r1 = std::min(rows, r0 + rows_per_block);
      kernel.depthwise(d, xp, gp, r0, r1, 0, d.ci, partial[s].data());
    }
  });
  for (int64_t s = 0; s < slots; ++s) {
    for (int64_t k = 0; k < size; ++k) out[k] += partial[s][k];
  }
  return ffi::Error::Success();
}

// out[a, b, o, i] = k[kh - 1 - a, kw - 1 - b, i, o]: the kernel of the input gradient (spatially
// flipped, input and output channels swapped). XLA:CPU's fused reverse + transpose of a
// (3, 3, 384, 384) kernel takes 1.3 ms (a plain copy 0.46 ms).
ffi::Error FlipSwapImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> k,
                        ffi::ResultBuffer<ffi::F32> out) {
  const auto kd = k.dimensions();
  const auto od = out->dimensions();
  if (kd.size() != 4 || od.size() != 4 || od[0] != kd[0] || od[1] != kd[1] || od[2] != kd[3] ||
      od[3] != kd[2]) {
    return ffi::Error::InvalidArgument(
        "resunet_flip_swap: expected k (kh, kw, I, O) and out (kh, kw, O, I)");
  }
  const int64_t taps = kd[0] * kd[1], ci = kd[2], co = kd[3];
  const float* src = k.typed_data();
  float* dst = out->typed_data();
  constexpr int64_t kTile = 16;
  ParallelFor(pool, taps, [&](int64_t tap) {
    const float* in = src + (taps - 1 - tap) * ci * co;
    float* o = dst + tap * ci * co;
    for (int64_t i0 = 0; i0 < ci; i0 += kTile)
      for (int64_t o0 = 0; o0 < co; o0 += kTile) {
        const int64_t i1 = std::min(ci, i0 + kTile), o1 = std::min(co, o0 + kTile);
        for (int64_t oo = o0; oo < o1; ++oo)
          for (int64_t ii = i0; ii < i1; ++ii) o[oo * ci + ii] = in[ii * co + oo];
      }
  });
  return ffi::Error::Success();
}

}  // namespace

// The handlers: two float32 operands, one float32 result and the `isa` attribute (flip-swap: one
// operand, no attribute).
#define RJ_BINARY_HANDLER(name, impl)                                                  \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, impl,                                            \
                                ffi::Ffi::Bind()                                       \
                                    .Ctx<ffi::ThreadPool>()                            \
                                    .Arg<ffi::Buffer<ffi::F32>>()                      \
                                    .Arg<ffi::Buffer<ffi::F32>>()                      \
                                    .Ret<ffi::Buffer<ffi::F32>>()                      \
                                    .Attr<int64_t>("isa"))

RJ_BINARY_HANDLER(ResunetConvKernelGradF32, ConvKernelGradImpl);
RJ_BINARY_HANDLER(ResunetConvF32, ConvImpl);
RJ_BINARY_HANDLER(ResunetConvInputGradF32, ConvInputGradImpl);
RJ_BINARY_HANDLER(ResunetDepthwiseKernelGradF32, DepthwiseKernelGradImpl);

XLA_FFI_DEFINE_HANDLER_SYMBOL(ResunetFlipSwapF32, FlipSwapImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
