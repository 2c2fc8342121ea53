// The patch kernel's fp32 input as a TMA tensor map (host side).
#pragma once

#include <cuda.h>

#include "params.h"

namespace fx_fuse {

// x for the copy engine, one box per copy, landing as the patch slot's layout (zeros
// outside the image and past C_in). Channels-last: one box per unit, CPX channels (the
// channel block and the pixel's padding to kPatchPixelBytes) x patch_pitch columns x
// patch_rows rows of one image; NCHW: one box per channel plane of a unit, patch_pitch
// columns x patch_rows rows.
CUtensorMap patch_map(const ConvParams& p, int elem_bytes, bool channels_last);

}  // namespace fx_fuse
