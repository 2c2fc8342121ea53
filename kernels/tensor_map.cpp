// The patch kernel's channels-last input as a TMA tensor map, encoded through the driver's
// entry point (no link against libcuda).
#include "tensor_map.h"

#include <c10/util/Exception.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

namespace fx_fuse {
namespace {

PFN_cuTensorMapEncodeTiled_v12000 encode_tiled() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
#if CUDART_VERSION >= 12050
    cudaDriverEntryPointQueryResult status{};
    const bool ok = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000,
                                                     cudaEnableDefault, &status) == cudaSuccess &&
                    status == cudaDriverEntryPointSuccess;
#else
    const bool ok = cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &f, cudaEnableDefault) == cudaSuccess;
#endif
    TORCH_CHECK(ok && f != nullptr,
                "fx_fuse::conv2d_relu_add: the CUDA driver has no cuTensorMapEncodeTiled");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

}  // namespace

CUtensorMap channels_last_patch_map(const ConvParams& p, int elem_bytes) {
  const auto e = static_cast<cuuint64_t>(elem_bytes);
  const cuuint64_t images = static_cast<cuuint64_t>(p.M / (static_cast<int64_t>(p.OH) * p.OW));
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(p.Cin), static_cast<cuuint64_t>(p.W),
                              static_cast<cuuint64_t>(p.H), images};
  // bytes between pixels, rows and images (the channels are dense)
  const cuuint64_t strides[3] = {p.x_sw * e, p.x_sh * e, p.x_sn * e};
  const cuuint32_t box[4] = {static_cast<cuuint32_t>(kPatchPixelBytes / elem_bytes),
                             static_cast<cuuint32_t>(p.patch_pitch),
                             static_cast<cuuint32_t>(p.patch_rows), 1};
  const cuuint32_t unit[4] = {1, 1, 1, 1};
  CUtensorMap map{};
  const CUresult r = encode_tiled()(
      &map, elem_bytes == 4 ? CU_TENSOR_MAP_DATA_TYPE_UINT32 : CU_TENSOR_MAP_DATA_TYPE_UINT16, 4,
      const_cast<void*>(p.x), dims, strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE,
      CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  TORCH_CHECK(r == CUDA_SUCCESS, "fx_fuse::conv2d_relu_add: internal error: cuTensorMapEncodeTiled ",
              "failed (", static_cast<int>(r), ") for the channels-last patch of ", p.patch_rows,
              " x ", p.patch_pitch, " pixels");
  return map;
}

}  // namespace fx_fuse
