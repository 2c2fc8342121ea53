// The direct kernel: small convolutions in one launch, on the CUDA cores. Where the whole
// convolution is a few microseconds of work, what it costs is launches and latency: the
// cuDNN path queues two kernels after cuDNN's host time, the K-table kernel two (the
// weights' preparation, then the tiles). This one reads the weights as they are and does
// everything in one kernel (docs/performance.md, v49; fx_fuse/_cuda.py, _direct_pays).
// A block (DirectShape) computes `rows` output rows of one image for `co_block` output
// channels of one group:
//   - it stages the rows' input window of every input channel of the group in shared
//     memory as floats (zero in the padding), and the channels' weights, each thread's
//     loads in flight together;
//   - each thread then computes one output at a time, a warp neighbouring pixels of one
//     channel (the window's columns at the stride, the weights broadcast), accumulating
//     in fp32 (no TF32 rounding); where a block has fewer outputs than threads, `split`
//     neighbouring lanes share an output, each summing every split-th input channel, and
//     add their sums by shuffles;
//   - or, where a block has many outputs a thread (larger layers of few input channels),
//     each thread computes eight output channels of four pixels of one column at a time
//     (docs/performance.md, v83-v84): a window value read once serves eight multiply-adds
//     per pixel it is a tap of, a tap's eight weights (two 16-byte loads that every lane
//     of the warp reads alike) the four pixels;
//   - the epilogue (bias, relu, `other`) runs before the only store.
#include <c10/cuda/CUDAException.h>

#include <type_traits>

#include "api.h"
#include "conv_relu_add.cuh"

namespace fx_fuse {
namespace {

// The element at `ptr` as a float, 0 where `in` is false: a predicated load, no branch
// (so that the unrolled stage's loads are all in flight at once).
template <typename T>
__device__ __forceinline__ float load_or_zero(const T* ptr, bool in) {
  const uint32_t bits = ldg_pred<sizeof(T)>(ptr, in);
  if constexpr (std::is_same_v<T, float>) return __uint_as_float(bits);
  else if constexpr (std::is_same_v<T, __half>) return __half2float(__ushort_as_half(static_cast<unsigned short>(bits)));
  else return __bfloat162float(__ushort_as_bfloat16(static_cast<unsigned short>(bits)));
}

// The window of the group's cpg channels (rows_in x cols_in each, window_pitch apart),
// zero in the padding, from x at the group's first channel: an element a thread at a time
// (windows of a few columns), every load of a thread issued before the first lands
// (unrolled: the loads do not wait on the shared stores between them).
template <typename T>
__device__ __forceinline__ void stage_window_elements(const ConvParams& p, const DirectShape& d, const T* x,
                                                      int iy0, float* window) {
  const int window_floats = d.rows_in * d.cols_in;
#pragma unroll 8
  for (int i = threadIdx.x; i < d.cpg * window_floats; i += kDirectThreads) {
    const int c = i / window_floats, rc = i - c * window_floats;
    const int r = rc / d.cols_in, iy = iy0 + r, ix = rc - r * d.cols_in - p.pad_w;
    const bool in = static_cast<unsigned>(iy) < static_cast<unsigned>(p.H) &&
                    static_cast<unsigned>(ix) < static_cast<unsigned>(p.W);
    window[c * d.window_pitch + rc] = load_or_zero(x + (c * p.x_sc + iy * p.x_sh + ix * p.x_sw), in);
  }
}

// The same a row at a time, a warp's lanes along the row: a multiply-high a row for its
// channel and row, no division (wide windows).
template <typename T>
__device__ __forceinline__ void stage_window_rows(const ConvParams& p, const DirectShape& d, const T* x, int iy0,
                                                  float* window) {
  const int lane = threadIdx.x % 32;
#pragma unroll 4
  for (int row = threadIdx.x / 32; row < d.cpg * d.rows_in; row += kDirectThreads / 32) {
    const QuotRem cr = divmod(row, d.window_rows);
    const int c = cr.q, iy = iy0 + cr.r;
    const bool row_in = static_cast<unsigned>(iy) < static_cast<unsigned>(p.H);
    const T* src = x + (c * p.x_sc + iy * p.x_sh);
    float* dst = window + c * d.window_pitch + cr.r * d.cols_in;
    for (int col = lane; col < d.cols_in; col += 32) {
      const int ix = col - p.pad_w;
      dst[col] = load_or_zero(src + ix * p.x_sw, row_in && static_cast<unsigned>(ix) < static_cast<unsigned>(p.W));
    }
  }
}

static_assert(kDirectCoT == 8, "direct_tile reads a tap's weights as two float4s");

// acc[r][j] += v[r] * the tap's weights of the thread's kDirectCoT channels (two float4s at wt).
__device__ __forceinline__ void fma_tap(float (&acc)[kDirectRowT][kDirectCoT], const float (&v)[kDirectRowT],
                                        const float4* wt) {
  const float4 a = wt[0], b = wt[1];
#pragma unroll
  for (int r = 0; r < kDirectRowT; ++r) {
    acc[r][0] = fmaf(v[r], a.x, acc[r][0]);
    acc[r][1] = fmaf(v[r], a.y, acc[r][1]);
    acc[r][2] = fmaf(v[r], a.z, acc[r][2]);
    acc[r][3] = fmaf(v[r], a.w, acc[r][3]);
    acc[r][4] = fmaf(v[r], b.x, acc[r][4]);
    acc[r][5] = fmaf(v[r], b.y, acc[r][5]);
    acc[r][6] = fmaf(v[r], b.z, acc[r][6]);
    acc[r][7] = fmaf(v[r], b.w, acc[r][7]);
  }
}

// kDirectRowT pixels of one column (output rows a stride_h apart in the window) times
// kDirectCoT channels from group `grp` of the block's channels: the window at the first
// pixel's first tap, the weights staged [cpg x taps][co_block]. A tap's weights serve the
// column's pixels; with 3 x 3 taps a unit row stride and dilation, a column's window values
// are read once for its three row taps.
template <int K>
__device__ __forceinline__ void direct_tile(const ConvParams& p, const DirectShape& d, const float* in,
                                            const float* w_s, int grp,
                                            float (&acc)[kDirectRowT][kDirectCoT]) {
  const int KH = K > 0 ? K : p.taps / p.KW, KW = K > 0 ? K : p.KW;
  const int vecs = d.co_block / 4;  // float4s a weight row
  const float4* wq = reinterpret_cast<const float4*>(w_s) + grp * (kDirectCoT / 4);
#pragma unroll
  for (int r = 0; r < kDirectRowT; ++r)
#pragma unroll
    for (int j = 0; j < kDirectCoT; ++j) acc[r][j] = 0.f;
  if constexpr (K > 0) {
    if (p.stride_h == 1 && p.dil_h == 1) {
      constexpr int kSpan = kDirectRowT + K - 1;  // window rows of the column
      for (int c = 0; c < d.cpg; ++c, in += d.window_pitch, wq += p.taps * vecs) {
#pragma unroll
        for (int kx = 0; kx < KW; ++kx) {
          float col[kSpan];
#pragma unroll
          for (int t = 0; t < kSpan; ++t) col[t] = in[t * d.cols_in + kx * p.dil_w];
#pragma unroll
          for (int ky = 0; ky < KH; ++ky) {
            float v[kDirectRowT];
#pragma unroll
            for (int r = 0; r < kDirectRowT; ++r) v[r] = col[r + ky];
            fma_tap(acc, v, wq + (ky * KW + kx) * vecs);
          }
        }
      }
      return;
    }
  }
  const int row_step = p.dil_h * d.cols_in, pixel_step = p.stride_h * d.cols_in;
  for (int c = 0; c < d.cpg; ++c, in += d.window_pitch, wq += p.taps * vecs) {
#pragma unroll
    for (int ky = 0; ky < KH; ++ky)
#pragma unroll
      for (int kx = 0; kx < KW; ++kx) {
        float v[kDirectRowT];
#pragma unroll
        for (int r = 0; r < kDirectRowT; ++r) v[r] = in[r * pixel_step + ky * row_step + kx * p.dil_w];
        fma_tap(acc, v, wq + (ky * KW + kx) * vecs);
      }
  }
}

// relu(acc + bias) + other for output (n, c, oy, ow), stored: the epilogue of one output.
template <typename T>
__device__ __forceinline__ void store_fused(const ConvParams& p, int64_t n, int c, int oy, int ow, float acc,
                                            float bias) {
  const float other = load_other(p, n * p.o_sn + c * p.o_sc + oy * p.o_sh + ow * p.o_sw);
  static_cast<T*>(p.out)[n * p.y_sn + c * p.y_sc + oy * p.y_sh + ow * p.y_sw] = from_float<T>(fused_value(acc, bias, other));
}

// The epilogue of a thread's tile (direct_tile): channels c0 ... c0 + channels - 1 of rows
// oy ... oy + rows - 1 at column ow, their addresses stepped from the first output's, the
// kind of `other` tested once.
template <typename T>
__device__ __forceinline__ void store_tile(const ConvParams& p, int64_t n, int c0, int oy, int ow,
                                           const float (&acc)[kDirectRowT][kDirectCoT], int channels, int rows) {
  with_other_type(p, [&](auto tag) {
    T* y = static_cast<T*>(p.out) + (n * p.y_sn + c0 * p.y_sc + oy * p.y_sh + ow * p.y_sw);
    int64_t o = n * p.o_sn + c0 * p.o_sc + oy * p.o_sh + ow * p.o_sw;
#pragma unroll
    for (int j = 0; j < kDirectCoT; ++j, y += p.y_sc, o += p.o_sc) {
      if (j < channels) {
        const float b = channel_bias<T>(p, c0 + j);
#pragma unroll
        for (int r = 0; r < kDirectRowT; ++r) {
          if (r < rows) {
            const float other = other_at<other_tag_t<decltype(tag)>>(p, o + r * p.o_sh);
            y[r * p.y_sh] = from_float<T>(fused_value(acc[r][j], b, other));
          }
        }
      }
    }
  });
}

// K > 0: a K x K kernel, its taps unrolled; K == 0: sizes read at run time. CO: output
// channels a thread computes at a time (d.co_t: 1 or kDirectCoT).
// (The eight-channel form asks for two blocks an SM: without a minimum ptxas holds it to
// 40 registers and spills.)
template <typename T, int K, int CO>
__global__ void __launch_bounds__(kDirectThreads, CO == 1 ? 0 : 2) direct_conv_kernel(const ConvParams p, const DirectShape d) {
  extern __shared__ float smem[];
  const int tid = threadIdx.x;
  const int taps = p.taps, wk = d.cpg * taps;
  float* window = smem;                                                // [cpg][window_pitch]: [rows_in][cols_in]
  float* w_s = smem + direct_weights_offset(d.cpg, d.window_pitch);  // CO = 1: [co_block][cpg][taps]

  // blockIdx.x: image n, band; blockIdx.y: group g, its channel block cb
  const int band = static_cast<int>(blockIdx.x % static_cast<uint32_t>(d.bands));
  const int64_t n = blockIdx.x / static_cast<uint32_t>(d.bands);
  const int groups = p.Cin / d.cpg, cout_pg = p.Cout / groups;
  const int blocks_pg = d.co_blocks / groups;
  const int g = static_cast<int>(blockIdx.y) / blocks_pg, cb = static_cast<int>(blockIdx.y) - g * blocks_pg;
  const int co0 = g * cout_pg + cb * d.co_block, n_co = min(d.co_block, cout_pg - cb * d.co_block);
  const int oy0 = band * d.rows, iy0 = oy0 * p.stride_h - p.pad_h;

  const T* x = static_cast<const T*>(p.x) + n * p.x_sn + static_cast<int64_t>(g) * d.cpg * p.x_sc;
  if constexpr (CO == 1) stage_window_elements(p, d, x, iy0, window);
  else stage_window_rows(p, d, x, iy0, window);
  const T* w = static_cast<const T*>(p.wprep) + static_cast<int64_t>(co0) * wk;  // (Cout, cpg, KH, KW)
  if constexpr (CO == 1) {
#pragma unroll 8
    for (int i = tid; i < n_co * wk; i += kDirectThreads) w_s[i] = to_float(__ldg(w + i));
  } else {
    // [cpg x taps][co_block], zero past the group's channels
#pragma unroll 4
    for (int i = tid; i < wk * d.co_block; i += kDirectThreads) {
      const int k = i / d.co_block, co = i - k * d.co_block;
      w_s[i] = co < n_co ? to_float(__ldg(w + co * wk + k)) : 0.f;
    }
  }
  __syncthreads();

  const int live_rows = min(d.rows, p.OH - oy0);
  if constexpr (CO == 1) {
    // Output q = base + tid / split of the block's n_co x pixels, channel-major; lane
    // `part` of its split sums input channels part, part + split, ... Every thread walks
    // the same bases (the shuffles need the whole warp).
    const int KH = K > 0 ? K : taps / p.KW, KW = K > 0 ? K : p.KW;
    const int row_step = p.dil_h * d.cols_in;
    const int pixels = live_rows * p.OW, outputs = n_co * pixels;
    const int part = tid & (d.split - 1), per_pass = kDirectThreads / d.split;
    for (int base = 0; base < outputs; base += per_pass) {
      const int q = base + tid / d.split;
      const bool live = q < outputs;
      const int co = live ? q / pixels : 0, pix = live ? q - co * pixels : 0;
      const int r = pix / p.OW, ow = pix - r * p.OW;
      float acc = 0.f;
      if (live) {
        const float* in = window + part * d.window_pitch + r * p.stride_h * d.cols_in + ow * p.stride_w;
        const float* wc = w_s + co * wk + part * taps;
        for (int c = part; c < d.cpg; c += d.split, in += d.split * d.window_pitch, wc += d.split * taps) {
#pragma unroll
          for (int ky = 0; ky < KH; ++ky)
#pragma unroll
            for (int kx = 0; kx < KW; ++kx) acc = fmaf(in[ky * row_step + kx * p.dil_w], wc[ky * KW + kx], acc);
        }
      }
      for (int lanes = d.split / 2; lanes > 0; lanes /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, lanes);
      if (live && part == 0) store_fused<T>(p, n, co0 + co, oy0 + r, ow, acc, channel_bias<T>(p, co0 + co));
    }
  } else {
    // Item i of the block's groups of CO channels (those with a channel of the group's
    // n_co) x quads of kDirectRowT rows x columns, group-major: a warp's lanes take
    // neighbouring columns of one group, so that each of its stores writes a row's
    // neighbouring pixels. Quads past the band's last row (the image's last band) are idle.
    const int items = (n_co + CO - 1) / CO * static_cast<int>(d.tile_columns.d);
    for (int i = tid; i < items; i += kDirectThreads) {
      const QuotRem gc = divmod(i, d.tile_columns), qc = divmod(gc.r, d.out_cols);
      const int grp = gc.q, ow = qc.r, r0 = qc.q * kDirectRowT;
      if (r0 >= live_rows) continue;
      float acc[kDirectRowT][CO];
      direct_tile<K>(p, d, window + r0 * p.stride_h * d.cols_in + ow * p.stride_w, w_s, grp, acc);
      store_tile<T>(p, n, co0 + grp * CO, oy0 + r0, ow, acc, min(CO, n_co - grp * CO), min(kDirectRowT, live_rows - r0));
    }
  }
}

template <typename T>
void launch_direct_t(const ConvParams& p, const DirectShape& d, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(images(p) * d.bands), static_cast<unsigned>(d.co_blocks));
  const int smem = static_cast<int>(direct_smem_bytes(d.cpg, d.window_pitch, d.co_block, p.taps));
  const bool k3 = p.taps == 9 && p.KW == 3;
  if (d.co_t == kDirectCoT) {
    if (k3) direct_conv_kernel<T, 3, kDirectCoT><<<grid, kDirectThreads, smem, stream>>>(p, d);
    else direct_conv_kernel<T, 0, kDirectCoT><<<grid, kDirectThreads, smem, stream>>>(p, d);
  } else {
    if (k3) direct_conv_kernel<T, 3, 1><<<grid, kDirectThreads, smem, stream>>>(p, d);
    else direct_conv_kernel<T, 0, 1><<<grid, kDirectThreads, smem, stream>>>(p, d);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void launch_direct(const ConvParams& p, const DirectShape& d, int elem_bytes, bool bf16,
                   cudaStream_t stream) {
  dispatch_elem(elem_bytes, bf16, [&](auto e) {
    launch_direct_t<typename decltype(e)::type>(p, d, stream);
  });
}

}  // namespace fx_fuse
