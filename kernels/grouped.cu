// The direct kernel for grouped and depthwise convolutions on NCHW input: a block computes
// a band of output rows of one image for up to CO output channels of one group. Each of the
// group's input channels in turn is staged in shared memory over the band's input rows
// (zero where the window reaches into the padding); every thread then accumulates its
// outputs in fp32 from there, and the epilogue (bias, relu, `other`) runs before the only
// store. Few multiply-adds per output: the kernel is bound by memory, and one pass over the
// input and one over the output is all it moves.
#include <c10/cuda/CUDAException.h>

#include "api.h"
#include "conv_relu_add.cuh"

namespace fx_fuse {
namespace {

template <typename T, int CO>
__global__ void __launch_bounds__(kGroupedThreads)
    grouped_conv_kernel(const ConvParams p, const GroupedShape g) {
  extern __shared__ float smem[];
  float* w_s = smem;                                 // [CO][cpg][taps]
  float* band = smem + CO * g.cpg * p.taps;          // [rows_in][g.cols_in]
  const T* x = static_cast<const T*>(p.x);
  const T* w = static_cast<const T*>(p.wprep);      // (Cout, cpg, KH, KW), contiguous
  T* out = static_cast<T*>(p.out);
  const int tid = threadIdx.x;

  const int64_t block = blockIdx.x;
  const int chunk = static_cast<int>(block % g.chunks);
  const int64_t image_group = block / g.chunks;
  const int group = static_cast<int>(image_group % g.groups);
  const int64_t n = image_group / g.groups;
  const int co0 = group * g.cpo + chunk * CO;
  const int n_co = min(CO, g.cpo - chunk * CO);
  const int oy0 = blockIdx.y * g.band_rows;
  const int rows = min(g.band_rows, p.OH - oy0);
  const int rows_in = (rows - 1) * p.stride_h + p.span_h;
  const int iy0 = oy0 * p.stride_h - p.pad_h;

  const int w_count = CO * g.cpg * p.taps;
  for (int i = tid; i < w_count; i += kGroupedThreads) {
    const int co = i / (g.cpg * p.taps);
    w_s[i] = co < n_co ? to_float(w[static_cast<int64_t>(co0) * g.cpg * p.taps + i]) : 0.f;
  }

  // this thread's outputs: band positions tid + j * kGroupedThreads, as offsets into the band
  int base[kGroupedPerThread];
  bool valid[kGroupedPerThread];
#pragma unroll
  for (int j = 0; j < kGroupedPerThread; ++j) {
    const int o = tid + j * kGroupedThreads;
    valid[j] = o < rows * p.OW;
    const int oy = valid[j] ? o / p.OW : 0, ox = valid[j] ? o - oy * p.OW : 0;
    base[j] = oy * p.stride_h * g.cols_in + ox * p.stride_w;
  }
  float acc[CO][kGroupedPerThread] = {};

  for (int ci = 0; ci < g.cpg; ++ci) {
    const T* xc = x + n * p.x_sn + static_cast<int64_t>(group * g.cpg + ci) * p.x_sc;
    __syncthreads();  // the previous channel's band is read, and the weights are in place
    for (int i = tid; i < rows_in * g.cols_in; i += kGroupedThreads) {
      const int r = i / g.cols_in, iy = iy0 + r, ix = i - r * g.cols_in - p.pad_w;
      band[i] = (iy >= 0 && iy < p.H && ix >= 0 && ix < p.W)
                    ? to_float(xc[static_cast<int64_t>(iy) * p.x_sh + ix * p.x_sw])
                    : 0.f;
    }
    __syncthreads();
    const float* wc = w_s + ci * p.taps;
    for (int ky = 0; ky < g.KH; ++ky) {
      const int row = ky * p.dil_h * g.cols_in;
      for (int kx = 0; kx < p.KW; ++kx) {
        const int tap = ky * p.KW + kx, at = row + kx * p.dil_w;
#pragma unroll
        for (int j = 0; j < kGroupedPerThread; ++j) {
          const float v = valid[j] ? band[base[j] + at] : 0.f;
#pragma unroll
          for (int co = 0; co < CO; ++co) acc[co][j] += v * wc[co * g.cpg * p.taps + tap];
        }
      }
    }
  }

#pragma unroll
  for (int j = 0; j < kGroupedPerThread; ++j) {
    if (!valid[j]) continue;
    const int o = tid + j * kGroupedThreads;
    const int oy = oy0 + o / p.OW, ox = o % p.OW;
#pragma unroll
    for (int co = 0; co < CO; ++co) {
      if (co >= n_co) break;
      const int c = co0 + co;
      const float b = p.bias != nullptr ? to_float(static_cast<const T*>(p.bias)[c]) : 0.f;
      const float other = load_other(p, n * p.o_sn + c * p.o_sc + oy * p.o_sh + ox * p.o_sw);
      out[n * p.y_sn + c * p.y_sc + oy * p.y_sh + ox * p.y_sw] =
          from_float<T>(fused_value(acc[co][j], b, other));
    }
  }
}

template <typename T, int CO>
void launch_grouped_t(const ConvParams& p, const GroupedShape& g, cudaStream_t stream) {
  const int64_t blocks = p.M / (static_cast<int64_t>(p.OH) * p.OW) * g.groups * g.chunks;
  const int bands = (p.OH + g.band_rows - 1) / g.band_rows;
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(bands));
  grouped_conv_kernel<T, CO><<<grid, kGroupedThreads, grouped_smem_bytes(p, g, CO), stream>>>(p, g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_grouped_co(const ConvParams& p, const GroupedShape& g, cudaStream_t stream) {
  switch (grouped_co(g.cpo)) {
    case 1: launch_grouped_t<T, 1>(p, g, stream); break;
    case 2: launch_grouped_t<T, 2>(p, g, stream); break;
    default: launch_grouped_t<T, 4>(p, g, stream); break;
  }
}

}  // namespace

void launch_grouped(const ConvParams& p, const GroupedShape& g, int elem_bytes, bool bf16,
                    cudaStream_t stream) {
  if (elem_bytes == 4) launch_grouped_co<float>(p, g, stream);
  else if (bf16) launch_grouped_co<__nv_bfloat16>(p, g, stream);
  else launch_grouped_co<__half>(p, g, stream);
}

}  // namespace fx_fuse
