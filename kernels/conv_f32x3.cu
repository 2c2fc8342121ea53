// Instantiation of the fused kernel for Math::kF32x3.
#include "api.h"
#include "launch.cuh"

namespace fx_fuse {

void launch_conv_f32x3(const ConvParams& p, bool avec, int tile, cudaStream_t stream) {
  launch_conv<Math::kF32x3>(p, avec, tile, stream);
}

}  // namespace fx_fuse
