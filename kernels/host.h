// Host entry points shared by the Python binding (binding.cpp) and the op's dispatcher
// kernel (op.cpp). Arguments arrive validated by fx_fuse/ops.py (check_args).
#pragma once

#include <torch/extension.h>

#include <utility>
#include <vector>

namespace fx_fuse {

// A convolution's output extent: input extent `in`, padding on both sides, the dilated
// kernel's span (dilation * (k - 1) + 1).
inline int64_t output_extent(int64_t in, int64_t padding, int64_t span, int64_t stride) {
  return (in + 2 * padding - span) / stride + 1;
}

// Fills `out` (N, Cout, OH, OW), any strides, with relu(conv2d(x, weight) + bias) + other
// on the fused kernels. `other` is a tensor already expanded to out's shape (0 strides
// where it broadcasts) or absent, and then `other_scalar` is added. `hopper`: the wgmma
// kernels may run; `patch`: so may the patch kernel, where it applies.
void conv2d_relu_add_out(const at::Tensor& x, const at::Tensor& weight,
                         const c10::optional<at::Tensor>& bias,
                         const c10::optional<at::Tensor>& other, double other_scalar,
                         std::vector<int64_t> stride, std::vector<int64_t> padding,
                         std::vector<int64_t> dilation, bool allow_tf32, bool hopper,
                         bool patch, at::Tensor out);

// The cuDNN path's epilogue: fills `out` with relu(y + bias) + other, where y (N, Cout, OH,
// OW) is a convolution's output without its bias, any strides; `out` may be y. `bias` is
// contiguous; `other` as for conv2d_relu_add_out.
void relu_add_out(const at::Tensor& y, const c10::optional<at::Tensor>& bias,
                  const c10::optional<at::Tensor>& other, double other_scalar, at::Tensor out);

// `x` dense in the channels-last layout: an NCHW tensor by one tile transpose pass where it
// is dense, 16-byte aligned, and its channels and planes are multiples of 16 bytes;
// otherwise Tensor.contiguous.
at::Tensor to_channels_last(const at::Tensor& x);

// `x` by to_channels_last and the weights dense in the channels-last layout, in one launch
// where both take our copies (the same dtype and device; the weights dense CUDA filters of
// 2- or 4-byte elements); otherwise each by its own copy.
std::pair<at::Tensor, at::Tensor> operands_to_channels_last(const at::Tensor& x, const at::Tensor& weight);

// The depthwise kernel: fills `out` (N, Cout, OH, OW), any strides, with relu(conv2d(x,
// weight, groups) + bias) + other, for weight (groups x multiplier, C_in / groups, kH, kW)
// (groups = C_in / weight.size(1); 1 input channel per group: depthwise); `other` as above.
void depthwise_conv2d_relu_add_out(const at::Tensor& x, const at::Tensor& weight,
                                   const c10::optional<at::Tensor>& bias,
                                   const c10::optional<at::Tensor>& other, double other_scalar,
                                   std::vector<int64_t> stride, std::vector<int64_t> padding,
                                   std::vector<int64_t> dilation, at::Tensor out);

// The direct kernel, for small convolutions: the same as depthwise_conv2d_relu_add_out for
// any groups and layout.
void direct_conv2d_relu_add_out(const at::Tensor& x, const at::Tensor& weight,
                                const c10::optional<at::Tensor>& bias,
                                const c10::optional<at::Tensor>& other, double other_scalar,
                                std::vector<int64_t> stride, std::vector<int64_t> padding,
                                std::vector<int64_t> dilation, at::Tensor out);

// The op's CUDA kernel (op.cpp): what the dispatcher runs for CUDA tensors once
// register_op has been called.
at::Tensor conv2d_relu_add(const at::Tensor& input, const at::Tensor& weight,
                           const c10::optional<at::Tensor>& bias, const at::Tensor& other,
                           at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation, int64_t groups);

// Runs the op's arguments as `plan` (the planner's answer: path, input channels-last, output
// channels-last, hopper) says, without asking the planner or remembering anything: how the
// planner times the paths.
at::Tensor run_plan(const pybind11::tuple& plan, const at::Tensor& input, const at::Tensor& weight,
                    const c10::optional<at::Tensor>& bias, const at::Tensor& other,
                    std::vector<int64_t> stride, std::vector<int64_t> padding,
                    std::vector<int64_t> dilation, int64_t groups);

// Registers conv2d_relu_add as the op's CUDA kernel, and an AutogradCUDA kernel (once per
// process), with `planner`, the Python function that decides how a call signature runs,
// and `grads`, the Python backward formula; forgets the plans made so far.
void register_op(pybind11::object planner, pybind11::object grads);

// Forgets every remembered plan (after the size rules change, e.g. in tests).
void forget_plans();

}  // namespace fx_fuse
