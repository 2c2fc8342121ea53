// The depthwise kernel: convolutions with one input channel per group (`mult` output
// channels per input channel) on NCHW input. A block of 8 warps computes tiles of 32
// columns for up to CO of an input channel's output channels: one 32 x 64 tile of a plane,
// or, on planes of at most 32 rows, tiles of 8, 16 or 32 rows of 8, 4 or 2 planes side by
// side (DepthwiseShape::plane_warps). Per plane and tile:
//   - it stages the tile's input window in shared memory as floats (zero where it reaches
//     into the padding), by 16-byte loads where the rows allow (DepthwiseShape::vec), with
//     the plane's weights;
//   - each thread accumulates eight consecutive rows of one column in fp32 (a warp: 32
//     neighbouring outputs of a row). The common kernels (3x3 and 5x5 at stride 1 or 2, 7x7
//     at stride 1, no dilation) are compiled for their size: a thread holds its weights in
//     registers and walks the window's rows once, each loaded row feeding every output row
//     it touches (3x3: 30 shared loads for 8 outputs, where a load per tap would be 72). Other
//     sizes, strides and dilations take the same kernel with its sizes read at run time;
//   - the epilogue (bias, relu, `other`) runs before the only store.
// It moves the input once and the output once (docs/performance.md, v41-v43;
// fx_fuse/_cuda.py, _depthwise_pays).
#include <c10/cuda/CUDAException.h>

#include "api.h"
#include "conv_relu_add.cuh"

namespace fx_fuse {
namespace {

constexpr int kDwThreads = kDwTileW * kDwThreadRows;

// The staged window: rows_in rows of `pitch` floats, row r holding input row iy0 + r from
// column ixa on (ixa: the window's first column ix0, rounded down to a 16-byte chunk where
// the rows are read in chunks). Zeros outside the image.
template <typename T>
__device__ __forceinline__ void stage_window(const ConvParams& p, const DepthwiseShape& d, const T* x,
                                             int iy0, int ixa, int tid, int threads, float* window) {
  constexpr int VEC = 16 / static_cast<int>(sizeof(T));
  const int units = d.rows_in * d.row_units;
  if (d.vec) {
    // Unit q: the 16-byte chunk q % row_units of window row q / row_units (W % VEC == 0: a
    // chunk lies wholly inside the image or outside it).
#pragma unroll 4
    for (int q = tid; q < units; q += threads) {
      const int r = static_cast<int>(__umulhi(static_cast<uint32_t>(q), d.row_units_inv));
      const int j = q - r * d.row_units;
      const int iy = iy0 + r, ix = ixa + j * VEC;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (static_cast<unsigned>(iy) < static_cast<unsigned>(p.H) &&
          static_cast<unsigned>(ix) < static_cast<unsigned>(p.W)) {
        v = __ldg(reinterpret_cast<const uint4*>(x + iy * p.x_sh + ix));
      }
      float4* dst = reinterpret_cast<float4*>(window + r * d.pitch + j * VEC);
      if constexpr (VEC == 4) {
        dst[0] = make_float4(__uint_as_float(v.x), __uint_as_float(v.y), __uint_as_float(v.z),
                             __uint_as_float(v.w));
      } else {
        const T* h = reinterpret_cast<const T*>(&v);
        dst[0] = make_float4(to_float(h[0]), to_float(h[1]), to_float(h[2]), to_float(h[3]));
        dst[1] = make_float4(to_float(h[4]), to_float(h[5]), to_float(h[6]), to_float(h[7]));
      }
    }
  } else {
    // Unit q: element q % row_units of window row q / row_units.
#pragma unroll 4
    for (int q = tid; q < units; q += threads) {
      const int r = static_cast<int>(__umulhi(static_cast<uint32_t>(q), d.row_units_inv));
      const int c = q - r * d.row_units;
      const int iy = iy0 + r, ix = ixa + c;
      const bool in = static_cast<unsigned>(iy) < static_cast<unsigned>(p.H) &&
                      static_cast<unsigned>(ix) < static_cast<unsigned>(p.W);
      window[r * d.pitch + c] = in ? to_float(x[iy * p.x_sh + ix * p.x_sw]) : 0.f;
    }
  }
}

// acc[co][r] += the thread's output row r for output channel co from one input channel:
// its window at `in` (the thread's first tap of its first row) and its weights at
// w_s[co * co_stride + tap]. KH > 0: a KH x KW kernel at stride S, no dilation, with the
// weights in registers: window row j feeds output rows r with j - r S in [0, KH). KH == 0:
// sizes, strides and dilation at run time, weights read per tap.
template <int CO, int KH, int KW, int S>
__device__ __forceinline__ void accumulate(const ConvParams& p, const DepthwiseShape& d, const float* in,
                                           const float* w_s, int co_stride, float (&acc)[CO][kDwRows]) {
  if constexpr (KH > 0) {
    float w[CO][KH * KW];
#pragma unroll
    for (int co = 0; co < CO; ++co)
#pragma unroll
      for (int t = 0; t < KH * KW; ++t) w[co][t] = w_s[co * co_stride + t];
#pragma unroll
    for (int j = 0; j < (kDwRows - 1) * S + KH; ++j) {
      float v[KW];
#pragma unroll
      for (int kx = 0; kx < KW; ++kx) v[kx] = in[j * d.pitch + kx];
#pragma unroll
      for (int r = 0; r < kDwRows; ++r) {
        const int ky = j - r * S;
        if (ky < 0 || ky >= KH) continue;
#pragma unroll
        for (int co = 0; co < CO; ++co)
#pragma unroll
          for (int kx = 0; kx < KW; ++kx) acc[co][r] = fmaf(v[kx], w[co][ky * KW + kx], acc[co][r]);
      }
    }
  } else {
    const int row_step = p.stride_h * d.pitch;
    for (int ky = 0; ky < d.KH; ++ky) {
      for (int kx = 0; kx < p.KW; ++kx) {
        const int tap = ky * p.KW + kx;
        const float* at = in + ky * p.dil_h * d.pitch + kx * p.dil_w;
        float wv[CO];
#pragma unroll
        for (int co = 0; co < CO; ++co) wv[co] = w_s[co * co_stride + tap];
#pragma unroll
        for (int r = 0; r < kDwRows; ++r) {
          const float v = at[r * row_step];
#pragma unroll
          for (int co = 0; co < CO; ++co) acc[co][r] = fmaf(v, wv[co], acc[co][r]);
        }
      }
    }
  }
}

// 3x3 at stride 1 with one output channel is held to 32 registers: 8 blocks per SM, without
// spills (40 unbounded); the others keep ptxas's own count (0: no minimum).
template <typename T, int CO, int KH, int KW, int S>
__global__ void __launch_bounds__(kDwThreads, CO == 1 && KH == 3 && S == 1 ? 8 : 0)
    depthwise_conv_kernel(const ConvParams p, const DepthwiseShape d) {
  // A plane's threads: plane_warps warps (ty / plane_warps: the plane's slot in the block).
  // A plane here is one image's group: cpg input channels, each with its window (the
  // compiled sizes take one: launch_depthwise_co).
  const int cpg = KH > 0 ? 1 : d.cpg;
  const int tx = threadIdx.x, slot = threadIdx.y / d.plane_warps;
  const int ty = threadIdx.y - slot * d.plane_warps, tid = ty * kDwTileW + tx;
  const int per_block = kDwThreadRows / d.plane_warps;
  extern __shared__ float4 smem4[];
  const int window_floats = d.rows_in * d.pitch;  // 16-byte aligned rows
  const int w_floats = CO * cpg * p.taps;      // [CO][cpg][taps]
  float* window = reinterpret_cast<float*>(smem4) + slot * cpg * window_floats;
  float* w_s = reinterpret_cast<float*>(smem4) + per_block * cpg * window_floats + slot * w_floats;

  // blockIdx.x: the block's planes n * groups + g (32-bit division: 64-bit ones cost a few
  // hundred instructions); blockIdx.y: the tile; blockIdx.z: the chunk of CO output channels
  const uint32_t plane = blockIdx.x * per_block + slot;
  const bool live = plane < static_cast<uint32_t>(d.planes);
  const uint32_t groups = static_cast<uint32_t>(p.Cin / cpg);
  const int chunk = static_cast<int>(blockIdx.z);
  const int g = static_cast<int>(plane % groups);
  const int64_t n = plane / groups;
  const int co0 = g * d.mult + chunk * CO, n_co = min(CO, d.mult - chunk * CO);
  const int tile_y = blockIdx.y / d.tiles_w, tile_x = blockIdx.y - tile_y * d.tiles_w;
  const int oy0 = tile_y * d.plane_warps * kDwRows, ox0 = tile_x * kDwTileW;
  const int iy0 = oy0 * p.stride_h - p.pad_h, ix0 = ox0 * p.stride_w - p.pad_w;
  constexpr int VEC = 16 / static_cast<int>(sizeof(T));
  const int ixa = d.vec ? (ix0 >= 0 ? ix0 / VEC * VEC : -((VEC - 1 - ix0) / VEC) * VEC) : ix0;

  if (live) {
    const int threads = d.plane_warps * kDwTileW;
    const T* w = static_cast<const T*>(p.wprep);  // (Cout, cpg, KH, KW), contiguous
    for (int i = tid; i < CO * cpg * p.taps; i += threads) {
      const int co = i / (cpg * p.taps);
      w_s[i] = co < n_co ? to_float(w[static_cast<int64_t>(co0) * cpg * p.taps + i]) : 0.f;
    }
    const T* x = static_cast<const T*>(p.x) + n * p.x_sn + g * cpg * p.x_sc;
    for (int ci = 0; ci < cpg; ++ci) {
      stage_window(p, d, x, iy0, ixa, tid, threads, window + ci * window_floats);
      x += p.x_sc;
    }
  }
  __syncthreads();
  if (!live) return;

  const int oy = oy0 + ty * kDwRows, ox = ox0 + tx;  // the thread's first output
  if (oy >= p.OH) return;                          // a whole warp's rows past the plane
  float acc[CO][kDwRows] = {};
  const float* in = window + ty * kDwRows * p.stride_h * d.pitch + (ix0 - ixa) + tx * p.stride_w;
  if constexpr (KH > 0) {  // one input channel (launch_depthwise_co)
    accumulate<CO, KH, KW, S>(p, d, in, w_s, KH * KW, acc);
  } else {
    for (int ci = 0; ci < cpg; ++ci) {
      accumulate<CO, KH, KW, S>(p, d, in + ci * window_floats, w_s + ci * p.taps, cpg * p.taps, acc);
    }
  }
  if (ox >= p.OW) return;

  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int co = 0; co < CO; ++co) {
    if (co >= n_co) break;
    const int c = co0 + co;
    const float b = channel_bias<T>(p, c);
    int64_t o = n * p.o_sn + c * p.o_sc + oy * p.o_sh + ox * p.o_sw;
    T* y = out + (n * p.y_sn + c * p.y_sc + oy * p.y_sh + ox * p.y_sw);
    float other = load_other(p, o);  // once per column where it does not vary by row
#pragma unroll
    for (int r = 0; r < kDwRows; ++r, o += p.o_sh, y += p.y_sh) {
      if (oy + r >= p.OH) break;
      if (r > 0 && p.o_sh != 0) other = load_other(p, o);
      *y = from_float<T>(fused_value(acc[co][r], b, other));
    }
  }
}

template <typename T, int CO, int KH, int KW, int S>
void launch_depthwise_t(const ConvParams& p, const DepthwiseShape& d, cudaStream_t stream) {
  const int per_block = kDwThreadRows / d.plane_warps;
  const dim3 grid(static_cast<unsigned>((d.planes + per_block - 1) / per_block),
                  static_cast<unsigned>(d.tiles), static_cast<unsigned>(d.chunks));
  depthwise_conv_kernel<T, CO, KH, KW, S><<<grid, dim3(kDwTileW, kDwThreadRows),
                                            static_cast<int>(depthwise_smem_bytes(d, p.taps)),
                                            stream>>>(p, d);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The kernel compiled for a KH x KW kernel at stride S where its weights fit in registers
// (CO x KH x KW <= 64), else the one with run-time sizes.
template <typename T, int CO, int KH, int KW, int S>
void launch_sized(const ConvParams& p, const DepthwiseShape& d, cudaStream_t stream) {
  if constexpr (CO * KH * KW <= 64) launch_depthwise_t<T, CO, KH, KW, S>(p, d, stream);
  else launch_depthwise_t<T, CO, 0, 0, 0>(p, d, stream);
}

template <typename T, int CO>
void launch_depthwise_co(const ConvParams& p, const DepthwiseShape& d, cudaStream_t stream) {
  // The compiled sizes take one input channel per group (a loop over a group's channels
  // around them costs registers: 3x3 with four filters 79 -> 124).
  const bool plain = d.cpg == 1 && p.stride_h == p.stride_w && p.dil_h == 1 && p.dil_w == 1 &&
                     d.KH == p.KW;
  const int k = plain ? p.KW : 0, s = p.stride_h;
  if (k == 3 && s == 1) launch_sized<T, CO, 3, 3, 1>(p, d, stream);
  else if (k == 3 && s == 2) launch_sized<T, CO, 3, 3, 2>(p, d, stream);
  else if (k == 5 && s == 1) launch_sized<T, CO, 5, 5, 1>(p, d, stream);
  else if (k == 5 && s == 2) launch_sized<T, CO, 5, 5, 2>(p, d, stream);
  else if (k == 7 && s == 1) launch_sized<T, CO, 7, 7, 1>(p, d, stream);
  else launch_depthwise_t<T, CO, 0, 0, 0>(p, d, stream);
}

template <typename T>
void launch_depthwise_dtype(const ConvParams& p, const DepthwiseShape& d, cudaStream_t stream) {
  switch (depthwise_co(d.mult)) {
    case 1: launch_depthwise_co<T, 1>(p, d, stream); break;
    case 2: launch_depthwise_co<T, 2>(p, d, stream); break;
    default: launch_depthwise_co<T, 4>(p, d, stream); break;
  }
}

}  // namespace

void launch_depthwise(const ConvParams& p, const DepthwiseShape& d, int elem_bytes, bool bf16,
                      cudaStream_t stream) {
  dispatch_elem(elem_bytes, bf16, [&](auto e) {
    launch_depthwise_dtype<typename decltype(e)::type>(p, d, stream);
  });
}

}  // namespace fx_fuse
