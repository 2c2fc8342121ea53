// Instantiation of the patch kernel (Hopper) for TF32, fp16 and bf16, NCHW and channels-last.
#include "api.h"
#include "launch.cuh"

namespace fx_fuse {

bool patch_kernel_ready(Math math) {
  switch (math) {
    case Math::kTF32: return patch_compiled<Math::kTF32>();
    case Math::kF16: return patch_compiled<Math::kF16>();
    case Math::kBF16: return patch_compiled<Math::kBF16>();
    default: return false;
  }
}

template <bool CL>
void launch_patch_layout(const ConvParams& p, Math math, cudaStream_t stream) {
  switch (math) {
    case Math::kTF32: launch_patch_t<Math::kTF32, CL>(p, stream); break;
    case Math::kF16: launch_patch_t<Math::kF16, CL>(p, stream); break;
    case Math::kBF16: launch_patch_t<Math::kBF16, CL>(p, stream); break;
    default: TORCH_CHECK(false, "fx_fuse::conv2d_relu_add: internal error: no patch kernel for 3xTF32");
  }
}

void launch_patch(const ConvParams& p, Math math, bool channels_last, cudaStream_t stream) {
  if (channels_last) launch_patch_layout<true>(p, math, stream);
  else launch_patch_layout<false>(p, math, stream);
}

}  // namespace fx_fuse
