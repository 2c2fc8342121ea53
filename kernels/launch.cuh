// Host launch templates of the fused kernel (included by the small instantiation files,
// one per arithmetic, so that ninja compiles them in parallel).
#pragma once

#include <c10/cuda/CUDAException.h>

#include <cstdint>
#include <limits>

#include "api.h"
#include "conv_relu_add.cuh"
#include "patch_conv.cuh"
#include "tensor_map.h"

namespace fx_fuse {

template <Math MATH, bool AVEC, int BM, int BN, int WM, int WN, int MINB, bool WGMMA = false>
void launch_tile(const ConvParams& p, cudaStream_t stream) {
  constexpr int base = conv_smem_bytes<BM, BN>();
  constexpr int max_smem = base + kSmemTableEntries * 8;
  const int smem = base + (p.K_pad <= kSmemTableEntries ? p.K_pad * 8 : 0);
  TORCH_CHECK(BN != 128 || p.K_pad <= kSmemTableEntries,
              "fx_fuse::conv2d_relu_add: internal error: 128x128 tiles need K <= ",
              kSmemTableEntries);
  auto kernel = conv_relu_add_kernel<MATH, AVEC, BM, BN, WM, WN, MINB, WGMMA>;
  C10_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, max_smem));
  const int64_t m_tiles = (p.M + BM - 1) / BM;
  const int64_t n_tiles = (p.Cout + BN - 1) / BN;
  kernel<<<static_cast<unsigned>(m_tiles * n_tiles), WM * WN * 32, smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// wgmma keeps no fragments in registers: two CTAs per SM fit, except with the 16-bit
// element-wise gather (8 bytes of spills at 128 registers), which runs one.
template <Math MATH, bool AVEC>
constexpr int kWgmmaMinBlocks = (MATH == Math::kTF32 || AVEC) ? 2 : 1;

// Whether a kernel's sm_90a code (wgmma, Hopper only) is what this GPU loads for it.
inline bool sm90a_code_loaded(const void* kernel) {
  cudaFuncAttributes attr{};
  if (cudaFuncGetAttributes(&attr, kernel) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return attr.binaryVersion == 90;
}

template <Math MATH, bool AVEC>
bool wgmma_compiled() {
  return sm90a_code_loaded(reinterpret_cast<const void*>(
      conv_relu_add_kernel<MATH, AVEC, 128, 128, 8, 1, kWgmmaMinBlocks<MATH, AVEC>, true>));
}

template <Math MATH, bool AVEC, int MINB>
void launch_128x128(const ConvParams& p, bool wgmma, cudaStream_t stream) {
  if (wgmma && wgmma_compiled<MATH, AVEC>()) {
    launch_tile<MATH, AVEC, 128, 128, 8, 1, kWgmmaMinBlocks<MATH, AVEC>, true>(p, stream);
  } else {
    launch_tile<MATH, AVEC, 128, 128, 2, 4, MINB>(p, stream);
  }
}

// Two CTAs per SM (<= 128 registers) where that fits without spills; the 3xTF32 split
// and the 16-bit scalar gather need more registers, and run one CTA per SM.
template <Math MATH>
void launch_conv(const ConvParams& p, bool avec, int tile, cudaStream_t stream) {
  constexpr int kMinBlocks = MATH == Math::kTF32 ? 2 : 1;
  constexpr int kMinBlocksSmall = MATH == Math::kF32x3 ? 1 : 2;
  // 3xTF32 triples the MMAs and the fragment registers: 128x64 tiles only (128x128
  // needs 254 registers and spills).
  if (MATH != Math::kF32x3 && tile != kTile128x64) {
    if constexpr (MATH != Math::kF32x3) {
      const bool wgmma = tile == kTile128x128Wgmma;
      if (avec) launch_128x128<MATH, true, kMinBlocks>(p, wgmma, stream);
      else launch_128x128<MATH, false, kMinBlocks>(p, wgmma, stream);
    }
  } else {
    if (avec) launch_tile<MATH, true, 128, 64, 4, 2, kMinBlocksSmall>(p, stream);
    else launch_tile<MATH, false, 128, 64, 4, 2, kMinBlocksSmall>(p, stream);
  }
}

template <Math MATH>
bool patch_compiled() {
  return sm90a_code_loaded(
      reinterpret_cast<const void*>(conv_relu_add_patch_kernel<MATH, false, kPatchBN, false, false>));
}

// One persistent CTA per SM (or per tile, when there are fewer tiles); tiles of BN channels;
// ROWS: the output staged for the copy engine (patch_conv.cuh, stage_row_bytes); PLANES:
// A read by wgmma from the patch (patch_planes).
template <Math MATH, bool CL, int BN, bool ROWS, bool PLANES = false>
void launch_patch_t(const ConvParams& p, cudaStream_t stream) {
  constexpr int smem = patch_smem_bytes<MATH, BN, ROWS>();
  auto kernel = conv_relu_add_patch_kernel<MATH, CL, BN, ROWS, PLANES>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  const int sms = multiprocessors(device);
  const int64_t tiles = patch_tiles(p, BN);
  const int64_t grid = tiles < sms ? tiles : sms;
  TORCH_CHECK(grid > 0 && tiles <= std::numeric_limits<int32_t>::max(),
              "fx_fuse::conv2d_relu_add: internal error: ", tiles, " patch tiles on ", grid, " CTAs");
  constexpr int elem = sizeof(typename MathTraits<MATH>::T);
  const CUtensorMap x_map = patch_box_copy(CL, elem)                          ? channels_last_patch_map(p, elem)
                            : nchw_box_copy(ROWS, PLANES, elem, p.patch_pitch) ? nchw_patch_map(p, elem)
                                                                               : CUtensorMap{};
  const CUtensorMap y_map = CL ? channels_last_output_map(p, elem) : CUtensorMap{};
  kernel<<<static_cast<unsigned>(grid), kPatchThreads, smem, stream>>>(with_tile_walk(p, BN), x_map, y_map);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <bool CL, int BN>
void launch_patch_layout(const ConvParams& p, Math math, cudaStream_t stream) {
  switch (math) {
    case Math::kTF32: launch_patch_t<Math::kTF32, CL, BN, false>(p, stream); break;
    case Math::kF16: launch_patch_t<Math::kF16, CL, BN, false>(p, stream); break;
    case Math::kBF16: launch_patch_t<Math::kBF16, CL, BN, false>(p, stream); break;
    case Math::kF32x3: launch_patch_t<Math::kF32x3, CL, BN, false>(p, stream); break;
  }
}

template <typename T>
void launch_prep_t(const PrepParams& p, cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(p.Cout_pad) * p.K_pad + p.K_pad;
  const int threads = 256;
  const int64_t blocks = (total + threads - 1) / threads;
  conv_prep_kernel<T><<<static_cast<unsigned>(blocks < 4096 ? blocks : 4096), threads, 0,
                        stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace fx_fuse
