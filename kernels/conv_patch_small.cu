// Instantiation of the patch kernel (Hopper) with 64-channel tiles, for layers of at most 64
// output channels: TF32, 3xTF32, fp16 and bf16, NCHW and channels-last.
#include "api.h"
#include "launch.cuh"

namespace fx_fuse {

void launch_patch_small(const ConvParams& p, Math math, bool channels_last, cudaStream_t stream) {
  if (channels_last) launch_patch_layout<true, kPatchBNSmall>(p, math, stream);
  else launch_patch_layout<false, kPatchBNSmall>(p, math, stream);
}

}  // namespace fx_fuse
