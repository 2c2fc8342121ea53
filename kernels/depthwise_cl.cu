// The channels-last depthwise kernel: convolutions with one input and one output channel
// per group on channels-last input, at the common sizes (3x3 and 5x5 at stride 1 or 2, 7x7
// at stride 1, no dilation: compiled in). A thread computes a tile of output pixels
// (depthwise_cl_tile: 2 x 2 to 4 x 2, 2 x 4 for 16-bit 3x3) for one group of 4 channels,
// the lanes of a warp taking neighbouring groups, so that a warp's loads cover whole pixels:
//   - it walks the tile's input rows once, top to bottom, each row's columns loaded once
//     (16 bytes fp32, 8 bytes 16-bit) straight from global memory and converted to floats
//     once; each row feeds every output row it touches (3x3 on 2 x 4: 24 loads for 8
//     outputs, where one per tap would be 72). For 3x3 the walk is unrolled, so the tile's
//     loads are issued at once; larger kernels walk their rows in a loop, the next row's
//     loads issued before this row's multiply-adds;
//   - the block's weights sit in shared memory as floats, one 16-byte vector per tap and
//     group, beside its bias and per-channel `other`;
//   - the epilogue (bias, relu, `other`) runs before the only store, one vector per pixel
//     (the output is channels-last too).
// Past the staging barrier, warps walk their tiles independently: nothing else is staged,
// so no block waits on a window (docs/performance.md, v45; fx_fuse/_cuda.py,
// _depthwise_pays).
#include <c10/cuda/CUDAException.h>

#include "api.h"
#include "conv_relu_add.cuh"

namespace fx_fuse {
namespace {

// 4 channels of T: one 16-byte (fp32) or 8-byte (16-bit) vector.
template <typename T> struct Group { using type = uint2; };
template <> struct Group<float> { using type = uint4; };

// The group's 4 channels as floats.
template <typename T>
__device__ __forceinline__ void unpack(const typename Group<T>::type& v, float (&f)[4]);
template <>
__device__ __forceinline__ void unpack<float>(const uint4& v, float (&f)[4]) {
  f[0] = __uint_as_float(v.x), f[1] = __uint_as_float(v.y);
  f[2] = __uint_as_float(v.z), f[3] = __uint_as_float(v.w);
}
template <>
__device__ __forceinline__ void unpack<__half>(const uint2& v, float (&f)[4]) {
  const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&v.x));
  const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&v.y));
  f[0] = a.x, f[1] = a.y, f[2] = b.x, f[3] = b.y;
}
template <>
__device__ __forceinline__ void unpack<__nv_bfloat16>(const uint2& v, float (&f)[4]) {
  const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&v.x));
  const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&v.y));
  f[0] = a.x, f[1] = a.y, f[2] = b.x, f[3] = b.y;
}

// The 4 channels stored as T, rounded once.
__device__ __forceinline__ void store(float* dst, const float (&f)[4]) {
  *reinterpret_cast<float4*>(dst) = make_float4(f[0], f[1], f[2], f[3]);
}
__device__ __forceinline__ void store(__half* dst, const float (&f)[4]) {
  const __half2 a = __floats2half2_rn(f[0], f[1]), b = __floats2half2_rn(f[2], f[3]);
  *reinterpret_cast<uint2*>(dst) =
      make_uint2(*reinterpret_cast<const uint32_t*>(&a), *reinterpret_cast<const uint32_t*>(&b));
}
__device__ __forceinline__ void store(__nv_bfloat16* dst, const float (&f)[4]) {
  const __nv_bfloat162 a = __floats2bfloat162_rn(f[0], f[1]), b = __floats2bfloat162_rn(f[2], f[3]);
  *reinterpret_cast<uint2*>(dst) =
      make_uint2(*reinterpret_cast<const uint32_t*>(&a), *reinterpret_cast<const uint32_t*>(&b));
}

// Input row iy of the tile's columns (bit j of col_in: column j inside the image), zeros
// outside the image.
template <typename T, int COLS>
__device__ __forceinline__ void load_row(const T* xn, int iy, int ix0, int x_sh, int x_sw, int H,
                                         uint32_t col_in, typename Group<T>::type (&row)[COLS]) {
  using G = typename Group<T>::type;
  const bool row_in = static_cast<unsigned>(iy) < static_cast<unsigned>(H);
  const T* in = xn + iy * x_sh;
#pragma unroll
  for (int j = 0; j < COLS; ++j) {
    row[j] = row_in && (col_in >> j & 1u) ? __ldg(reinterpret_cast<const G*>(in + (ix0 + j) * x_sw)) : G{};
  }
}

// acc[r] += input row j's share of output row r (j - r S in [0, K)), for the thread's TW
// columns; `row`: the row's COLS input columns, converted to floats once.
template <typename T, int K, int S, int TH, int TW, int COLS>
__device__ __forceinline__ void accumulate_row(int j, const typename Group<T>::type (&row)[COLS],
                                               const float4* w_s, int cg_block, int cg_local,
                                               float (&acc)[TH][TW][kDwClGroup]) {
  float xv[COLS][kDwClGroup];
#pragma unroll
  for (int q = 0; q < COLS; ++q) unpack<T>(row[q], xv[q]);
#pragma unroll
  for (int r = 0; r < TH; ++r) {
    const int ky = j - r * S;
    if (ky < 0 || ky >= K) continue;
#pragma unroll
    for (int kx = 0; kx < K; ++kx) {
      const float4 wv = w_s[(ky * K + kx) * cg_block + cg_local];
#pragma unroll
      for (int q = 0; q < TW; ++q) {
        acc[r][q][0] = fmaf(xv[q * S + kx][0], wv.x, acc[r][q][0]);
        acc[r][q][1] = fmaf(xv[q * S + kx][1], wv.y, acc[r][q][1]);
        acc[r][q][2] = fmaf(xv[q * S + kx][2], wv.z, acc[r][q][2]);
        acc[r][q][3] = fmaf(xv[q * S + kx][3], wv.w, acc[r][q][3]);
      }
    }
  }
}

// A K x K kernel at stride S on tiles of TH x TW pixels, rows unrolled or not
// (depthwise_cl_tile). Shared memory: the weights of the block's channel groups,
// float4 [tap][group] (a warp's reads of one tap are consecutive), then the bias and the
// per-channel `other` of its channels.
template <typename T, int K, int S, int TH, int TW, bool UNROLL>
__global__ void __launch_bounds__(kDwClThreads, kDwClBlocksPerSm)
    depthwise_cl_kernel(const ConvParams p, const DepthwiseClShape d) {
  using G = typename Group<T>::type;
  constexpr int ROWS = (TH - 1) * S + K, COLS = (TW - 1) * S + K;  // the tile's input window
  extern __shared__ float4 w_s[];

  const int cg_local = static_cast<int>(threadIdx.x) % d.cg_block;
  const int tile_local = static_cast<int>(threadIdx.x) / d.cg_block;
  const int c0 = blockIdx.y * d.cg_block * kDwClGroup;  // the block's first channel
  const int block_channels = d.cg_block * kDwClGroup;
  const T* w = static_cast<const T*>(p.wprep);  // (C, 1, K, K), contiguous
  float* ws = reinterpret_cast<float*>(w_s);
  for (int i = threadIdx.x; i < K * K * block_channels; i += kDwClThreads) {
    const int tap = i / block_channels, cl = i - tap * block_channels;
    const int c = c0 + cl;
    ws[i] = c < p.Cout ? to_float(w[c * K * K + tap]) : 0.f;
  }
  // `other` staged where it varies by channel only (a number: p.other null)
  const bool chan_other = p.other == nullptr || (p.o_sn == 0 && p.o_sh == 0 && p.o_sw == 0);
  float* bias_s = ws + K * K * block_channels;
  float* other_s = bias_s + block_channels;
  for (int cl = threadIdx.x; cl < block_channels; cl += kDwClThreads) {
    const int c = c0 + cl;
    const bool in = c < p.Cout;
    bias_s[cl] = in && p.bias != nullptr ? to_float(static_cast<const T*>(p.bias)[c]) : 0.f;
    other_s[cl] = p.other == nullptr ? p.other_scalar
                                     : (in && chan_other ? load_other(p, c * p.o_sc) : 0.f);
  }
  __syncthreads();
  const int c = c0 + cg_local * kDwClGroup;  // the thread's first channel
  if (tile_local >= d.tiles_per_block || c >= p.Cout) return;

  const int x_sh = static_cast<int>(p.x_sh), x_sw = static_cast<int>(p.x_sw);  // < 2^31 (the planner)
  const int step = gridDim.x * d.tiles_per_block;
  for (int t = blockIdx.x * d.tiles_per_block + tile_local; t < d.tiles; t += step) {
    const int trow = t / d.tiles_w, tx = t - trow * d.tiles_w;  // trow: n * tiles_h + ty
    const int n = trow / d.tiles_h, ty = trow - n * d.tiles_h;
    const int oy0 = ty * TH, ox0 = tx * TW;
    const int iy0 = oy0 * S - p.pad_h, ix0 = ox0 * S - p.pad_w;
    const T* xn = static_cast<const T*>(p.x) + n * p.x_sn + c;
    uint32_t col_in = 0;
#pragma unroll
    for (int j = 0; j < COLS; ++j) {
      col_in |= static_cast<uint32_t>(static_cast<unsigned>(ix0 + j) < static_cast<unsigned>(p.W)) << j;
    }

    float acc[TH][TW][kDwClGroup] = {};
    if constexpr (UNROLL) {
      // each row loaded where it is used: ptxas issues the tile's loads up front
#pragma unroll
      for (int j = 0; j < ROWS; ++j) {
        G row[COLS];
        load_row<T, COLS>(xn, iy0 + j, ix0, x_sh, x_sw, p.H, col_in, row);
        accumulate_row<T, K, S, TH, TW, COLS>(j, row, w_s, d.cg_block, cg_local, acc);
      }
    } else {
      // the next row's loads issued before this row's multiply-adds; not unrolled (unrolled,
      // ptxas issues every row's loads up front and spills)
      G row[COLS], next[COLS];
      load_row<T, COLS>(xn, iy0, ix0, x_sh, x_sw, p.H, col_in, row);
#pragma unroll 1
      for (int j = 0; j < ROWS; ++j) {
        if (j + 1 < ROWS) load_row<T, COLS>(xn, iy0 + j + 1, ix0, x_sh, x_sw, p.H, col_in, next);
        accumulate_row<T, K, S, TH, TW, COLS>(j, row, w_s, d.cg_block, cg_local, acc);
#pragma unroll
        for (int q = 0; q < COLS; ++q) row[q] = next[q];
      }
    }

    const float4 bias = reinterpret_cast<const float4*>(bias_s)[cg_local];
    const float4 other_c = reinterpret_cast<const float4*>(other_s)[cg_local];
    T* out = static_cast<T*>(p.out);
#pragma unroll
    for (int r = 0; r < TH; ++r) {
#pragma unroll
      for (int q = 0; q < TW; ++q) {
        const int oy = oy0 + r, ox = ox0 + q;
        if (oy >= p.OH || ox >= p.OW) continue;
        const int64_t o = n * p.o_sn + oy * p.o_sh + ox * p.o_sw;
        float other[kDwClGroup] = {other_c.x, other_c.y, other_c.z, other_c.w};
        if (!chan_other) {
#pragma unroll
          for (int e = 0; e < kDwClGroup; ++e) other[e] = load_other(p, o + (c + e) * p.o_sc);
        }
        const float y[kDwClGroup] = {fused_value(acc[r][q][0], bias.x, other[0]),
                                     fused_value(acc[r][q][1], bias.y, other[1]),
                                     fused_value(acc[r][q][2], bias.z, other[2]),
                                     fused_value(acc[r][q][3], bias.w, other[3])};
        store(out + (n * p.y_sn + oy * p.y_sh + ox * p.y_sw + c), y);
      }
    }
  }
}

template <typename T, int K, int S, int TH, int TW, bool UNROLL>
void launch_cl_t(const ConvParams& p, const DepthwiseClShape& d, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(d.blocks), static_cast<unsigned>(d.chunks));
  depthwise_cl_kernel<T, K, S, TH, TW, UNROLL>
      <<<grid, kDwClThreads, depthwise_cl_smem_bytes(d, K * K), stream>>>(p, d);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int K, int S>
void launch_cl_sized(const ConvParams& p, const DepthwiseClShape& d, cudaStream_t stream) {
  constexpr DwClTile tile = depthwise_cl_tile(K, S, sizeof(T));
  launch_cl_t<T, K, S, tile.h, tile.w, tile.unroll>(p, d, stream);
}

template <typename T>
void launch_cl_dtype(const ConvParams& p, const DepthwiseClShape& d, cudaStream_t stream) {
  const int k = p.KW, s = p.stride_w;  // depthwise_cl_sizes: one of the compiled sizes
  if (k == 3 && s == 1) launch_cl_sized<T, 3, 1>(p, d, stream);
  else if (k == 3 && s == 2) launch_cl_sized<T, 3, 2>(p, d, stream);
  else if (k == 5 && s == 1) launch_cl_sized<T, 5, 1>(p, d, stream);
  else if (k == 5 && s == 2) launch_cl_sized<T, 5, 2>(p, d, stream);
  else launch_cl_sized<T, 7, 1>(p, d, stream);
}

}  // namespace

void launch_depthwise_cl(const ConvParams& p, const DepthwiseClShape& d, int elem_bytes, bool bf16,
                         cudaStream_t stream) {
  dispatch_elem(elem_bytes, bf16, [&](auto e) {
    launch_cl_dtype<typename decltype(e)::type>(p, d, stream);
  });
}

}  // namespace fx_fuse
