// Instantiation of the fused kernel for Math::kBF16.
#include "api.h"
#include "launch.cuh"

namespace fx_fuse {

void launch_conv_bf16(const ConvParams& p, bool avec, int tile, cudaStream_t stream) {
  launch_conv<Math::kBF16>(p, avec, tile, stream);
}

}  // namespace fx_fuse
