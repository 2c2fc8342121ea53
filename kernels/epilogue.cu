// The epilogue pass of the cuDNN path (fx_fuse/_cuda.py picks it for problems the fused
// kernels run slower than cuDNN): out = relu(y + bias) + other over a convolution's output
// y. Two kernels: the general one, one element per thread in NCHW or channels-last order
// (y's memory order, so that dense tensors are read and written coalesced), any strides;
// and the vector one, 16 bytes per thread, for a dense y written in place with `other` per
// channel or a number.
#include <c10/cuda/CUDAException.h>

#include "api.h"
#include "conv_relu_add.cuh"

namespace fx_fuse {
namespace {

// The pass's sizes: per image, Cout channels of plane = OH * OW pixels (< 2^31 elements),
// the divisors by FastDiv (params.h).
struct EpilogueShape {
  FastDiv plane, ow, cout;
  uint32_t per_image;
  int64_t images;
};

// p.x: y (N, Cout, OH, OW) with strides x_s*; p.out with strides y_s* (may be y itself:
// each element is read and written by one thread); p.bias ([Cout] or null) and p.other as
// in the fused kernels. blockIdx.y walks the images, x the elements of one image in NCHW
// or channels-last order.
template <typename T>
__global__ void conv_epilogue_kernel(const ConvParams p, const EpilogueShape s,
                                     bool channels_last) {
  const T* y = static_cast<const T*>(p.x);
  T* out = static_cast<T*>(p.out);
  for (int64_t n = blockIdx.y; n < s.images; n += gridDim.y) {
    for (uint32_t r = blockIdx.x * blockDim.x + threadIdx.x; r < s.per_image;
         r += gridDim.x * blockDim.x) {
      uint32_t c, pixel;
      if (channels_last) {
        const QuotRem pc = divmod(r, s.cout);
        pixel = pc.q;
        c = pc.r;
      } else {
        const QuotRem cp = divmod(r, s.plane);
        c = cp.q;
        pixel = cp.r;
      }
      const QuotRem hw = divmod(pixel, s.ow);
      const uint32_t h = hw.q, w = hw.r;
      const float v = to_float(y[n * p.x_sn + c * p.x_sc + h * p.x_sh + w * p.x_sw]);
      const float o = load_other(p, n * p.o_sn + c * p.o_sc + h * p.o_sh + w * p.o_sw);
      out[n * p.y_sn + c * p.y_sc + h * p.y_sh + w * p.y_sw] =
          from_float<T>(fused_value(v, channel_bias<T>(p, c), o));
    }
  }
}

// The vector pass over a dense y (NCHW or channels-last), in place: group g holds the
// 16 / sizeof(T) elements from g * VEC on, all of one channel (NCHW: OH * OW is a multiple
// of VEC; `per_channel` divides by the groups per plane) or of VEC channels of one pixel
// (channels-last: Cout is a multiple of VEC; `per_channel` divides by the groups per pixel).
// `other` is per channel (o_sc) or a number.
template <typename T, bool CL>
__global__ void conv_epilogue_vec_kernel(const ConvParams p, const FastDiv per_channel,
                                         const FastDiv cout, uint32_t groups) {
  constexpr int VEC = 16 / sizeof(T);
  uint4* y = static_cast<uint4*>(p.out);
  for (uint32_t g = blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += gridDim.x * blockDim.x) {
    uint4 v = y[g];
    T* e = reinterpret_cast<T*>(&v);
    const QuotRem q = divmod(g, per_channel);
    if constexpr (CL) {
      const int c0 = static_cast<int>(q.r) * VEC;
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const int c = c0 + i;
        e[i] = from_float<T>(fused_value(to_float(e[i]), channel_bias<T>(p, c), load_other(p, c * p.o_sc)));
      }
    } else {
      const int c = static_cast<int>(divmod(q.q, cout).r);
      const float b = channel_bias<T>(p, c), o = load_other(p, c * p.o_sc);
#pragma unroll
      for (int i = 0; i < VEC; ++i) e[i] = from_float<T>(fused_value(to_float(e[i]), b, o));
    }
    y[g] = v;
  }
}

template <typename T>
void launch_epilogue_t(const ConvParams& p, bool channels_last, bool vector, cudaStream_t stream) {
  const uint32_t plane = static_cast<uint32_t>(p.OH) * p.OW;
  const int threads = 256;
  if (vector) {
    constexpr int VEC = 16 / sizeof(T);
    const uint32_t groups = static_cast<uint32_t>(p.M * p.Cout / VEC);
    const FastDiv per_channel = fast_div(channels_last ? p.Cout / VEC : plane / VEC);
    const uint32_t blocks = (groups + threads - 1) / threads;
    const unsigned grid = blocks < 8192 ? blocks : 8192;
    if (channels_last) {
      conv_epilogue_vec_kernel<T, true><<<grid, threads, 0, stream>>>(p, per_channel, fast_div(p.Cout), groups);
    } else {
      conv_epilogue_vec_kernel<T, false><<<grid, threads, 0, stream>>>(p, per_channel, fast_div(p.Cout), groups);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  const EpilogueShape s{fast_div(plane), fast_div(p.OW), fast_div(p.Cout), plane * p.Cout,
                        p.M / plane};
  const int64_t x_blocks = (s.per_image + threads - 1) / threads;
  const dim3 grid(static_cast<unsigned>(x_blocks < 4096 ? x_blocks : 4096),
                  static_cast<unsigned>(s.images < 65535 ? s.images : 65535));
  conv_epilogue_kernel<T><<<grid, threads, 0, stream>>>(p, s, channels_last);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void launch_epilogue(const ConvParams& p, int elem_bytes, bool bf16, bool channels_last,
                     bool vector, cudaStream_t stream) {
  dispatch_elem(elem_bytes, bf16, [&](auto e) {
    launch_epilogue_t<typename decltype(e)::type>(p, channels_last, vector, stream);
  });
}

}  // namespace fx_fuse
