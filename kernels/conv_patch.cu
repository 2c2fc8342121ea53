// Instantiation of the patch kernel (Hopper) for TF32, 3xTF32, fp16 and bf16, NCHW and
// channels-last, with 128-channel tiles (conv_patch_small.cu: 64-channel tiles;
// conv_patch_rows.cu: NCHW output staged for the copy engine; conv_patch_planes.cu: TF32
// NCHW whose A operand wgmma reads from the patch).
#include "api.h"
#include "launch.cuh"

namespace fx_fuse {

void launch_patch_small(const ConvParams& p, Math math, bool channels_last, cudaStream_t stream);
void launch_patch_rows(const ConvParams& p, Math math, cudaStream_t stream);
void launch_patch_planes(const ConvParams& p, bool stage_rows, cudaStream_t stream);

bool patch_kernel_ready(Math math) {
  switch (math) {
    case Math::kTF32: return patch_compiled<Math::kTF32>();
    case Math::kF16: return patch_compiled<Math::kF16>();
    case Math::kBF16: return patch_compiled<Math::kBF16>();
    case Math::kF32x3: return patch_compiled<Math::kF32x3>();
  }
  return false;
}

void launch_patch(const ConvParams& p, Math math, bool channels_last, int bn, bool stage_rows,
                  cudaStream_t stream) {
  if (patch_planes(math == Math::kTF32, channels_last, bn, p.tile_w, p.stride_w)) {
    launch_patch_planes(p, stage_rows, stream);
  } else if (stage_rows) {
    launch_patch_rows(p, math, stream);
  } else if (bn == kPatchBNSmall) {
    launch_patch_small(p, math, channels_last, stream);
  } else if (channels_last) {
    launch_patch_layout<true, kPatchBN>(p, math, stream);
  } else {
    launch_patch_layout<false, kPatchBN>(p, math, stream);
  }
}

}  // namespace fx_fuse
