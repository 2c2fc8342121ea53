// The patch kernel's channels-last input and output as TMA tensor maps (host side).
#pragma once

#include <cuda.h>

#include "params.h"

namespace fx_fuse {

// x (N, H, W, C in memory) for the copy engine: one box per unit, CPX channels (the channel
// block and the pixel's padding to kPatchPixelBytes) x patch_pitch columns x patch_rows rows
// of one image, landing as the patch slot's layout; zeros outside the image and past C_in.
CUtensorMap channels_last_patch_map(const ConvParams& p, int elem_bytes);
// x (N, C, H, W in memory) for the copy engine: one box per unit of a kernel whose patch
// lands as dense channel rows by one tensor copy (nchw_box_copy), patch_pitch columns x
// patch_rows rows x a channel block (128 bytes of channels) of one image.
CUtensorMap nchw_patch_map(const ConvParams& p, int elem_bytes);

// The output (N, OH, OW, C in memory) for the copy engine: boxes of 128 bytes of channels x
// the 64 pixels of an m-half of a tile (tile_w >= 64: 64 columns of one row; else 64 /
// tile_w rows), 128B-swizzled as the patch kernel stages them. The output's channels are
// dense and its pixel, row and image strides 16-byte multiples (make_plan).
CUtensorMap channels_last_output_map(const ConvParams& p, int elem_bytes);

}  // namespace fx_fuse
