// The epilogue pass of the cuDNN path (fx_fuse/_cuda.py picks it for problems the fused
// kernels run slower than cuDNN): out = relu(y) + other over a convolution's output y,
// whose bias the convolution has already added. One element per thread, in NCHW or
// channels-last order (y's memory order, so that dense tensors are read and written
// coalesced); any strides are correct.
#include <c10/cuda/CUDAException.h>

#include "api.h"
#include "conv_relu_add.cuh"

namespace fx_fuse {
namespace {

// Division by a fixed divisor d in [1, 2^31) of numbers below 2^31 with a multiply-high and
// a shift (the divisor's magic number computed on the host).
struct FastDiv {
  uint32_t d, magic, shift;
  explicit FastDiv(uint32_t divisor) : d(divisor), shift(0) {
    while (shift < 32 && (1ull << shift) < divisor) ++shift;
    magic = static_cast<uint32_t>(((1ull << 32) * ((1ull << shift) - divisor)) / divisor + 1);
  }
  __device__ __forceinline__ uint32_t div(uint32_t n) const {
    return (__umulhi(n, magic) + n) >> shift;
  }
};

// The pass's sizes: per image, Cout channels of plane = OH * OW pixels (< 2^31 elements).
struct EpilogueShape {
  FastDiv plane, ow, cout;
  uint32_t per_image;
  int64_t images;
};

// p.x: y (N, Cout, OH, OW) with strides x_s*; p.out with strides y_s* (may be y itself:
// each element is read and written by one thread); p.other as in the fused kernels.
// blockIdx.y walks the images, x the elements of one image in NCHW or channels-last order.
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
        pixel = s.cout.div(r);
        c = r - pixel * s.cout.d;
      } else {
        c = s.plane.div(r);
        pixel = r - c * s.plane.d;
      }
      const uint32_t h = s.ow.div(pixel), w = pixel - h * s.ow.d;
      const float v = to_float(y[n * p.x_sn + c * p.x_sc + h * p.x_sh + w * p.x_sw]);
      const float o = load_other(p, n * p.o_sn + c * p.o_sc + h * p.o_sh + w * p.o_sw);
      out[n * p.y_sn + c * p.y_sc + h * p.y_sh + w * p.y_sw] = from_float<T>(fused_value(v, 0.f, o));
    }
  }
}

template <typename T>
void launch_epilogue_t(const ConvParams& p, bool channels_last, cudaStream_t stream) {
  const uint32_t plane = static_cast<uint32_t>(p.OH) * p.OW;
  const EpilogueShape s{FastDiv(plane), FastDiv(p.OW), FastDiv(p.Cout), plane * p.Cout,
                        p.M / plane};
  const int threads = 256;
  const int64_t x_blocks = (s.per_image + threads - 1) / threads;
  const dim3 grid(static_cast<unsigned>(x_blocks < 4096 ? x_blocks : 4096),
                  static_cast<unsigned>(s.images < 65535 ? s.images : 65535));
  conv_epilogue_kernel<T><<<grid, threads, 0, stream>>>(p, s, channels_last);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void launch_relu_add(const ConvParams& p, int elem_bytes, bool bf16, bool channels_last,
                     cudaStream_t stream) {
  if (elem_bytes == 4) launch_epilogue_t<float>(p, channels_last, stream);
  else if (bf16) launch_epilogue_t<__nv_bfloat16>(p, channels_last, stream);
  else launch_epilogue_t<__half>(p, channels_last, stream);
}

}  // namespace fx_fuse
