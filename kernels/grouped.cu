// The direct kernel for grouped and depthwise convolutions on NCHW input. A block computes a
// band of output rows of one image, in one group's plane or (small planes) in several
// groups' planes at once, for up to CO output channels of each group. Each input channel of
// the group is staged in shared memory over the band's input rows (zero where the window
// reaches into the padding; every thread's loads issued before its stores, so that they are
// in flight together); every thread then accumulates its outputs in fp32 from there, and
// the epilogue (bias, relu, `other`) runs before the only store. Few multiply-adds per
// output: the kernel is bound by memory, and it moves the input once and the output once.
#include <c10/cuda/CUDAException.h>

#include "api.h"
#include "conv_relu_add.cuh"

namespace fx_fuse {
namespace {

constexpr int kLoadBatch = 4;  // staging loads in flight per thread

// Stage input channel `ci` of the block's groups over their bands: planes x rows_in rows of
// cols_in columns, each plane at band_pitch floats.
template <typename T>
__device__ __forceinline__ void stage_band(const ConvParams& p, const GroupedShape& g,
                                           float* band, const T* x_image, int group0,
                                           int planes, int ci, int rows_in, int iy0) {
  const int plane_in = rows_in * g.cols_in, total = planes * plane_in;
  for (int i0 = threadIdx.x; i0 < total; i0 += kGroupedThreads * kLoadBatch) {
    float v[kLoadBatch];
    int at[kLoadBatch];
#pragma unroll
    for (int u = 0; u < kLoadBatch; ++u) {
      const int i = i0 + u * kGroupedThreads;
      const int pl = i / plane_in, r = i - pl * plane_in, row = r / g.cols_in;
      const int iy = iy0 + row, ix = r - row * g.cols_in - p.pad_w;
      const bool inside = i < total && iy >= 0 && iy < p.H && ix >= 0 && ix < p.W;
      const int64_t c = static_cast<int64_t>(group0 + pl) * g.cpg + ci;
      const int64_t at_x = c * p.x_sc + static_cast<int64_t>(iy) * p.x_sh + ix * p.x_sw;
      v[u] = inside ? to_float(x_image[at_x]) : 0.f;
      at[u] = i < total ? pl * g.band_pitch + r : -1;
    }
#pragma unroll
    for (int u = 0; u < kLoadBatch; ++u) {
      if (at[u] >= 0) band[at[u]] = v[u];
    }
  }
}

template <typename T, int CO>
__global__ void __launch_bounds__(kGroupedThreads, CO == 4 ? 3 : 5)
    grouped_conv_kernel(const ConvParams p, const GroupedShape g) {
  extern __shared__ float smem[];
  const int w_plane = CO * g.cpg * p.taps;  // weights per plane: [CO][cpg][taps]
  float* w_s = smem;                        // [planes][w_plane]
  float* band = smem + g.planes * w_plane;  // [planes][band_pitch]
  const T* w = static_cast<const T*>(p.wprep);  // (Cout, cpg, KH, KW), contiguous
  T* out = static_cast<T*>(p.out);
  const int tid = threadIdx.x;

  // blockIdx.x: (image, block of groups, chunk of CO output channels); blockIdx.y: band
  const int chunk = static_cast<int>(blockIdx.x % g.chunks);
  const int64_t rest = blockIdx.x / g.chunks;
  const int group0 = static_cast<int>(rest % g.group_blocks) * g.planes;
  const int64_t n = rest / g.group_blocks;
  const int planes = min(g.planes, g.groups - group0);
  const int co_in_group = chunk * CO, n_co = min(CO, g.cpo - co_in_group);
  const int oy0 = blockIdx.y * g.band_rows;
  const int rows = min(g.band_rows, p.OH - oy0);
  const int rows_in = (rows - 1) * p.stride_h + p.span_h;
  const int iy0 = oy0 * p.stride_h - p.pad_h;
  const int plane_out = rows * p.OW;

  for (int i = tid; i < planes * w_plane; i += kGroupedThreads) {
    const int pl = i / w_plane, r = i - pl * w_plane, co = r / (g.cpg * p.taps);
    const int64_t c = static_cast<int64_t>(group0 + pl) * g.cpo + co_in_group + co;
    w_s[i] = co < n_co ? to_float(w[c * g.cpg * p.taps + r - co * g.cpg * p.taps]) : 0.f;
  }

  // this thread's outputs: positions tid + j * kGroupedThreads of the block's planes x band,
  // as offsets into the staged band and the staged weights
  int base[kGroupedPerThread], w_base[kGroupedPerThread];
  bool valid[kGroupedPerThread];
#pragma unroll
  for (int j = 0; j < kGroupedPerThread; ++j) {
    const int o = tid + j * kGroupedThreads;
    valid[j] = o < planes * plane_out;
    const int pl = valid[j] ? o / plane_out : 0, q = o - pl * plane_out;
    const int oy = valid[j] ? q / p.OW : 0, ox = valid[j] ? q - oy * p.OW : 0;
    base[j] = pl * g.band_pitch + oy * p.stride_h * g.cols_in + ox * p.stride_w;
    w_base[j] = pl * w_plane;
  }
  float acc[CO][kGroupedPerThread] = {};

  const T* x_image = static_cast<const T*>(p.x) + n * p.x_sn;
  for (int ci = 0; ci < g.cpg; ++ci) {
    __syncthreads();  // the previous channel's band is read, and the weights are in place
    stage_band(p, g, band, x_image, group0, planes, ci, rows_in, iy0);
    __syncthreads();
    for (int ky = 0; ky < g.KH; ++ky) {
      const int row = ky * p.dil_h * g.cols_in;
      for (int kx = 0; kx < p.KW; ++kx) {
        const int at = row + kx * p.dil_w, tap = ci * p.taps + ky * p.KW + kx;
#pragma unroll
        for (int j = 0; j < kGroupedPerThread; ++j) {
          const float v = valid[j] ? band[base[j] + at] : 0.f;
#pragma unroll
          for (int co = 0; co < CO; ++co) {
            acc[co][j] += v * w_s[w_base[j] + co * g.cpg * p.taps + tap];
          }
        }
      }
    }
  }

#pragma unroll
  for (int j = 0; j < kGroupedPerThread; ++j) {
    if (!valid[j]) continue;
    const int o = tid + j * kGroupedThreads;
    const int pl = o / plane_out, q = o - pl * plane_out;
    const int oy = oy0 + q / p.OW, ox = q % p.OW;
#pragma unroll
    for (int co = 0; co < CO; ++co) {
      if (co >= n_co) break;
      const int c = (group0 + pl) * g.cpo + co_in_group + co;
      const float b = p.bias != nullptr ? to_float(static_cast<const T*>(p.bias)[c]) : 0.f;
      const float other = load_other(p, n * p.o_sn + c * p.o_sc + oy * p.o_sh + ox * p.o_sw);
      out[n * p.y_sn + c * p.y_sc + oy * p.y_sh + ox * p.y_sw] =
          from_float<T>(fused_value(acc[co][j], b, other));
    }
  }
}

template <typename T, int CO>
void launch_grouped_t(const ConvParams& p, const GroupedShape& g, cudaStream_t stream) {
  const int64_t images = p.M / (static_cast<int64_t>(p.OH) * p.OW);
  const int bands = (p.OH + g.band_rows - 1) / g.band_rows;
  const dim3 grid(static_cast<unsigned>(images * g.group_blocks * g.chunks),
                  static_cast<unsigned>(bands));
  grouped_conv_kernel<T, CO>
      <<<grid, kGroupedThreads, grouped_smem_bytes(g, p.taps), stream>>>(p, g);
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
