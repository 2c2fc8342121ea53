// The patch kernel's channels-last fp32 input as a TMA tensor map (host side).
#pragma once

#include <cuda.h>

#include "params.h"

namespace fx_fuse {

// x (N, H, W, C in memory) for the copy engine: one box per unit, CPX channels (the channel
// block and the pixel's padding to kPatchPixelBytes) x patch_pitch columns x patch_rows rows
// of one image, landing as the patch slot's layout; zeros outside the image and past C_in.
CUtensorMap channels_last_patch_map(const ConvParams& p, int elem_bytes);

}  // namespace fx_fuse
