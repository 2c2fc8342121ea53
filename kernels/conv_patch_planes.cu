// Instantiation of the patch kernel (Hopper) whose consumers read A by wgmma from the patch
// (PLANES; params.h, patch_planes): TF32 NCHW, 128-channel tiles, with or without staged
// rows.
#include "api.h"
#include "launch.cuh"

namespace fx_fuse {

void launch_patch_planes(const ConvParams& p, bool stage_rows, cudaStream_t stream) {
  if (stage_rows) launch_patch_t<Math::kTF32, false, kPatchBN, true, true>(p, stream);
  else launch_patch_t<Math::kTF32, false, kPatchBN, false, true>(p, stream);
}

}  // namespace fx_fuse
