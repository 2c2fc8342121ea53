// The channels-last depthwise kernel: convolutions with one input and one output channel
// per group on channels-last input, at the common sizes (3x3 and 5x5 at stride 1 or 2, 7x7
// at stride 1, no dilation: compiled in). A thread computes a strip of R neighbouring output
// pixels of a row (depthwise_cl_strip: 4, or 2 where 4 would hold too many registers) for
// one 16-byte group of channels (4 fp32 or 8 16-bit), the lanes of a warp taking
// neighbouring groups, so that a warp's loads cover whole pixels:
//   - per kernel row, it loads the strip's input columns once, 16 bytes each, straight from
//     global memory, and each column feeds every output of the strip it touches (3x3: 18
//     loads for 4 outputs, where one per tap would be 36);
//   - the block's weights sit in shared memory as floats, one 16-byte vector per tap and 4
//     channels, read once per tap for the strip's outputs;
//   - the epilogue (bias, relu, `other`) runs before the only store, 16 bytes per pixel
//     (the output is channels-last too).
// Past the weights' barrier, warps walk their strips independently: nothing is staged, so
// no block waits on a window (docs/performance.md, v45; fx_fuse/_cuda.py, _depthwise_pays).
#include <c10/cuda/CUDAException.h>

#include "api.h"
#include "conv_relu_add.cuh"

namespace fx_fuse {
namespace {

// The 16-byte group `v` as floats.
template <typename T>
__device__ __forceinline__ void unpack(const uint4& v, float (&f)[16 / sizeof(T)]) {
  const T* h = reinterpret_cast<const T*>(&v);
#pragma unroll
  for (int e = 0; e < static_cast<int>(16 / sizeof(T)); ++e) f[e] = to_float(h[e]);
}

template <typename T>
__device__ __forceinline__ uint4 pack(const float (&f)[16 / sizeof(T)]) {
  uint4 v;
  T* h = reinterpret_cast<T*>(&v);
#pragma unroll
  for (int e = 0; e < static_cast<int>(16 / sizeof(T)); ++e) h[e] = from_float<T>(f[e]);
  return v;
}

// A K x K kernel at stride S. Shared memory: the weights of the block's channel groups,
// float4 [tap][quarter q of the group][group]: a warp's reads of one tap are consecutive.
template <typename T, int K, int S>
__global__ void __launch_bounds__(kDwClThreads, 2) depthwise_cl_kernel(const ConvParams p,
                                                                    const DepthwiseClShape d) {
  constexpr int VEC = 16 / static_cast<int>(sizeof(T));
  constexpr int Q = VEC / 4;
  constexpr int R = depthwise_cl_strip(K, S, VEC);
  constexpr int COLS = (R - 1) * S + K;  // input columns of a strip
  extern __shared__ float4 w_s[];

  const int cg_local = static_cast<int>(threadIdx.x) % d.cg_block;
  const int strip_local = static_cast<int>(threadIdx.x) / d.cg_block;
  const int c0 = blockIdx.y * d.cg_block * VEC;  // the block's first channel
  const T* w = static_cast<const T*>(p.wprep);   // (C, 1, K, K), contiguous
  float* ws = reinterpret_cast<float*>(w_s);
  for (int i = threadIdx.x; i < K * K * d.cg_block * VEC; i += kDwClThreads) {
    const int tap = i / (d.cg_block * VEC), cl = i - tap * (d.cg_block * VEC);
    const int c = c0 + cl;
    ws[((tap * Q + cl % VEC / 4) * d.cg_block + cl / VEC) * 4 + cl % 4] =
        c < p.Cout ? to_float(w[c * K * K + tap]) : 0.f;
  }
  __syncthreads();
  const int c = c0 + cg_local * VEC;  // the thread's first channel
  if (strip_local >= d.strips_per_block || c >= p.Cout) return;

  // bias, and `other` where it varies by channel only (or is a number)
  const bool chan_other = p.other == nullptr || (p.o_sn == 0 && p.o_sh == 0 && p.o_sw == 0);
  float bias[VEC], other_c[VEC];
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    bias[e] = p.bias != nullptr ? to_float(static_cast<const T*>(p.bias)[c + e]) : 0.f;
    other_c[e] = chan_other ? load_other(p, (c + e) * p.o_sc) : 0.f;
  }
  const int x_sh = static_cast<int>(p.x_sh), x_sw = static_cast<int>(p.x_sw);  // < 2^31 (the planner)
  const int step = gridDim.x * d.strips_per_block;
  for (int s = blockIdx.x * d.strips_per_block + strip_local; s < d.strips; s += step) {
    const int row = s / d.strips_w, sx = s - row * d.strips_w;  // row: n * OH + oy
    const int n = row / p.OH, oy = row - n * p.OH;
    const int ox0 = sx * R;
    const int iy0 = oy * S - p.pad_h, ix0 = ox0 * S - p.pad_w;
    const T* xn = static_cast<const T*>(p.x) + n * p.x_sn + c;
    float acc[R][VEC] = {};
#pragma unroll
    for (int ky = 0; ky < K; ++ky) {
      const int iy = iy0 + ky;
      if (static_cast<unsigned>(iy) >= static_cast<unsigned>(p.H)) continue;
      const T* in = xn + iy * x_sh;
      uint4 v[COLS];
#pragma unroll
      for (int j = 0; j < COLS; ++j) {
        const int ix = ix0 + j;
        v[j] = static_cast<unsigned>(ix) < static_cast<unsigned>(p.W)
                   ? __ldg(reinterpret_cast<const uint4*>(in + ix * x_sw))
                   : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int kx = 0; kx < K; ++kx) {
        float wv[VEC];
#pragma unroll
        for (int q = 0; q < Q; ++q) {
          const float4 t = w_s[((ky * K + kx) * Q + q) * d.cg_block + cg_local];
          wv[4 * q] = t.x, wv[4 * q + 1] = t.y, wv[4 * q + 2] = t.z, wv[4 * q + 3] = t.w;
        }
#pragma unroll
        for (int r = 0; r < R; ++r) {
          float xv[VEC];
          unpack<T>(v[r * S + kx], xv);
#pragma unroll
          for (int e = 0; e < VEC; ++e) acc[r][e] = fmaf(xv[e], wv[e], acc[r][e]);
        }
      }
    }

    T* out = static_cast<T*>(p.out);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int ox = ox0 + r;
      if (ox >= p.OW) break;
      float y[VEC];
      const int64_t o = n * p.o_sn + oy * p.o_sh + ox * p.o_sw;
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const float other = chan_other ? other_c[e] : load_other(p, o + (c + e) * p.o_sc);
        y[e] = fused_value(acc[r][e], bias[e], other);
      }
      *reinterpret_cast<uint4*>(out + (n * p.y_sn + oy * p.y_sh + ox * p.y_sw + c)) = pack<T>(y);
    }
  }
}

template <typename T, int K, int S>
void launch_cl_t(const ConvParams& p, const DepthwiseClShape& d, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(d.blocks), static_cast<unsigned>(d.chunks));
  depthwise_cl_kernel<T, K, S><<<grid, kDwClThreads, depthwise_cl_smem_bytes(d, K * K), stream>>>(p, d);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_cl_dtype(const ConvParams& p, const DepthwiseClShape& d, cudaStream_t stream) {
  const int k = p.KW, s = p.stride_w;  // depthwise_cl_sizes: one of the compiled sizes
  if (k == 3 && s == 1) launch_cl_t<T, 3, 1>(p, d, stream);
  else if (k == 3 && s == 2) launch_cl_t<T, 3, 2>(p, d, stream);
  else if (k == 5 && s == 1) launch_cl_t<T, 5, 1>(p, d, stream);
  else if (k == 5 && s == 2) launch_cl_t<T, 5, 2>(p, d, stream);
  else launch_cl_t<T, 7, 1>(p, d, stream);
}

}  // namespace

void launch_depthwise_cl(const ConvParams& p, const DepthwiseClShape& d, int elem_bytes, bool bf16,
                         cudaStream_t stream) {
  if (elem_bytes == 4) launch_cl_dtype<float>(p, d, stream);
  else if (bf16) launch_cl_dtype<__nv_bfloat16>(p, d, stream);
  else launch_cl_dtype<__half>(p, d, stream);
}

}  // namespace fx_fuse
