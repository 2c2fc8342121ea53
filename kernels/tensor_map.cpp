// The patch kernel's fp32 input as a TMA tensor map, encoded through the driver's
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

CUtensorMap patch_map(const ConvParams& p, int elem_bytes, bool channels_last) {
  const auto e = static_cast<cuuint64_t>(elem_bytes);
  const auto d = [](int64_t v) { return static_cast<cuuint64_t>(v); };
  const auto b = [](int v) { return static_cast<cuuint32_t>(v); };
  const int64_t images = p.M / (static_cast<int64_t>(p.OH) * p.OW);
  // Innermost first. Channels-last: (C, W, H, N), the box a pixel's kPatchPixelBytes x
  // patch_pitch columns x patch_rows rows; NCHW: (W, H, C, N), the box patch_pitch columns
  // x patch_rows rows of one channel plane. Strides in bytes, of the outer three dimensions.
  const cuuint64_t cl_dims[4] = {d(p.Cin), d(p.W), d(p.H), d(images)};
  const cuuint64_t cl_strides[3] = {d(p.x_sw) * e, d(p.x_sh) * e, d(p.x_sn) * e};
  const cuuint32_t cl_box[4] = {b(kPatchPixelBytes / elem_bytes), b(p.patch_pitch), b(p.patch_rows), 1};
  const cuuint64_t nchw_dims[4] = {d(p.W), d(p.H), d(p.Cin), d(images)};
  const cuuint64_t nchw_strides[3] = {d(p.x_sh) * e, d(p.x_sc) * e, d(p.x_sn) * e};
  const cuuint32_t nchw_box[4] = {b(p.patch_pitch), b(p.patch_rows), 1, 1};
  const cuuint32_t unit[4] = {1, 1, 1, 1};
  CUtensorMap map{};
  const CUresult r = encode_tiled()(
      &map, elem_bytes == 4 ? CU_TENSOR_MAP_DATA_TYPE_UINT32 : CU_TENSOR_MAP_DATA_TYPE_UINT16, 4,
      const_cast<void*>(p.x), channels_last ? cl_dims : nchw_dims,
      channels_last ? cl_strides : nchw_strides, channels_last ? cl_box : nchw_box, unit,
      CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  TORCH_CHECK(r == CUDA_SUCCESS, "fx_fuse::conv2d_relu_add: internal error: cuTensorMapEncodeTiled ",
              "failed (", static_cast<int>(r), ") for the ", channels_last ? "channels-last" : "NCHW",
              " patch of ", p.patch_rows, " x ", p.patch_pitch, " pixels");
  return map;
}

}  // namespace fx_fuse
