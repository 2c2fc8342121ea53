// Entry points of the instantiation files, called by the binding.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include "params.h"

namespace fx_fuse {

// The device's SM count (the persistent kernels run one wave of blocks), for host code.
inline int multiprocessors(int device) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms;
}

void launch_conv_tf32(const ConvParams& p, bool avec, int tile, cudaStream_t stream);
void launch_conv_f32x3(const ConvParams& p, bool avec, int tile, cudaStream_t stream);
void launch_conv_f16(const ConvParams& p, bool avec, int tile, cudaStream_t stream);
void launch_conv_bf16(const ConvParams& p, bool avec, int tile, cudaStream_t stream);
// The patch kernel (Hopper): whether its sm_90a code is loaded for this GPU, and its launch
// (TF32, 3xTF32, fp16 or bf16; NCHW or channels-last input; tiles of bn = kPatchBN or kPatchBNSmall
// output channels; stage_rows: NCHW output staged for the copy engine, binding.cpp
// stage_rows_pays).
bool patch_kernel_ready(Math math);
void launch_patch(const ConvParams& p, Math math, bool channels_last, int bn, bool stage_rows,
                  cudaStream_t stream);
// elem_bytes: 4 (fp32), 2 (fp16 / bf16: the same bits are copied)
void launch_prep(const PrepParams& p, int elem_bytes, cudaStream_t stream);
// The cuDNN path's epilogue: p.out = relu(p.x + bias) + other over a convolution output
// p.x of elem_bytes (4: fp32; 2: bf16 when `bf16`, else fp16), in NCHW or channels-last
// order; `vector`: the 16-byte kernel (p.x dense and written in place, `other` per channel
// or a number, 16-byte groups within one channel or pixel; checked by the binding).
void launch_epilogue(const ConvParams& p, int elem_bytes, bool bf16, bool channels_last,
                     bool vector, cudaStream_t stream);

// The weights' copy for cuDNN's NHWC kernels: w (Cout, C, KHW) dense -> y (Cout, KHW, C),
// C * KHW < 2^31; Cout = 0: none.
struct FilterCopy {
  const void* w = nullptr;
  void* y = nullptr;
  int C = 0, KHW = 0;
  int64_t Cout = 0;
};

// The cuDNN path's layout transposes (transpose.cu): x (images, C, HW) dense -> y (images,
// HW, C), with `filter` (of x's element type) copied by extra blocks of the same launch;
// and the epilogue pass from an NHWC y (p.x) to NCHW p.out, `other` per channel or a
// number. C, HW (and Cout, OH * OW) multiples of 16 / elem_bytes, the data 16-byte
// aligned.
void launch_to_nhwc(const void* x, void* y, int C, int HW, int64_t images, int elem_bytes, bool bf16,
                    const FilterCopy& filter, cudaStream_t stream);
void launch_epilogue_to_nchw(const ConvParams& p, int elem_bytes, bool bf16, cudaStream_t stream);
// The weights' copy alone, elements of 2 or 4 bytes.
void launch_filter_to_nhwc(const FilterCopy& filter, int elem_bytes, cudaStream_t stream);

// The depthwise kernel (depthwise.cu): p.out = relu(grouped conv2d(p.x, p.wprep) + bias) +
// other, NCHW input, the weights (Cout, d.cpg, KH, KW) contiguous; elem_bytes and bf16 as
// above.
void launch_depthwise(const ConvParams& p, const DepthwiseShape& d, int elem_bytes, bool bf16,
                      cudaStream_t stream);

// The channels-last depthwise kernel (depthwise_cl.cu): the same on channels-last input and
// output, one channel per group (the weights (C, 1, K, K) contiguous), in groups of 4
// channels: C and the strides multiples of 4, the data aligned to a group's bytes.
void launch_depthwise_cl(const ConvParams& p, const DepthwiseClShape& d, int elem_bytes, bool bf16,
                         cudaStream_t stream);

// The direct kernel (direct.cu): p.out = relu(grouped conv2d(p.x, p.wprep) + bias) + other
// for small convolutions, any strides, the weights (Cout, d.cpg, KH, KW) contiguous;
// elem_bytes and bf16 as above.
void launch_direct(const ConvParams& p, const DirectShape& d, int elem_bytes, bool bf16,
                   cudaStream_t stream);

}  // namespace fx_fuse
