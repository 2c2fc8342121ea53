// The depthwise kernel: convolutions with one input channel per group (`mult` output
// channels per input channel) on NCHW input. A block computes a 32 x 64 tile of one plane's
// outputs for up to CO of the input channel's output channels: it stages the tile's input
// window in shared memory (zero where it reaches into the padding) with the weights, then
// each thread accumulates eight rows of one column in fp32 (a warp: 32 neighbouring outputs
// of one row) and runs the epilogue (bias, relu, `other`) before the only store. Index
// arithmetic is per thread, not per output. It moves the input once and the output once,
// but each block waits out its loads before its multiply-adds: on 3x3 layers of one filter
// per channel it takes ~5x its bytes' time, and cuDNN's convolution is faster there
// (docs/performance.md, v41; fx_fuse/_cuda.py, _depthwise_pays).
#include <c10/cuda/CUDAException.h>

#include "api.h"
#include "conv_relu_add.cuh"

namespace fx_fuse {
namespace {

constexpr int kDwThreads = kDwTileW * kDwThreadRows;
constexpr int kDwRows = kDwTileH / kDwThreadRows;  // output rows per thread

template <typename T, int CO>
__global__ void __launch_bounds__(kDwThreads)
    depthwise_conv_kernel(const ConvParams p, const DepthwiseShape d) {
  extern __shared__ float smem[];
  float* w_s = smem;                   // [CO][taps]
  float* window = smem + CO * p.taps;  // [rows_in][cols_in]
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * kDwTileW + tx;

  // blockIdx.x: (image, input channel, chunk of CO output channels); blockIdx.y: tile
  const int chunk = static_cast<int>(blockIdx.x % d.chunks);
  const int64_t plane = blockIdx.x / d.chunks;  // n * C + c
  const int c_in = static_cast<int>(plane % p.Cin);
  const int64_t n = plane / p.Cin;
  const int co0 = c_in * d.mult + chunk * CO, n_co = min(CO, d.mult - chunk * CO);
  const int tile_y = blockIdx.y / d.tiles_w, tile_x = blockIdx.y - tile_y * d.tiles_w;
  const int oy0 = tile_y * kDwTileH, ox0 = tile_x * kDwTileW;
  const int iy0 = oy0 * p.stride_h - p.pad_h, ix0 = ox0 * p.stride_w - p.pad_w;

  const T* w = static_cast<const T*>(p.wprep);  // (Cout, 1, KH, KW), contiguous
  for (int i = tid; i < CO * p.taps; i += kDwThreads) {
    const int co = i / p.taps;
    w_s[i] = co < n_co ? to_float(w[static_cast<int64_t>(co0) * p.taps + i]) : 0.f;
  }
  const T* x = static_cast<const T*>(p.x) + n * p.x_sn + c_in * p.x_sc;
#pragma unroll 8
  for (int r = ty; r < d.rows_in; r += kDwThreadRows) {
    const int iy = iy0 + r;
    const bool row_in = iy >= 0 && iy < p.H;
    for (int col = tx; col < d.cols_in; col += kDwTileW) {
      const int ix = ix0 + col;
      window[r * d.cols_in + col] =
          row_in && ix >= 0 && ix < p.W ? to_float(x[iy * p.x_sh + ix * p.x_sw]) : 0.f;
    }
  }
  __syncthreads();

  float acc[CO][kDwRows] = {};
  const float* in = window + ty * p.stride_h * d.cols_in + tx * p.stride_w;
  const int row_step = kDwThreadRows * p.stride_h * d.cols_in;
  for (int ky = 0; ky < d.KH; ++ky) {
    for (int kx = 0; kx < p.KW; ++kx) {
      const int tap = ky * p.KW + kx;
      const float* at = in + ky * p.dil_h * d.cols_in + kx * p.dil_w;
      float wv[CO];
#pragma unroll
      for (int co = 0; co < CO; ++co) wv[co] = w_s[co * p.taps + tap];
#pragma unroll
      for (int r = 0; r < kDwRows; ++r) {
        const float v = at[r * row_step];
#pragma unroll
        for (int co = 0; co < CO; ++co) acc[co][r] += v * wv[co];
      }
    }
  }

  const int ox = ox0 + tx;
  if (ox >= p.OW) return;
  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int co = 0; co < CO; ++co) {
    if (co >= n_co) break;
    const int c = co0 + co;
    const float b = p.bias != nullptr ? to_float(static_cast<const T*>(p.bias)[c]) : 0.f;
    const int64_t o_base = n * p.o_sn + c * p.o_sc + ox * p.o_sw;
    const int64_t y_base = n * p.y_sn + c * p.y_sc + ox * p.y_sw;
#pragma unroll
    for (int r = 0; r < kDwRows; ++r) {
      const int oy = oy0 + ty + r * kDwThreadRows;
      if (oy >= p.OH) break;
      const float other = load_other(p, o_base + oy * p.o_sh);
      out[y_base + oy * p.y_sh] = from_float<T>(fused_value(acc[co][r], b, other));
    }
  }
}

template <typename T, int CO>
void launch_depthwise_t(const ConvParams& p, const DepthwiseShape& d, cudaStream_t stream) {
  const int64_t planes = p.M / (static_cast<int64_t>(p.OH) * p.OW) * p.Cin;
  const dim3 grid(static_cast<unsigned>(planes * d.chunks), static_cast<unsigned>(d.tiles));
  depthwise_conv_kernel<T, CO><<<grid, dim3(kDwTileW, kDwThreadRows),
                                 depthwise_smem_bytes(d, p.taps), stream>>>(p, d);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_depthwise_co(const ConvParams& p, const DepthwiseShape& d, cudaStream_t stream) {
  switch (depthwise_co(d.mult)) {
    case 1: launch_depthwise_t<T, 1>(p, d, stream); break;
    case 2: launch_depthwise_t<T, 2>(p, d, stream); break;
    default: launch_depthwise_t<T, 4>(p, d, stream); break;
  }
}

}  // namespace

void launch_depthwise(const ConvParams& p, const DepthwiseShape& d, int elem_bytes, bool bf16,
                      cudaStream_t stream) {
  if (elem_bytes == 4) launch_depthwise_co<float>(p, d, stream);
  else if (bf16) launch_depthwise_co<__nv_bfloat16>(p, d, stream);
  else launch_depthwise_co<__half>(p, d, stream);
}

}  // namespace fx_fuse
