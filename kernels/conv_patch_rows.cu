// Instantiation of the patch kernel (Hopper) whose NCHW output leaves through the copy
// engine (ROWS: 128-channel tiles of whole output rows; binding.cpp, stage_rows_pays):
// fp16 and bf16 (the whole tile), TF32 (its first 72 channels).
#include "api.h"
#include "launch.cuh"

namespace fx_fuse {

void launch_patch_rows(const ConvParams& p, Math math, cudaStream_t stream) {
  switch (math) {
    case Math::kTF32: launch_patch_t<Math::kTF32, false, kPatchBN, true>(p, stream); break;
    case Math::kF16: launch_patch_t<Math::kF16, false, kPatchBN, true>(p, stream); break;
    case Math::kBF16: launch_patch_t<Math::kBF16, false, kPatchBN, true>(p, stream); break;
    default: TORCH_CHECK(false, "fx_fuse::conv2d_relu_add: internal error: staged rows for 3xTF32");
  }
}

}  // namespace fx_fuse
