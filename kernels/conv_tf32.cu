// Instantiation of the fused kernel for Math::kTF32.
#include "api.h"
#include "launch.cuh"

namespace fx_fuse {

void launch_conv_tf32(const ConvParams& p, bool avec, int tile, cudaStream_t stream) {
  launch_conv<Math::kTF32>(p, avec, tile, stream);
}

}  // namespace fx_fuse
