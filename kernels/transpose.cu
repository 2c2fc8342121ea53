// Layout transposes of the cuDNN path (binding.cpp), for NCHW layers that run cuDNN's
// NHWC kernels: the input NCHW -> NHWC, and the epilogue pass that reads the NHWC
// convolution output and writes NCHW, out = relu(y + bias) + other with `other` per
// channel or a number. Both are one batched tile transpose of dense matrices, image n's
// in[R][S] -> out[S][R], by 64 x 64 tiles through shared memory, 16 bytes a thread on
// both sides (R and S multiples of 16 / sizeof(T), the data 16-byte aligned; checked by
// the binding). A thread's reads of a tile go out together, by cp.async, so that each
// has its whole share of the tile in flight at once. A block may take the same tile of
// several images, through two buffers: the next image's reads are in flight while it
// stores the current one (two images a block where there are two). And the weights'
// copy for cuDNN's NHWC kernels, whose planes (3 x 3) are no 16-byte multiple: one block
// a filter, as extra blocks of the input pass's launch or a launch of its own.
#include <algorithm>

#include <c10/cuda/CUDAException.h>

#include "api.h"
#include "conv_relu_add.cuh"

namespace fx_fuse {
namespace {

constexpr int kTile = 64;
constexpr int kThreads = 256;

// Tile row r's 16-byte chunk j sits at chunk j ^ swizzle(r) of its row, so that the
// column reads (VEC rows a chunk apart, one element each) fall on distinct banks.
template <int VEC> __device__ __forceinline__ int chunk_at(int r, int j) {
  constexpr int kChunks = kTile / VEC;
  return j ^ ((r / VEC) % kChunks);
}

// Filter co of w[Cout][C][KHW] -> y[Cout][KHW][C] by one block: its C * KHW elements are
// a few KB, so the reads KHW elements apart stay in L1. T: the element, or its bits.
template <typename T>
__device__ __forceinline__ void copy_filter(const T* __restrict__ w, T* __restrict__ y, int C, int KHW,
                                            int64_t co) {
  const int n = C * KHW;
  const int64_t base = co * n;
  for (int i = threadIdx.x; i < n; i += kThreads) {
    const int t = i / C, c = i - t * C;
    y[base + i] = w[base + static_cast<int64_t>(c) * KHW + t];
  }
}

// Blocks an SM to hold the registers at 40 (16-bit elements) and 48 (fp32), as with one
// buffer: unbounded, the second image's addresses take them to 54-76 and cost blocks.
template <typename T> constexpr int kBlocksPerSM = sizeof(T) == 4 ? 5 : 6;

// EPI: the rows of `out` are the output channels (S = Cout), bias and `other` added. The
// blocks from z = image_blocks on copy one filter each of `filter` (the input pass).
template <typename T, bool EPI>
__global__ void __launch_bounds__(kThreads, kBlocksPerSM<T>)
    transpose_kernel(const ConvParams p, const T* __restrict__ in, T* __restrict__ out, int R, int S,
                     int64_t images, unsigned image_blocks, const FilterCopy filter) {
  if (blockIdx.z >= image_blocks) {
    const int64_t co = (static_cast<int64_t>(blockIdx.z - image_blocks) * gridDim.y + blockIdx.y) * gridDim.x +
                       blockIdx.x;
    if (co < filter.Cout)
      copy_filter(static_cast<const T*>(filter.w), static_cast<T*>(filter.y), filter.C, filter.KHW, co);
    return;
  }
  constexpr int VEC = 16 / sizeof(T);
  constexpr int kChunks = kTile / VEC;
  constexpr int kMoves = kTile * kChunks / kThreads;  // 16-byte chunks a thread moves each way
  static_assert(kTile * kChunks % kThreads == 0, "the tile splits evenly over the threads");
  __shared__ __align__(16) T tile[2][kTile][kTile];
  // EPI: the tile's channels' bias and `other`, read once a block, off the stores' path
  __shared__ float chan_bias[EPI ? kTile : 1], chan_other[EPI ? kTile : 1];
  const int r0 = blockIdx.y * kTile, s0 = blockIdx.x * kTile;
  const int64_t plane = static_cast<int64_t>(R) * S;
  if constexpr (EPI) {
    const int c = s0 + static_cast<int>(threadIdx.x);
    if (threadIdx.x < kTile && c < S) {
      chan_bias[threadIdx.x] = p.bias != nullptr ? to_float(static_cast<const T*>(p.bias)[c]) : 0.f;
      chan_other[threadIdx.x] = load_other(p, c * p.o_sc);  // per channel, or the number
    }
  }  // read after the first tile's __syncthreads
  // image n's in rows r0.., 16 bytes of columns s0 + VEC j.. each, into buffer b (chunks
  // past the edge are left unset: no store reads them); one commit group an image
  const auto load = [&](int64_t n, int b) {
    const T* src = in + n * plane;
#pragma unroll
    for (int u = 0; u < kMoves; ++u) {
      const int i = threadIdx.x + u * kThreads, r = i / kChunks, j = i % kChunks;
      if (r0 + r < R && s0 + VEC * j < S)
        cp_async_16(smem_u32(&tile[b][r][VEC * chunk_at<VEC>(r, j)]),
                    src + static_cast<int64_t>(r0 + r) * S + s0 + VEC * j);
    }
    cp_async_commit();
  };
  if (blockIdx.z < images) load(blockIdx.z, 0);
  int b = 0;
  for (int64_t n = blockIdx.z; n < images; n += image_blocks, b ^= 1) {
    if (n + image_blocks < images) {
      load(n + image_blocks, b ^ 1);  // its buffer's stores ended at the last barrier
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    T* dst = out + n * plane;
    // out rows s0 + s, 16 bytes of columns r0 + VEC jj.. each: column s of VEC tile rows
#pragma unroll
    for (int u = 0; u < kMoves; ++u) {
      const int i = threadIdx.x + u * kThreads, s = i / kChunks, jj = i % kChunks;
      if (s0 + s >= S || r0 + VEC * jj >= R) continue;
      alignas(16) T e[VEC];
      float bias = 0.f, o = 0.f;
      if constexpr (EPI) bias = chan_bias[s], o = chan_other[s];
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const int r = VEC * jj + k;
        const T v = tile[b][r][VEC * chunk_at<VEC>(r, s / VEC) + s % VEC];
        if constexpr (EPI) e[k] = from_float<T>(fused_value(to_float(v), bias, o));
        else e[k] = v;
      }
      *reinterpret_cast<uint4*>(dst + static_cast<int64_t>(s0 + s) * R + r0 + VEC * jj) =
          *reinterpret_cast<const uint4*>(e);
    }
    __syncthreads();
  }
}

// The weights' copy alone: filter blockIdx.x. T: the element's bits.
template <typename T>
__global__ void __launch_bounds__(kThreads) filter_transpose_kernel(const FilterCopy filter) {
  copy_filter(static_cast<const T*>(filter.w), static_cast<T*>(filter.y), filter.C, filter.KHW, blockIdx.x);
}

template <typename T>
void launch_filter(const FilterCopy& filter, cudaStream_t stream) {
  filter_transpose_kernel<T><<<static_cast<unsigned>(filter.Cout), kThreads, 0, stream>>>(filter);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, bool EPI>
void launch_t(const ConvParams& p, const void* in, void* out, int R, int S, int64_t images,
              const FilterCopy& filter, cudaStream_t stream) {
  constexpr int64_t kMaxZ = 65535;
  const int64_t gx = (S + kTile - 1) / kTile, gy = (R + kTile - 1) / kTile;
  // two images a block where there are two: the second's reads beside the first's stores
  const int64_t image_blocks = std::min<int64_t>((images + 1) / 2, kMaxZ);
  // then the filters, one a block, where the grid has room for them
  const int64_t filter_blocks = (filter.Cout + gx * gy - 1) / (gx * gy);
  const bool joined = image_blocks + filter_blocks <= kMaxZ;
  const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy),
                  static_cast<unsigned>(image_blocks + (joined ? filter_blocks : 0)));
  transpose_kernel<T, EPI><<<grid, kThreads, 0, stream>>>(p, static_cast<const T*>(in), static_cast<T*>(out), R, S,
                                                          images, static_cast<unsigned>(image_blocks), filter);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!joined) launch_filter_to_nhwc(filter, sizeof(T), stream);
}

template <bool EPI>
void launch_any(const ConvParams& p, const void* in, void* out, int R, int S, int64_t images, int elem_bytes,
                bool bf16, const FilterCopy& filter, cudaStream_t stream) {
  dispatch_elem(elem_bytes, bf16, [&](auto e) {
    launch_t<typename decltype(e)::type, EPI>(p, in, out, R, S, images, filter, stream);
  });
}

}  // namespace

void launch_to_nhwc(const void* x, void* y, int C, int HW, int64_t images, int elem_bytes, bool bf16,
                    const FilterCopy& filter, cudaStream_t stream) {
  launch_any<false>(ConvParams{}, x, y, C, HW, images, elem_bytes, bf16, filter, stream);
}

void launch_epilogue_to_nchw(const ConvParams& p, int elem_bytes, bool bf16, cudaStream_t stream) {
  const int HW = p.OH * p.OW;
  launch_any<true>(p, p.x, p.out, HW, p.Cout, p.M / HW, elem_bytes, bf16, FilterCopy{}, stream);
}

void launch_filter_to_nhwc(const FilterCopy& filter, int elem_bytes, cudaStream_t stream) {
  if (elem_bytes == 4) {
    launch_filter<uint32_t>(filter, stream);
  } else {
    launch_filter<uint16_t>(filter, stream);
  }
}

}  // namespace fx_fuse
