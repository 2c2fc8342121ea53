// Weight preparation and K-table kernel.
#include "api.h"
#include "launch.cuh"

namespace fx_fuse {

void launch_prep(const PrepParams& p, int elem_bytes, cudaStream_t stream) {
  if (elem_bytes == 4) launch_prep_t<float>(p, stream);
  else launch_prep_t<__half>(p, stream);
}

}  // namespace fx_fuse
