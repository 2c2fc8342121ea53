// The patch kernel's channels-last input and output as TMA tensor maps, encoded through the
// driver's entry point (no link against libcuda).
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

// A 4-D tensor map of 32- or 16-bit elements over `data`; `what` names it in the error.
CUtensorMap encode_4d(void* data, int elem_bytes, const cuuint64_t (&dims)[4], const cuuint64_t (&strides)[3],
                      const cuuint32_t (&box)[4], CUtensorMapSwizzle swizzle, const char* what) {
  const cuuint32_t unit[4] = {1, 1, 1, 1};
  CUtensorMap map{};
  const CUresult r = encode_tiled()(
      &map, elem_bytes == 4 ? CU_TENSOR_MAP_DATA_TYPE_UINT32 : CU_TENSOR_MAP_DATA_TYPE_UINT16, 4, data,
      dims, strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
      CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  TORCH_CHECK(r == CUDA_SUCCESS, "fx_fuse::conv2d_relu_add: internal error: cuTensorMapEncodeTiled ",
              "failed (", static_cast<int>(r), ") for ", what, " (box ", box[0], " x ", box[1], " x ",
              box[2], ")");
  return map;
}

}  // namespace

CUtensorMap channels_last_patch_map(const ConvParams& p, int elem_bytes) {
  const auto e = static_cast<cuuint64_t>(elem_bytes);
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(p.Cin), static_cast<cuuint64_t>(p.W),
                              static_cast<cuuint64_t>(p.H), static_cast<cuuint64_t>(images(p))};
  // bytes between pixels, rows and images (the channels are dense)
  const cuuint64_t strides[3] = {p.x_sw * e, p.x_sh * e, p.x_sn * e};
  const cuuint32_t box[4] = {static_cast<cuuint32_t>(kPatchPixelBytes / elem_bytes),
                             static_cast<cuuint32_t>(p.patch_pitch),
                             static_cast<cuuint32_t>(p.patch_rows), 1};
  return encode_4d(const_cast<void*>(p.x), elem_bytes, dims, strides, box, CU_TENSOR_MAP_SWIZZLE_NONE,
                   "the channels-last patch");
}

CUtensorMap nchw_patch_map(const ConvParams& p, int elem_bytes) {
  const auto e = static_cast<cuuint64_t>(elem_bytes);
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(p.W), static_cast<cuuint64_t>(p.H),
                              static_cast<cuuint64_t>(p.Cin), static_cast<cuuint64_t>(images(p))};
  // bytes between rows, channels and images (the rows are dense)
  const cuuint64_t strides[3] = {p.x_sh * e, p.x_sc * e, p.x_sn * e};
  const cuuint32_t box[4] = {static_cast<cuuint32_t>(p.patch_pitch), static_cast<cuuint32_t>(p.patch_rows),
                             static_cast<cuuint32_t>(kSliceBytes / elem_bytes), 1};
  return encode_4d(const_cast<void*>(p.x), elem_bytes, dims, strides, box, CU_TENSOR_MAP_SWIZZLE_NONE,
                   "the NCHW patch");
}

CUtensorMap channels_last_output_map(const ConvParams& p, int elem_bytes) {
  const auto e = static_cast<cuuint64_t>(elem_bytes);
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(p.Cout), static_cast<cuuint64_t>(p.OW),
                              static_cast<cuuint64_t>(p.OH), static_cast<cuuint64_t>(images(p))};
  const cuuint64_t strides[3] = {static_cast<cuuint64_t>(p.y_sw) * e, static_cast<cuuint64_t>(p.y_sh) * e,
                                 static_cast<cuuint64_t>(p.y_sn) * e};
  // the 64 pixels of an m-half: part of one tile row, or 64 / tile_w whole rows
  const int w = p.tile_w < 64 ? p.tile_w : 64;
  const cuuint32_t box[4] = {static_cast<cuuint32_t>(kSliceBytes / elem_bytes), static_cast<cuuint32_t>(w),
                             static_cast<cuuint32_t>(64 / w), 1};
  return encode_4d(p.out, elem_bytes, dims, strides, box, CU_TENSOR_MAP_SWIZZLE_128B,
                   "the channels-last output");
}

}  // namespace fx_fuse
