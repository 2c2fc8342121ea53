// Host side of the fused kernels and the Python binding: prepares the kernels' parameters
// from tensors and launches them on the current stream. Shapes and dtypes were validated
// by fx_fuse/ops.py (check_args) and the cases the kernels do not cover were routed to the
// reference by fx_fuse/_cuda.py; the checks here guard the kernels' own assumptions.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>

#include "api.h"
#include "host.h"

namespace fx_fuse {
namespace {

constexpr const char* kOp = "fx_fuse::conv2d_relu_add";

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Whether x is read channels-last: channels innermost (as fx_fuse/_cuda.py decides).
bool channels_innermost(const at::Tensor& x) { return x.size(1) > 1 && x.stride(1) == 1; }

int other_kind(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return kOtherF32;
    case at::kHalf: return kOtherF16;
    case at::kBFloat16: return kOtherBF16;
    case at::kDouble: return kOtherF64;
    default: TORCH_CHECK(false, kOp, ": unsupported dtype of `other` in the kernel: ", t);
  }
}

Math math_of(at::ScalarType dtype, bool allow_tf32) {
  switch (dtype) {
    case at::kFloat: return allow_tf32 ? Math::kTF32 : Math::kF32x3;
    case at::kHalf: return Math::kF16;
    case at::kBFloat16: return Math::kBF16;
    default: TORCH_CHECK(false, kOp, ": the kernel does not handle dtype ", dtype);
  }
}

// Whether the copy engine can write `out` (channels innermost): dense channels, 16-byte
// aligned, and pixel, row and image strides in 16-byte multiples.
bool copy_engine_output(const at::Tensor& out, int elem) {
  auto ok = [&](int64_t stride) { return stride * elem % 16 == 0 && stride * elem < (int64_t{1} << 40); };
  return out.stride(1) == 1 && aligned16(out.data_ptr()) && ok(out.stride(0)) && ok(out.stride(2)) &&
         ok(out.stride(3));
}

// Which kernel runs a convolution, and how its K dimension is ordered.
struct Plan {
  int tile;        // TileConfig
  bool avec;       // channels-last 16-byte gathers (the K-table kernels)
  int k_order;     // KOrder
  // kTilePatch only: the input layout, the tile (tile_h x tile_w pixels x patch_bn
  // channels) and the patch (NCHW: patch_chunks 16-byte chunks per row; channels-last:
  // patch_cols pixels per row).
  bool patch_cl = false;
  int tile_h = 0, tile_w = 0, patch_bn = 0, patch_rows = 0, patch_chunks = 0, patch_cols = 0;
};

// The patch kernel's tile: the widest power-of-two row width up to 128 that covers the
// output row (tile_h = kPatchBM / tile_w rows), narrowed until the input patch fits a
// slot. False when none fits.
bool patch_geometry(int64_t OW, int64_t KH, int64_t KW, const std::vector<int64_t>& stride,
                    const std::vector<int64_t>& dilation, int elem, bool channels_last, Plan& plan) {
  const int vec = 16 / elem;
  int tw = 8;
  while (tw < 128 && tw < OW) tw *= 2;
  for (; tw >= 8; tw /= 2) {
    const int64_t th = kPatchBM / tw;
    const int64_t rows = (th - 1) * stride[0] + dilation[0] * (KH - 1) + 1;
    const int64_t cols = (tw - 1) * stride[1] + dilation[1] * (KW - 1) + 1;
    // NCHW rows start at the 16-byte chunk below the window: up to vec - 1 more columns.
    const int64_t chunks = (cols + vec - 1 + vec - 1) / vec;
    const bool fits = channels_last ? rows * cols * kPatchPixelBytes <= kPatchSlotBytes &&
                                          (!patch_box_copy(true, elem) || cols <= kPatchBoxMaxPixels)
                                    : rows * chunks * vec <= kPatchChannelPitch;
    if (fits) {
      plan.tile_h = static_cast<int>(th);
      plan.tile_w = tw;
      plan.patch_rows = static_cast<int>(rows);
      plan.patch_chunks = static_cast<int>(channels_last ? cols * 8 : chunks);
      plan.patch_cols = static_cast<int>(channels_last ? cols : chunks * vec);
      return true;
    }
  }
  return false;
}

// The patch kernel takes NCHW or channels-last input whose 16-byte chunks (of a row, or of
// a pixel's channels) are aligned and whole, kernels of at least three taps (a patch is
// copied one channel block ahead: at least three slices of lead) and at least half a
// channel block of input channels.
bool patch_input_ok(const at::Tensor& x, int64_t KH, int64_t KW, int elem, bool channels_last) {
  const int vec = 16 / elem;
  const int64_t inner = channels_last ? x.size(1) : x.size(3);
  const bool dense_inner = channels_last ? x.stride(1) == 1 : x.stride(3) == 1;
  return dense_inner && aligned16(x.data_ptr()) && inner % vec == 0 && x.stride(0) % vec == 0 &&
         (channels_last ? x.stride(2) % vec == 0 && x.stride(3) % vec == 0
                        : x.stride(2) % vec == 0 && x.stride(1) % vec == 0) &&
         KH * KW >= 3 && x.size(1) * elem * 2 >= kSliceBytes;
}

Plan make_plan(const at::Tensor& x, const at::Tensor& weight, int64_t OW,
               const std::vector<int64_t>& stride, const std::vector<int64_t>& dilation,
               Math math, bool hopper, bool patch) {
  const int64_t C = x.size(1), Cout = weight.size(0), KH = weight.size(2), KW = weight.size(3);
  const int elem = static_cast<int>(x.element_size());
  const int vec = 16 / elem;
  Plan plan{};
  const bool cin_inner = channels_innermost(x);  // channels-last input
  // channels-last output goes through the copy engine: rows of Cout channels (of the dense
  // output the op allocates) in 16-byte multiples
  const bool out_ok = !cin_inner || Cout * elem % 16 == 0;
  if (hopper && patch && out_ok && patch_input_ok(x, KH, KW, elem, cin_inner) &&
      patch_geometry(OW, KH, KW, stride, dilation, elem, cin_inner, plan) && patch_kernel_ready(math)) {
    plan.tile = kTilePatch;
    plan.avec = false;
    plan.k_order = kOrderBlocked;
    plan.patch_cl = cin_inner;
    plan.patch_bn = Cout <= kPatchBNSmall ? kPatchBNSmall : kPatchBN;
    return plan;
  }
  // K order: channels innermost when the input is channels-last, so that one 16-byte chunk
  // of K is contiguous in memory.
  plan.k_order = cin_inner ? kOrderHWC : kOrderCHW;
  plan.avec = cin_inner && C % vec == 0 && aligned16(x.data_ptr()) && x.stride(3) % vec == 0 &&
              x.stride(2) % vec == 0 && x.stride(0) % vec == 0;
  const int64_t K_pad_max = (C * KH * KW + 63) / 64 * 64;
  plan.tile = (Cout <= 64 || math == Math::kF32x3 || K_pad_max > kSmemTableEntries) ? kTile128x64
              : hopper                                                             ? kTile128x128Wgmma
                                                                                   : kTile128x128;
  return plan;
}

// `other`, already expanded to out's shape (0 strides where it broadcasts), or absent: then
// `other_scalar` is added.
void set_other(ConvParams& p, const c10::optional<at::Tensor>& other, double other_scalar,
               const at::Tensor& out) {
  if (other.has_value() && other->defined()) {
    const auto& o = *other;
    TORCH_CHECK(o.dim() == 4 && o.device() == out.device(), kOp,
                ": expected `other` expanded to the 4-D output on its device");
    p.other = o.data_ptr();
    p.other_kind = other_kind(o.scalar_type());
    p.o_sn = o.stride(0);
    p.o_sc = o.stride(1);
    p.o_sh = o.stride(2);
    p.o_sw = o.stride(3);
  } else {
    p.other = nullptr;
    p.other_kind = kOtherScalar;
  }
  p.other_scalar = static_cast<float>(other_scalar);
}

// The convolution's geometry: input x (N, C_in, H, W) with its strides, weight (C_out,
// C_in / groups, KH, KW), out (N, C_out, OH, OW).
void set_geometry(ConvParams& p, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& out,
                  const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
                  const std::vector<int64_t>& dilation) {
  const int64_t KH = weight.size(2), KW = weight.size(3);
  p.x = x.data_ptr();
  p.M = out.size(0) * out.size(2) * out.size(3);
  p.Cout = static_cast<int>(weight.size(0));
  p.Cin = static_cast<int>(x.size(1));
  p.H = static_cast<int>(x.size(2));
  p.W = static_cast<int>(x.size(3));
  p.OH = static_cast<int>(out.size(2));
  p.OW = static_cast<int>(out.size(3));
  p.stride_h = static_cast<int>(stride[0]);
  p.stride_w = static_cast<int>(stride[1]);
  p.pad_h = static_cast<int>(padding[0]);
  p.pad_w = static_cast<int>(padding[1]);
  p.dil_h = static_cast<int>(dilation[0]);
  p.dil_w = static_cast<int>(dilation[1]);
  p.span_h = static_cast<int>(dilation[0] * (KH - 1) + 1);
  p.span_w = static_cast<int>(dilation[1] * (KW - 1) + 1);
  p.KW = static_cast<int>(KW);
  p.taps = static_cast<int>(KH * KW);
  p.x_sn = x.stride(0);
  p.x_sc = x.stride(1);
  p.x_sh = x.stride(2);
  p.x_sw = x.stride(3);
}

void set_output(ConvParams& p, const at::Tensor& out) {
  p.out = out.data_ptr();
  p.y_sn = out.stride(0);
  p.y_sc = out.stride(1);
  p.y_sh = out.stride(2);
  p.y_sw = out.stride(3);
}

// The parameters every convolution kernel reads: geometry, bias, `other` and output; the
// caller adds its kernel's own (weights, tiles).
ConvParams conv_params(const at::Tensor& x, const at::Tensor& weight,
                       const c10::optional<at::Tensor>& bias,
                       const c10::optional<at::Tensor>& other, double other_scalar,
                       const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
                       const std::vector<int64_t>& dilation, const at::Tensor& out) {
  ConvParams p{};
  set_geometry(p, x, weight, out, stride, padding, dilation);
  p.bias = bias.has_value() && bias->defined() ? bias->data_ptr() : nullptr;
  set_other(p, other, other_scalar, out);
  set_output(p, out);
  return p;
}

// Whether the NCHW patch kernel stages its output for the copy engine (its ROWS
// instantiation, patch_conv.cuh; docs/performance.md, v46e-v46f and v48): where its
// 128-channel tiles span whole, dense output rows (a channel's share of a tile is one
// contiguous run: one bulk copy) and every CTA walks two tiles or more (a staged tile is
// written out beside the next one; the last is written out after the loop, beside
// nothing). 16-bit: where one channel block feeds a tile (the producer then has a whole
// tile's mainloop to have a staged tile written out before the slot's next copy; with
// several it measured slower than direct stores). TF32 (its first 72 channels staged):
// where the output rows are not whole 32-byte sectors, whose direct stores then cost two
// sectors a warp; on whole sectors staging measured slower. 3xTF32 stores directly.
bool stage_rows_pays(const Plan& plan, const ConvParams& p, Math math, c10::DeviceIndex device) {
  if (plan.tile != kTilePatch || plan.patch_cl || plan.patch_bn != kPatchBN || p.tiles_w != 1 ||
      p.y_sw != 1 || p.y_sh != p.OW)
    return false;
  if (patch_tiles(p, kPatchBN) < 2 * int64_t{multiprocessors(device)}) return false;
  switch (math) {
    case Math::kF16:
    case Math::kBF16: return p.cblocks == 1;
    case Math::kTF32: return p.OW % 8 != 0;
    case Math::kF32x3: return false;
  }
  return false;
}

}  // namespace

// The fused kernels (host.h): picks the kernel (make_plan), prepares the weights, launches.
void conv2d_relu_add_out(const at::Tensor& x, const at::Tensor& weight,
                         const c10::optional<at::Tensor>& bias,
                         const c10::optional<at::Tensor>& other, double other_scalar,
                         std::vector<int64_t> stride, std::vector<int64_t> padding,
                         std::vector<int64_t> dilation, bool allow_tf32, bool hopper,
                         bool patch, at::Tensor out) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 4, kOp, ": expected a 4-D CUDA input, got ", x.sizes());
  TORCH_CHECK(weight.dim() == 4 && weight.device() == x.device() &&
                  weight.scalar_type() == x.scalar_type(),
              kOp, ": expected a 4-D weight of the input's dtype and device");
  TORCH_CHECK(out.dim() == 4 && out.device() == x.device() && out.scalar_type() == x.scalar_type(),
              kOp, ": expected a 4-D output of the input's dtype and device");
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, kOp,
              ": expected 2-element stride, padding and dilation");
  const c10::cuda::CUDAGuard guard(x.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Cout = weight.size(0), KH = weight.size(2), KW = weight.size(3);
  TORCH_CHECK(weight.size(1) == C, kOp, ": groups > 1 is not handled by the kernel");
  const int64_t OH = out.size(2), OW = out.size(3);
  TORCH_CHECK(out.size(0) == N && out.size(1) == Cout, kOp, ": output shape mismatch");
  if (out.numel() == 0) return;

  const auto dtype = x.scalar_type();
  const Math math = math_of(dtype, allow_tf32);
  Plan plan = make_plan(x, weight, OW, stride, dilation, math, hopper, patch);
  const int elem = static_cast<int>(x.element_size());
  // A given `out` the copy engine cannot write (channels-last patch kernel) takes the others.
  if (plan.tile == kTilePatch && plan.patch_cl && !copy_engine_output(out, elem))
    plan = make_plan(x, weight, OW, stride, dilation, math, hopper, false);
  const int bk = kSliceBytes / elem;
  const int bn = plan.tile == kTilePatch ? plan.patch_bn : plan.tile == kTile128x64 ? 64 : 128;
  const int64_t cblocks = (C + bk - 1) / bk;
  // The patch kernel's K covers whole channel blocks per tap; the others pad K to a slice.
  const int64_t K = plan.tile == kTilePatch ? cblocks * bk * KH * KW : C * KH * KW;
  const int64_t K_pad = (K + bk - 1) / bk * bk;
  const int64_t Cout_pad = (Cout + bn - 1) / bn * bn;
  constexpr int64_t kI32 = std::numeric_limits<int32_t>::max();
  TORCH_CHECK(K_pad < kI32 && Cout_pad < kI32 && H < kI32 && W < kI32 && OH * OW < kI32, kOp,
              ": sizes beyond the kernel's 32-bit limits");

  // 3xTF32 on the patch kernel: three weight sets, and whether any weight is Inf or NaN
  const bool tf32_split = plan.tile == kTilePatch && math == Math::kF32x3;
  auto wprep = at::empty({Cout_pad * K_pad * (tf32_split ? 3 : 1)}, x.options());
  auto table = at::empty({2 * K_pad}, x.options().dtype(at::kInt));
  at::Tensor nonfinite;
  if (tf32_split) nonfinite = at::zeros({1}, x.options().dtype(at::kInt));

  PrepParams pp{};
  pp.w = weight.data_ptr();
  pp.w_so = weight.stride(0);
  pp.w_sc = weight.stride(1);
  pp.w_sh = weight.stride(2);
  pp.w_sw = weight.stride(3);
  pp.wprep = wprep.data_ptr();
  pp.table = reinterpret_cast<int2*>(table.data_ptr<int32_t>());
  pp.Cout = static_cast<int>(Cout);
  pp.Cout_pad = static_cast<int>(Cout_pad);
  pp.Cin = static_cast<int>(C);
  pp.KH = static_cast<int>(KH);
  pp.KW = static_cast<int>(KW);
  pp.K = static_cast<int>(K);
  pp.K_pad = static_cast<int>(K_pad);
  pp.k_order = plan.k_order;
  pp.k_block = bk;
  pp.n_block = bn;
  pp.x_sc = x.stride(1);
  pp.x_sh = x.stride(2);
  pp.x_sw = x.stride(3);
  pp.dil_h = static_cast<int>(dilation[0]);
  pp.dil_w = static_cast<int>(dilation[1]);
  pp.round_tf32 = (dtype == at::kFloat && allow_tf32) ? 1 : 0;
  pp.tf32_split = tf32_split ? 1 : 0;
  pp.nonfinite = tf32_split ? nonfinite.data_ptr<int32_t>() : nullptr;
  launch_prep(pp, elem, stream);

  ConvParams p = conv_params(x, weight, bias, other, other_scalar, stride, padding, dilation, out);
  p.wprep = wprep.data_ptr();
  p.table = pp.table;
  p.K = static_cast<int>(K);
  p.K_pad = static_cast<int>(K_pad);
  p.tile_h = plan.tile_h;
  p.tile_w = plan.tile_w;
  if (plan.tile == kTilePatch) {
    p.tiles_h = static_cast<int>((OH + plan.tile_h - 1) / plan.tile_h);
    p.tiles_w = static_cast<int>((OW + plan.tile_w - 1) / plan.tile_w);
  }
  p.patch_rows = plan.patch_rows;
  p.patch_chunks = plan.patch_chunks;
  p.patch_pitch = plan.patch_cols;
  p.cblocks = static_cast<int>(cblocks);
  p.w_nonfinite = pp.nonfinite;

  if (plan.tile == kTilePatch) {
    const bool stage_rows = stage_rows_pays(plan, p, math, x.device().index());
    launch_patch(p, math, plan.patch_cl, plan.patch_bn, stage_rows, stream);
    return;
  }
  switch (math) {
    case Math::kTF32: launch_conv_tf32(p, plan.avec, plan.tile, stream); break;
    case Math::kF32x3: launch_conv_f32x3(p, plan.avec, plan.tile, stream); break;
    case Math::kF16: launch_conv_f16(p, plan.avec, plan.tile, stream); break;
    case Math::kBF16: launch_conv_bf16(p, plan.avec, plan.tile, stream); break;
  }
}

// The cuDNN path's epilogue (host.h). The pass runs in channels-last order when y is
// channels-last; 16 bytes per thread where y is dense, written in place, and `other` is per
// channel or a number. A channels-last y into a dense NCHW out (cuDNN on channels-last data
// for an NCHW layer) takes the tile transpose pass where `other` is per channel or a number
// and the channels and planes are whole 16-byte chunks.
void relu_add_out(const at::Tensor& y, const c10::optional<at::Tensor>& bias,
                  const c10::optional<at::Tensor>& other, double other_scalar, at::Tensor out) {
  TORCH_CHECK(y.is_cuda() && y.dim() == 4, kOp, ": expected a 4-D CUDA tensor, got ", y.sizes());
  TORCH_CHECK(out.sizes() == y.sizes() && out.device() == y.device() &&
                  out.scalar_type() == y.scalar_type(),
              kOp, ": expected an output of y's shape, dtype and device");
  const bool has_bias = bias.has_value() && bias->defined();
  TORCH_CHECK(!has_bias || (bias->dim() == 1 && bias->size(0) == y.size(1) && bias->is_contiguous() &&
                            bias->scalar_type() == y.scalar_type() && bias->device() == y.device()),
              kOp, ": expected a contiguous bias of y's channels, dtype and device");
  constexpr int64_t kI32 = std::numeric_limits<int32_t>::max();
  TORCH_CHECK(y.numel() / std::max<int64_t>(y.size(0), 1) < kI32, kOp,
              ": expected fewer than 2^31 elements per image");
  if (y.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(y.device());
  ConvParams p{};
  p.x = y.data_ptr();
  p.bias = has_bias ? bias->data_ptr() : nullptr;
  p.M = y.size(0) * y.size(2) * y.size(3);
  p.Cout = static_cast<int>(y.size(1));
  p.OH = static_cast<int>(y.size(2));
  p.OW = static_cast<int>(y.size(3));
  p.x_sn = y.stride(0);
  p.x_sc = y.stride(1);
  p.x_sh = y.stride(2);
  p.x_sw = y.stride(3);
  set_other(p, other, other_scalar, out);
  set_output(p, out);
  const bool channels_last = !y.is_contiguous() && y.is_contiguous(at::MemoryFormat::ChannelsLast);
  const int vec = 16 / static_cast<int>(y.element_size());
  const bool per_channel = p.other == nullptr || (p.o_sn == 0 && p.o_sh == 0 && p.o_sw == 0);
  const bool vector = (channels_last || y.is_contiguous()) && out.data_ptr() == y.data_ptr() &&
                      out.strides() == y.strides() && per_channel && aligned16(y.data_ptr()) &&
                      (channels_last ? y.size(1) : y.size(2) * y.size(3)) % vec == 0 &&
                      y.numel() / vec < kI32;
  const int elem = static_cast<int>(y.element_size());
  const bool bf16 = y.scalar_type() == at::kBFloat16;
  // channels-last y into a dense NCHW out: one tile transpose pass
  const int64_t plane = y.size(2) * y.size(3);
  if (channels_last && out.is_contiguous() && per_channel && aligned16(y.data_ptr()) &&
      aligned16(out.data_ptr()) && y.size(1) % vec == 0 && plane % vec == 0 && plane < kI32) {
    launch_epilogue_to_nchw(p, elem, bf16, c10::cuda::getCurrentCUDAStream());
    return;
  }
  launch_epilogue(p, elem, bf16, channels_last, vector, c10::cuda::getCurrentCUDAStream());
}

namespace {

// Whether our transpose takes x to channels-last: a dense NCHW CUDA tensor of 16-byte
// chunks of channels and of pixels.
bool transposes(const at::Tensor& x) {
  const auto cl = at::MemoryFormat::ChannelsLast;
  const int64_t vec = 16 / x.element_size(), plane = x.size(2) * x.size(3);
  const auto t = x.scalar_type();
  return x.is_cuda() && x.dim() == 4 && x.is_contiguous() && !x.is_contiguous(cl) &&
         (t == at::kFloat || t == at::kHalf || t == at::kBFloat16) && aligned16(x.data_ptr()) &&
         x.size(1) % vec == 0 && plane % vec == 0 && x.size(1) * plane < std::numeric_limits<int32_t>::max();
}

// Whether our copy takes the weights to channels-last: dense CUDA filters of 2- or 4-byte
// elements.
bool copies_filter(const at::Tensor& weight) {
  constexpr int64_t kI32 = std::numeric_limits<int32_t>::max();
  const int64_t size = weight.element_size();
  return weight.is_cuda() && weight.dim() == 4 && weight.is_contiguous() &&
         !weight.is_contiguous(at::MemoryFormat::ChannelsLast) && (size == 2 || size == 4) &&
         weight.size(0) < kI32 && weight.size(1) * weight.size(2) * weight.size(3) < kI32;
}

FilterCopy filter_copy(const at::Tensor& weight, at::Tensor& y) {
  return FilterCopy{weight.data_ptr(), y.data_ptr(), static_cast<int>(weight.size(1)),
                    static_cast<int>(weight.size(2) * weight.size(3)), weight.size(0)};
}

// x into y (channels-last) by our transpose, and `filter` by the same launch
void launch_transpose(const at::Tensor& x, at::Tensor& y, const FilterCopy& filter) {
  const c10::cuda::CUDAGuard guard(x.device());
  launch_to_nhwc(x.data_ptr(), y.data_ptr(), static_cast<int>(x.size(1)), static_cast<int>(x.size(2) * x.size(3)),
                 x.size(0), static_cast<int>(x.element_size()), x.scalar_type() == at::kBFloat16, filter,
                 c10::cuda::getCurrentCUDAStream());
}

// The weights dense in the channels-last layout, by one copy a filter where they are dense
// CUDA tensors of 2- or 4-byte elements; otherwise Tensor.contiguous.
at::Tensor filter_to_channels_last(const at::Tensor& weight) {
  if (!copies_filter(weight)) return weight.contiguous(at::MemoryFormat::ChannelsLast);
  auto y = at::empty_like(weight, weight.options(), at::MemoryFormat::ChannelsLast);
  if (weight.numel() == 0) return y;
  const c10::cuda::CUDAGuard guard(weight.device());
  launch_filter_to_nhwc(filter_copy(weight, y), static_cast<int>(weight.element_size()),
                        c10::cuda::getCurrentCUDAStream());
  return y;
}

}  // namespace

at::Tensor to_channels_last(const at::Tensor& x) {
  if (!transposes(x)) return x.contiguous(at::MemoryFormat::ChannelsLast);
  auto y = at::empty_like(x, x.options(), at::MemoryFormat::ChannelsLast);
  if (x.numel() > 0) launch_transpose(x, y, FilterCopy{});
  return y;
}

std::pair<at::Tensor, at::Tensor> operands_to_channels_last(const at::Tensor& x, const at::Tensor& weight) {
  if (!(transposes(x) && copies_filter(weight) && weight.scalar_type() == x.scalar_type() &&
        weight.device() == x.device() && x.numel() > 0 && weight.numel() > 0)) {
    return {to_channels_last(x), filter_to_channels_last(weight)};
  }
  auto y = at::empty_like(x, x.options(), at::MemoryFormat::ChannelsLast);
  auto wy = at::empty_like(weight, weight.options(), at::MemoryFormat::ChannelsLast);
  launch_transpose(x, y, filter_copy(weight, wy));
  return {y, wy};
}

namespace {

// The depthwise kernel's shape for these arguments; tiles = 0 where it does not take them
// (the tile's input window past shared memory, or past its grid's limits).
DepthwiseShape depthwise_shape(const at::Tensor& x, const at::Tensor& weight,
                               const std::vector<int64_t>& stride,
                               const std::vector<int64_t>& padding,
                               const std::vector<int64_t>& dilation) {
  const int64_t cpg = weight.size(1), groups = x.size(1) / cpg;
  const int64_t KH = weight.size(2), KW = weight.size(3), mult = weight.size(0) / groups;
  const int64_t span_h = dilation[0] * (KH - 1) + 1, span_w = dilation[1] * (KW - 1) + 1;
  const int64_t OH = output_extent(x.size(2), padding[0], span_h, stride[0]);
  const int64_t OW = output_extent(x.size(3), padding[1], span_w, stride[1]);
  // Rows go by 16-byte loads where every row and chunk is 16-byte aligned and a chunk lies
  // wholly inside or outside the image.
  const int64_t vec = 16 / x.element_size();
  const bool chunked = x.stride(3) == 1 && x.stride(2) % vec == 0 && x.stride(1) % vec == 0 &&
                       x.stride(0) % vec == 0 && x.size(3) % vec == 0 &&
                       aligned16(x.data_ptr());
  DepthwiseShape d{};
  d.cpg = static_cast<int>(cpg);
  d.mult = static_cast<int>(mult);
  d.chunks = static_cast<int>((mult + depthwise_co(d.mult) - 1) / depthwise_co(d.mult));
  d.KH = static_cast<int>(KH);
  // The rows a tile's threads read (planes under a tile high stage only theirs), and the
  // fewest warps per plane (a power of two) whose rows cover the plane's and whose planes
  // per block fit in shared memory.
  const int64_t row_warps = (OH + kDwRows - 1) / kDwRows;
  const int64_t rows_in = (std::min<int64_t>(kDwTileH, row_warps * kDwRows) - 1) * stride[0] + span_h;
  const int64_t cols_in = (kDwTileW - 1) * stride[1] + span_w;
  const int64_t pitch = (cols_in + 2 * vec - 2) / vec * vec;  // room for a shift of vec - 1
  auto smem = [&](int64_t plane_warps) {
    return depthwise_smem_bytes(kDwThreadRows / plane_warps, cpg, mult, KH * KW, rows_in, pitch);
  };
  int64_t plane_warps = 1;
  while (plane_warps < kDwThreadRows && (plane_warps < row_warps || smem(plane_warps) > kDwMaxSmem)) {
    plane_warps *= 2;
  }
  const int64_t tile_h = plane_warps * kDwRows;
  const int64_t tiles_w = (OW + kDwTileW - 1) / kDwTileW;
  const int64_t tiles = (OH + tile_h - 1) / tile_h * tiles_w;
  const int64_t planes = x.size(0) * groups;
  constexpr int64_t kI32 = std::numeric_limits<int32_t>::max();
  if (smem(plane_warps) > kDwMaxSmem ||
      tiles > 65535 || d.chunks > 65535 || planes > kI32 || x.size(2) * x.size(3) > kI32) {
    return d;  // tiles = 0
  }
  d.planes = static_cast<int>(planes);
  d.plane_warps = static_cast<int>(plane_warps);
  d.tiles_w = static_cast<int>(tiles_w);
  d.tiles = static_cast<int>(tiles);
  d.rows_in = static_cast<int>(rows_in);
  d.pitch = static_cast<int>(pitch);
  d.vec = chunked ? 1 : 0;
  d.row_units = static_cast<int>(chunked ? pitch / vec : pitch);
  d.row_units_inv = static_cast<uint32_t>(((int64_t{1} << 32) + d.row_units - 1) / d.row_units);
  return d;
}

// The channels-last depthwise kernel's shape for these arguments; cg_block = 0 where it
// does not take them: one input and one output channel per group, a compiled size, and
// groups of 4 channels at every pixel (channels innermost, strides in whole groups).
DepthwiseClShape depthwise_cl_shape(const at::Tensor& x, const at::Tensor& weight,
                                    const std::vector<int64_t>& stride,
                                    const std::vector<int64_t>& padding,
                                    const std::vector<int64_t>& dilation) {
  DepthwiseClShape d{};
  const int64_t C = x.size(1), K = weight.size(2), G = kDwClGroup;
  const bool sizes = weight.size(0) == C && weight.size(1) == 1 && weight.size(3) == K &&
                     stride[0] == stride[1] && dilation[0] == 1 && dilation[1] == 1 &&
                     depthwise_cl_sizes(K, stride[0]);
  const bool grouped = x.stride(1) == 1 && C % G == 0 && x.stride(0) % G == 0 &&
                       x.stride(2) % G == 0 && x.stride(3) % G == 0;
  if (!sizes || !grouped) return d;
  const int64_t OH = output_extent(x.size(2), padding[0], K, stride[0]);
  const int64_t OW = output_extent(x.size(3), padding[1], K, stride[1]);
  const DwClTile tile = depthwise_cl_tile(static_cast<int>(K), static_cast<int>(stride[0]),
                                          static_cast<int>(x.element_size()));
  const int64_t tiles_w = (OW + tile.w - 1) / tile.w, tiles_h = (OH + tile.h - 1) / tile.h;
  const int64_t tiles = x.size(0) * tiles_h * tiles_w;
  // the block's channel groups: as many as its threads and 48 KB of weights take, the
  // chunks of a pixel's groups evened out
  const int64_t groups = C / G;
  const int64_t cg_max = std::min<int64_t>(kDwClThreads, kDwMaxSmem / depthwise_cl_smem_bytes(1, K * K));
  const int64_t chunks = (groups + cg_max - 1) / cg_max;
  if (tiles >= (int64_t{1} << 30) || chunks > 65535) return d;
  d.cg_block = static_cast<int>((groups + chunks - 1) / chunks);
  d.chunks = static_cast<int>(chunks);
  d.tiles_per_block = kDwClThreads / d.cg_block;
  d.tiles_w = static_cast<int>(tiles_w);
  d.tiles_h = static_cast<int>(tiles_h);
  d.tiles = static_cast<int>(tiles);
  // one wave: the blocks resident at once (2 per SM), each walking its share of the tiles,
  // so that each block stages its weights once
  const int sms = multiprocessors(x.device().index());
  const int64_t tile_blocks = (tiles + d.tiles_per_block - 1) / d.tiles_per_block;
  d.blocks = static_cast<int>(std::max<int64_t>(
      1, std::min(tile_blocks, (kDwClBlocksPerSm * int64_t{sms} + chunks - 1) / chunks)));
  return d;
}

// The depthwise and direct kernels' arguments: a 4-D CUDA input, a grouped weight and a
// 4-D output of its dtype and device.
void check_grouped(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& out) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 4, kOp, ": expected a 4-D CUDA input, got ", x.sizes());
  TORCH_CHECK(weight.dim() == 4 && weight.device() == x.device() &&
                  weight.scalar_type() == x.scalar_type() && weight.size(1) > 0 &&
                  x.size(1) % weight.size(1) == 0 &&
                  weight.size(0) % (x.size(1) / weight.size(1)) == 0,
              kOp, ": expected a grouped weight (groups x multiplier, C_in / groups, kH, kW) of the "
              "input's dtype and device, got ", weight.sizes(), " for ", x.size(1), " input channels");
  TORCH_CHECK(out.dim() == 4 && out.device() == x.device() &&
                  out.scalar_type() == x.scalar_type() && out.size(0) == x.size(0) &&
                  out.size(1) == weight.size(0),
              kOp, ": expected a 4-D output of the input's dtype and device");
}

}  // namespace

// The depthwise kernels (host.h): channels-last input on its own kernel.
void depthwise_conv2d_relu_add_out(const at::Tensor& x, const at::Tensor& weight,
                                   const c10::optional<at::Tensor>& bias,
                                   const c10::optional<at::Tensor>& other, double other_scalar,
                                   std::vector<int64_t> stride, std::vector<int64_t> padding,
                                   std::vector<int64_t> dilation, at::Tensor out) {
  check_grouped(x, weight, out);
  if (out.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const auto w = weight.contiguous();
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (channels_innermost(x)) {
    const DepthwiseClShape d = depthwise_cl_shape(x, weight, stride, padding, dilation);
    TORCH_CHECK(d.cg_block > 0, kOp, ": the channels-last depthwise kernel does not take these sizes");
    // a group of 4 channels is one vector: 16 bytes fp32, 8 bytes 16-bit
    auto aligned = [&](const at::Tensor& t) {
      return reinterpret_cast<uintptr_t>(t.data_ptr()) % (kDwClGroup * t.element_size()) == 0;
    };
    TORCH_CHECK(out.stride(1) == 1 && out.stride(0) % kDwClGroup == 0 &&
                    out.stride(2) % kDwClGroup == 0 && out.stride(3) % kDwClGroup == 0 && aligned(out),
                kOp, ": the channels-last depthwise kernel expected a channels-last output in "
                "aligned groups of 4 channels, got strides ", out.strides());
    // an input off a group's alignment (a view) is read from an aligned copy
    const at::Tensor xa = aligned(x) ? x : x.clone(at::MemoryFormat::ChannelsLast);
    ConvParams p = conv_params(xa, weight, bias, other, other_scalar, stride, padding, dilation, out);
    p.wprep = w.data_ptr();
    launch_depthwise_cl(p, d, static_cast<int>(x.element_size()), bf16, stream);
    return;
  }
  const DepthwiseShape d = depthwise_shape(x, weight, stride, padding, dilation);
  TORCH_CHECK(d.tiles > 0, kOp, ": the depthwise kernel does not take these sizes");
  ConvParams p = conv_params(x, weight, bias, other, other_scalar, stride, padding, dilation, out);
  p.wprep = w.data_ptr();
  launch_depthwise(p, d, static_cast<int>(x.element_size()), bf16, stream);
}

namespace {

// A layer's sizes as the direct kernel's shapes see them.
struct DirectLayer {
  int64_t images, cpg, groups, cout_pg, taps, OH, OW, cols_in, stride_h, span_h;

  int64_t rows_in(int64_t rows) const { return (rows - 1) * stride_h + span_h; }
  int64_t smem(int64_t rows, int64_t co_block) const {
    return direct_smem_bytes(cpg, direct_window_pitch(rows_in(rows), cols_in), co_block, taps);
  }
  // Blocks of `rows` output rows and `co_block` channels; co_block = 0 where the grid is
  // past its limits.
  DirectShape shape(int64_t co_block, int64_t rows, int64_t split, int co_t) const {
    DirectShape d{};
    const int64_t bands = (OH + rows - 1) / rows;
    const int64_t co_blocks = groups * ((cout_pg + co_block - 1) / co_block);
    if (images * bands > std::numeric_limits<int32_t>::max() || co_blocks > 65535) return d;
    d.cpg = static_cast<int>(cpg);
    d.co_block = static_cast<int>(co_block);
    d.co_blocks = static_cast<int>(co_blocks);
    d.rows = static_cast<int>(rows);
    d.bands = static_cast<int>(bands);
    d.split = static_cast<int>(split);
    d.rows_in = static_cast<int>(rows_in(rows));
    d.cols_in = static_cast<int>(cols_in);
    d.window_pitch = static_cast<int>(direct_window_pitch(d.rows_in, cols_in));
    d.co_t = co_t;
    if (co_t == kDirectCoT) {
      d.window_rows = fast_div(static_cast<uint32_t>(d.rows_in));
      d.tile_columns = fast_div(static_cast<uint32_t>(rows / kDirectRowT * OW));
      d.out_cols = fast_div(static_cast<uint32_t>(OW));
    }
    return d;
  }
};

// One output a thread: small blocks finish sooner on a GPU that small work leaves mostly
// idle. A block takes up to one output per thread, as many channels of a group as a row
// has room for (up to 64, fewer where their weights do not fit), then more rows, then more
// lanes per output where a row of one channel is still fewer outputs than threads.
DirectShape output_per_thread_shape(const DirectLayer& l) {
  int64_t co_block = std::min<int64_t>({l.cout_pg, 64, std::max<int64_t>(1, kDirectThreads / l.OW)});
  while (co_block > 1 && l.smem(1, co_block) > kDirectMaxSmem) co_block = (co_block + 1) / 2;
  if (l.smem(1, co_block) > kDirectMaxSmem) return DirectShape{};
  int64_t rows = 1, split = 1;
  while (rows < l.OH && 2 * rows * co_block * l.OW <= kDirectThreads &&
         l.smem(2 * rows, co_block) <= kDirectMaxSmem) {
    rows *= 2;
  }
  while (2 * split <= std::min<int64_t>(l.cpg, 32) && 2 * split * rows * co_block * l.OW <= kDirectThreads) {
    split *= 2;
  }
  return l.shape(co_block, rows, split, 1);
}

// Eight channels of four pixels of a column a thread (co_t = kDirectCoT, kDirectRowT
// rows): up to 64 channels of a group a block, in multiples of 8 (fewer where their
// weights do not fit), and about one item of eight channels x four rows a thread, in bands
// of equal rows, a multiple of four.
DirectShape channels_per_thread_shape(const DirectLayer& l) {
  int64_t co_block = std::min<int64_t>((l.cout_pg + kDirectCoT - 1) / kDirectCoT * kDirectCoT, 64);
  while (co_block > kDirectCoT && l.smem(kDirectRowT, co_block) > kDirectMaxSmem) co_block -= kDirectCoT;
  if (l.smem(kDirectRowT, co_block) > kDirectMaxSmem) return DirectShape{};
  const int64_t quads_wanted = std::max<int64_t>(1, kDirectThreads / (co_block / kDirectCoT * l.OW));
  const int64_t bands = (l.OH + kDirectRowT * quads_wanted - 1) / (kDirectRowT * quads_wanted);
  const int64_t rows_per_band = (l.OH + bands - 1) / bands;
  int64_t rows = (rows_per_band + kDirectRowT - 1) / kDirectRowT * kDirectRowT;
  while (rows > kDirectRowT && l.smem(rows, co_block) > kDirectMaxSmem) rows -= kDirectRowT;
  return l.shape(co_block, rows, 1, kDirectCoT);
}

// The direct kernel's shape for these arguments; co_block = 0 where it does not take them
// (one channel's weights and one row's windows past shared memory, or the grid past its
// limits). Layers of more than 2^17 outputs (past the direct kernel's size rule for small
// layers, fx_fuse/_cuda.py) and of 8 or more output channels a group take eight channels
// of four pixels a thread where they fit; the others one output a thread.
DirectShape direct_shape(const at::Tensor& x, const at::Tensor& weight, const std::vector<int64_t>& stride,
                         const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation) {
  const int64_t cpg = weight.size(1), groups = x.size(1) / cpg, cout_pg = weight.size(0) / groups;
  const int64_t KH = weight.size(2), KW = weight.size(3);
  const int64_t span_h = dilation[0] * (KH - 1) + 1, span_w = dilation[1] * (KW - 1) + 1;
  const int64_t OH = output_extent(x.size(2), padding[0], span_h, stride[0]);
  const int64_t OW = output_extent(x.size(3), padding[1], span_w, stride[1]);
  if (OH <= 0 || OW <= 0) return DirectShape{};
  const DirectLayer layer{x.size(0), cpg, groups, cout_pg, KH * KW, OH, OW,
                          (OW - 1) * stride[1] + span_w, stride[0], span_h};
  if (x.size(0) * weight.size(0) * OH * OW > (int64_t{1} << 17) && cout_pg >= kDirectCoT) {
    const DirectShape d = channels_per_thread_shape(layer);
    if (d.co_block > 0) return d;
  }
  return output_per_thread_shape(layer);
}

}  // namespace

// The direct kernel (host.h).
void direct_conv2d_relu_add_out(const at::Tensor& x, const at::Tensor& weight,
                                const c10::optional<at::Tensor>& bias,
                                const c10::optional<at::Tensor>& other, double other_scalar,
                                std::vector<int64_t> stride, std::vector<int64_t> padding,
                                std::vector<int64_t> dilation, at::Tensor out) {
  check_grouped(x, weight, out);
  if (out.numel() == 0) return;
  const DirectShape d = direct_shape(x, weight, stride, padding, dilation);
  TORCH_CHECK(d.co_block > 0, kOp, ": the direct kernel does not take these sizes");
  const c10::cuda::CUDAGuard guard(x.device());
  const auto w = weight.contiguous();
  ConvParams p = conv_params(x, weight, bias, other, other_scalar, stride, padding, dilation, out);
  p.wprep = w.data_ptr();
  launch_direct(p, d, static_cast<int>(x.element_size()), x.scalar_type() == at::kBFloat16,
                c10::cuda::getCurrentCUDAStream());
}

namespace {

// Whether the direct kernel takes these sizes (its shared memory and grid).
bool direct_kernel_fits(const at::Tensor& x, const at::Tensor& weight, std::vector<int64_t> stride,
                        std::vector<int64_t> padding, std::vector<int64_t> dilation) {
  return direct_shape(x, weight, stride, padding, dilation).co_block > 0;
}

// Whether the depthwise kernel of the input's layout takes these sizes (NCHW: its shared
// memory and grid; channels-last: depthwise_cl_shape).
bool depthwise_kernel_fits(const at::Tensor& x, const at::Tensor& weight,
                           std::vector<int64_t> stride, std::vector<int64_t> padding,
                           std::vector<int64_t> dilation) {
  if (channels_innermost(x)) return depthwise_cl_shape(x, weight, stride, padding, dilation).cg_block > 0;
  return depthwise_shape(x, weight, stride, padding, dilation).tiles > 0;
}

// The kernel conv2d_relu_add_out runs for these arguments (for tests and diagnostics).
std::string kernel_name(const at::Tensor& x, const at::Tensor& weight, std::vector<int64_t> stride,
                        std::vector<int64_t> padding, std::vector<int64_t> dilation,
                        bool allow_tf32, bool hopper, bool patch) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 4 && weight.dim() == 4, kOp,
              ": expected a 4-D CUDA input and a 4-D weight");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t span_w = dilation[1] * (weight.size(3) - 1) + 1;
  const int64_t OW = output_extent(x.size(3), padding[1], span_w, stride[1]);
  const Math math = math_of(x.scalar_type(), allow_tf32);
  const Plan plan = make_plan(x, weight, OW, stride, dilation, math, hopper, patch);
  switch (plan.tile) {
    case kTilePatch: return plan.patch_cl ? "patch channels-last" : "patch";
    case kTile128x128Wgmma: return "wgmma";
    case kTile128x128: return "mma.sync 128x128";
    default: return "mma.sync 128x64";
  }
}

}  // namespace
}  // namespace fx_fuse

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fx_fuse::conv2d_relu_add fused CUDA kernel";
  m.def("conv2d_relu_add_out", &fx_fuse::conv2d_relu_add_out, "fill `out` with the fused op",
        pybind11::arg("x"), pybind11::arg("weight"), pybind11::arg("bias"), pybind11::arg("other"),
        pybind11::arg("other_scalar"), pybind11::arg("stride"), pybind11::arg("padding"),
        pybind11::arg("dilation"), pybind11::arg("allow_tf32"), pybind11::arg("hopper"),
        pybind11::arg("patch"), pybind11::arg("out"));
  m.def("relu_add_out", &fx_fuse::relu_add_out, "fill `out` with relu(y + bias) + other",
        pybind11::arg("y"), pybind11::arg("bias"), pybind11::arg("other"),
        pybind11::arg("other_scalar"), pybind11::arg("out"));
  m.def("conv2d_relu_add", &fx_fuse::conv2d_relu_add,
        "the op's CUDA kernel (what the dispatcher calls once register_op has run)",
        pybind11::arg("input"), pybind11::arg("weight"), pybind11::arg("bias"),
        pybind11::arg("other"), pybind11::arg("stride"), pybind11::arg("padding"),
        pybind11::arg("dilation"), pybind11::arg("groups"));
  m.def("run_plan", &fx_fuse::run_plan,
        "run the op's arguments on a given plan (path, input channels-last, output "
        "channels-last, hopper), the planner not asked",
        pybind11::arg("plan"), pybind11::arg("input"), pybind11::arg("weight"),
        pybind11::arg("bias"), pybind11::arg("other"), pybind11::arg("stride"),
        pybind11::arg("padding"), pybind11::arg("dilation"), pybind11::arg("groups"));
  m.def("operands_to_channels_last", &fx_fuse::operands_to_channels_last,
        "the input and the weights channels-last as cuDNN's path makes them (one launch where "
        "both take our copies)",
        pybind11::arg("x"), pybind11::arg("weight"));
  m.def("register_op", &fx_fuse::register_op,
        "register the op's CUDA and AutogradCUDA kernels with the planner and the backward "
        "formula (Python functions)",
        pybind11::arg("planner"), pybind11::arg("grads"));
  m.def("forget_plans", &fx_fuse::forget_plans, "forget every remembered plan");
  m.def("depthwise_kernel_fits", &fx_fuse::depthwise_kernel_fits,
        "whether the depthwise kernel takes these sizes", pybind11::arg("x"),
        pybind11::arg("weight"), pybind11::arg("stride"), pybind11::arg("padding"),
        pybind11::arg("dilation"));
  m.def("direct_kernel_fits", &fx_fuse::direct_kernel_fits,
        "whether the direct kernel takes these sizes", pybind11::arg("x"), pybind11::arg("weight"),
        pybind11::arg("stride"), pybind11::arg("padding"), pybind11::arg("dilation"));
  m.def("kernel_name", &fx_fuse::kernel_name, "which kernel runs these arguments",
        pybind11::arg("x"), pybind11::arg("weight"), pybind11::arg("stride"), pybind11::arg("padding"),
        pybind11::arg("dilation"), pybind11::arg("allow_tf32"), pybind11::arg("hopper"),
        pybind11::arg("patch"));
}
