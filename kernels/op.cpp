// The op's CUDA and AutogradCUDA kernels, as the dispatcher calls them once fx_fuse/_cuda.py
// has registered them (on the first CUDA call). How a call runs (which kernel, or the
// reference path) is decided in Python by the planner (fx_fuse/_cuda.py: the op's checks,
// the fallbacks and the size rules) once per call signature: the shapes, strides, dtypes
// and devices of the arguments, the convolution's arguments and the switches the rules
// read. The plan is remembered here, so a call whose signature was seen before runs
// without Python. The autograd kernel records the op for backward in C++ too; its backward
// is the Python formula (fx_fuse/ops.py, grads), called once per backward.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "host.h"

namespace fx_fuse {
namespace {

constexpr const char* kOp = "fx_fuse::conv2d_relu_add";

enum class Path { kPatch, kFused, kCudnn, kDepthwise, kDirect };

struct Plan {
  Path path;
  bool input_channels_last;  // the layout the input is read in (made dense in it)
  bool output_channels_last;
  bool hopper;  // the wgmma kernels may run
};

using Signature = std::vector<int64_t>;

struct SignatureHash {
  size_t operator()(const Signature& s) const {
    uint64_t h = 1469598103934665603ull;  // FNV-1a over the 64-bit words
    for (int64_t v : s) {
      h ^= static_cast<uint64_t>(v);
      h *= 1099511628211ull;
    }
    return static_cast<size_t>(h);
  }
};

constexpr size_t kMaxPlans = 4096;  // beyond, the plans are forgotten and made again

std::mutex mutex;
std::unordered_map<Signature, Plan, SignatureHash> plans;
// Set once from Python and never destroyed (destroying a Python object at exit needs the GIL).
pybind11::object* planner = nullptr;
pybind11::object* backward_formula = nullptr;
torch::Library* cuda_library = nullptr;
torch::Library* autograd_library = nullptr;

void add_tensor(Signature& s, const at::Tensor& t) {
  s.push_back(t.dim());
  s.push_back(static_cast<int64_t>(t.scalar_type()));
  s.push_back(static_cast<int64_t>(t.device().type()));
  s.push_back(t.device().index());
  s.insert(s.end(), t.sizes().begin(), t.sizes().end());
  s.insert(s.end(), t.strides().begin(), t.strides().end());
}

void add_ints(Signature& s, at::IntArrayRef values) {
  s.push_back(static_cast<int64_t>(values.size()));
  s.insert(s.end(), values.begin(), values.end());
}

bool switched_on(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && std::strcmp(value, "1") == 0;
}

// Everything the planner's decision depends on: `other`'s strides and the tensors' data
// are not part of it (the binding checks the data's alignment itself, on every call).
Signature signature_of(const at::Tensor& input, const at::Tensor& weight,
                       const c10::optional<at::Tensor>& bias, const at::Tensor& other,
                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                       int64_t groups) {
  Signature s;
  s.reserve(64);
  add_tensor(s, input);
  add_tensor(s, weight);
  const bool has_bias = bias.has_value() && bias->defined();
  s.push_back(has_bias);
  if (has_bias) add_tensor(s, *bias);
  s.push_back(other.dim());
  s.push_back(static_cast<int64_t>(other.scalar_type()));
  s.push_back(static_cast<int64_t>(other.device().type()));
  s.push_back(other.device().index());
  s.insert(s.end(), other.sizes().begin(), other.sizes().end());
  add_ints(s, stride);
  add_ints(s, padding);
  add_ints(s, dilation);
  s.push_back(groups);
  s.push_back(at::globalContext().allowTF32CuDNN());
  s.push_back(at::globalContext().benchmarkCuDNN());  // the planner times the paths
  s.push_back(switched_on("FX_FUSE_DISABLE_CUDNN"));
  s.push_back(switched_on("FX_FUSE_DISABLE_PATCH"));
  s.push_back(switched_on("FX_FUSE_DISABLE_WGMMA"));
  return s;
}

// The planner's answer for a signature: (path, input channels-last, output channels-last,
// hopper).
Plan plan_from(const pybind11::tuple& answer) {
  TORCH_CHECK(answer.size() == 4, kOp, ": expected a plan of 4 fields, got ", answer.size());
  const auto path = answer[0].cast<std::string>();
  Plan plan{};
  if (path == "patch") {
    plan.path = Path::kPatch;
  } else if (path == "fused") {
    plan.path = Path::kFused;
  } else if (path == "cudnn") {
    plan.path = Path::kCudnn;
  } else if (path == "depthwise") {
    plan.path = Path::kDepthwise;
  } else if (path == "direct") {
    plan.path = Path::kDirect;
  } else {
    TORCH_CHECK(false, kOp, ": the planner returned an unknown path '", path, "'");
  }
  plan.input_channels_last = answer[1].cast<bool>();
  plan.output_channels_last = answer[2].cast<bool>();
  plan.hopper = answer[3].cast<bool>();
  return plan;
}

std::vector<int64_t> pair(at::IntArrayRef values) {
  return values.size() == 1 ? std::vector<int64_t>{values[0], values[0]} : values.vec();
}

bool kernel_reads(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}

// The convolution of the cuDNN path: cuDNN's, called below at::conv2d's generic layers
// (argument expansion, checks, backend selection: host time that small layers pay in full)
// wherever cuDNN takes it: cuDNN enabled, a dtype its convolutions take, and 32-bit
// indexing (beyond, at::conv2d splits the batch). Otherwise at::conv2d itself. Grouped
// convolutions too: on fp32 and bf16 NCHW depthwise layers cuDNN's convolution measured
// 1.6-2.5x faster than at::conv2d's choice (docs/performance.md, v40).
at::Tensor cudnn_conv(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                      int64_t out_numel) {
  auto& ctx = at::globalContext();
  const auto& hooks = at::detail::getCUDAHooks();
  const auto t = x.scalar_type();
  const bool takes = t == at::kFloat || t == at::kHalf ||
                     (t == at::kBFloat16 && hooks.supportsBFloat16ConvolutionWithCuDNNv8());
  constexpr int64_t kMax32 = std::numeric_limits<int32_t>::max();
  if (!(ctx.userEnabledCuDNN() && hooks.compiledWithCuDNN() && takes &&
        weight.scalar_type() == t && x.numel() > 0 && x.numel() <= kMax32 && out_numel > 0 &&
        out_numel <= kMax32)) {
    return at::conv2d(x, weight, {}, stride, padding, dilation, groups);
  }
  return at::cudnn_convolution(x, weight, padding, stride, dilation, groups, ctx.benchmarkCuDNN(),
                               ctx.deterministicCuDNN() || ctx.deterministicAlgorithms(),
                               ctx.allowTF32CuDNN());
}

at::Tensor run(const Plan& plan, const at::Tensor& input, const at::Tensor& weight,
               const c10::optional<at::Tensor>& bias, const at::Tensor& other,
               at::IntArrayRef stride_arg, at::IntArrayRef padding_arg,
               at::IntArrayRef dilation_arg, int64_t groups) {
  const bool unbatched = input.dim() == 3;
  at::Tensor x = unbatched ? input.unsqueeze(0) : input;
  at::Tensor w = weight;  // channels-last too on cuDNN's path with channels-last input (its NHWC kernels)
  if (plan.path == Path::kCudnn && plan.input_channels_last) {
    std::tie(x, w) = operands_to_channels_last(x, weight);
  } else {
    x = plan.input_channels_last ? to_channels_last(x) : x.contiguous();
  }
  const auto stride = pair(stride_arg), padding = pair(padding_arg), dilation = pair(dilation_arg);
  std::vector<int64_t> out_shape{x.size(0), weight.size(0), 0, 0};
  for (int i = 0; i < 2; ++i) {
    const int64_t span = dilation[i] * (weight.size(2 + i) - 1) + 1;
    out_shape[2 + i] = output_extent(x.size(2 + i), padding[i], span, stride[i]);
  }
  // `other` as the kernels read it: expanded to the output's shape, or a 0-dim CPU tensor
  // (a Python number) read on the host without a device sync.
  c10::optional<at::Tensor> other_t;
  double scalar = 0.0;
  if (other.is_cuda()) {
    other_t = (kernel_reads(other.scalar_type()) ? other : other.to(at::kFloat)).expand(out_shape);
  } else {
    scalar = other.item<double>();
  }
  c10::optional<at::Tensor> b;
  if (bias.has_value() && bias->defined()) b = bias->contiguous();
  const auto format = plan.output_channels_last ? at::MemoryFormat::ChannelsLast
                                                : at::MemoryFormat::Contiguous;
  at::Tensor out;
  if (plan.path == Path::kCudnn) {
    // cuDNN's convolution in the input's dtype and TF32 setting, without the bias (cuDNN
    // adds a channels-last bias in a pass of its own) and not autocast again.
    at::Tensor y;
    {
      c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
      y = cudnn_conv(x, w, stride, padding, dilation, groups,
                     out_shape[0] * out_shape[1] * out_shape[2] * out_shape[3]);
    }
    out = y.is_contiguous(format) ? y : at::empty_like(y, y.options(), format);
    relu_add_out(y, b, other_t, scalar, out);
  } else if (plan.path == Path::kDepthwise) {
    out = at::empty(out_shape, x.options().memory_format(format));
    depthwise_conv2d_relu_add_out(x, weight, b, other_t, scalar, stride, padding, dilation, out);
  } else if (plan.path == Path::kDirect) {
    out = at::empty(out_shape, x.options().memory_format(format));
    direct_conv2d_relu_add_out(x, weight, b, other_t, scalar, stride, padding, dilation, out);
  } else {
    out = at::empty(out_shape, x.options().memory_format(format));
    if (out.numel() > 0) {
      conv2d_relu_add_out(x, weight, b, other_t, scalar, stride, padding, dilation,
                          at::globalContext().allowTF32CuDNN(), plan.hopper,
                          plan.path == Path::kPatch, out);
    }
  }
  return unbatched ? out.squeeze(0) : out;
}

}  // namespace

at::Tensor conv2d_relu_add(const at::Tensor& input, const at::Tensor& weight,
                           const c10::optional<at::Tensor>& bias, const at::Tensor& other,
                           at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation, int64_t groups) {
  Signature s = signature_of(input, weight, bias, other, stride, padding, dilation, groups);
  c10::optional<Plan> plan;
  {
    std::lock_guard<std::mutex> lock(mutex);
    const auto it = plans.find(s);
    if (it != plans.end()) plan = it->second;
  }
  if (!plan.has_value()) {
    pybind11::gil_scoped_acquire gil;
    TORCH_CHECK(planner != nullptr, kOp, ": the CUDA kernel was called before register_op");
    pybind11::object answer = (*planner)(input, weight, bias, other, stride.vec(),
                                         padding.vec(), dilation.vec(), groups);
    // the reference path's result, for arguments the kernels do not cover
    if (!pybind11::isinstance<pybind11::tuple>(answer)) return answer.cast<at::Tensor>();
    plan = plan_from(answer.cast<pybind11::tuple>());
    std::lock_guard<std::mutex> lock(mutex);
    if (plans.size() >= kMaxPlans) plans.clear();
    plans.emplace(std::move(s), *plan);
  }
  return run(*plan, input, weight, bias, other, stride, padding, dilation, groups);
}

at::Tensor run_plan(const pybind11::tuple& plan, const at::Tensor& input, const at::Tensor& weight,
                    const c10::optional<at::Tensor>& bias, const at::Tensor& other,
                    std::vector<int64_t> stride, std::vector<int64_t> padding,
                    std::vector<int64_t> dilation, int64_t groups) {
  return run(plan_from(plan), input, weight, bias, other, stride, padding, dilation, groups);
}

namespace {

// The op below autograd, through the dispatcher (fake tensors reach the fake kernel).
at::Tensor below_autograd(const at::Tensor& input, const at::Tensor& weight,
                          const c10::optional<at::Tensor>& bias, const at::Tensor& other,
                          at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation, int64_t groups) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fx_fuse::conv2d_relu_add", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                            const at::Tensor&, c10::SymIntArrayRef, c10::SymIntArrayRef,
                            c10::SymIntArrayRef, c10::SymInt)>();
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(input, weight, bias, other, c10::fromIntArrayRefSlow(stride),
                 c10::fromIntArrayRefSlow(padding), c10::fromIntArrayRefSlow(dilation),
                 c10::SymInt(groups));
}

// The forward saves its inputs (references, no copies) and `other`'s shape, dtype and
// device, nothing else: a forward in grad mode costs what it costs under no_grad.
struct ConvReluAddFunction : public torch::autograd::Function<ConvReluAddFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                            const at::Tensor& other, std::vector<int64_t> stride,
                            std::vector<int64_t> padding, std::vector<int64_t> dilation,
                            int64_t groups) {
    const bool has_bias = bias.has_value() && bias->defined();
    ctx->save_for_backward({input, weight, has_bias ? *bias : at::Tensor()});
    ctx->saved_data["has_bias"] = has_bias;
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["other_shape"] = c10::IValue(other.sym_sizes());
    ctx->saved_data["other_dtype"] = other.scalar_type();
    ctx->saved_data["other_device"] = other.device();
    return below_autograd(input, weight, bias, other, stride, padding, dilation, groups);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    // edges: input, weight, bias (when given), other
    const bool needs_other = ctx->needs_input_grad(has_bias ? 3 : 2);
    const std::vector<bool> needs{ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                  has_bias && ctx->needs_input_grad(2), needs_other};
    pybind11::gil_scoped_acquire gil;
    TORCH_CHECK(backward_formula != nullptr, kOp, ": no backward formula registered");
    const c10::optional<at::Tensor> bias =
        has_bias ? c10::optional<at::Tensor>(saved[2]) : c10::nullopt;
    const auto result = (*backward_formula)(
        grads[0], saved[0], saved[1], bias, ctx->saved_data["stride"].toIntVector(),
        ctx->saved_data["padding"].toIntVector(), ctx->saved_data["dilation"].toIntVector(),
        ctx->saved_data["groups"].toInt(), ctx->saved_data["other_shape"].toSymIntVector(),
        ctx->saved_data["other_dtype"].toScalarType(), ctx->saved_data["other_device"].toDevice(),
        needs).cast<pybind11::tuple>();
    torch::autograd::variable_list out(8);
    for (size_t i = 0; i < 4; ++i) {
      if (!result[i].is_none()) out[i] = result[i].cast<at::Tensor>();
    }
    return out;
  }
};

at::Tensor conv2d_relu_add_autograd(const at::Tensor& input, const at::Tensor& weight,
                                    const c10::optional<at::Tensor>& bias,
                                    const at::Tensor& other, at::IntArrayRef stride,
                                    at::IntArrayRef padding, at::IntArrayRef dilation,
                                    int64_t groups) {
  const bool track = at::GradMode::is_enabled() &&
                     (input.requires_grad() || weight.requires_grad() || other.requires_grad() ||
                      (bias.has_value() && bias->defined() && bias->requires_grad()));
  if (!track) return below_autograd(input, weight, bias, other, stride, padding, dilation, groups);
  return ConvReluAddFunction::apply(input, weight, bias, other, stride.vec(), padding.vec(),
                                    dilation.vec(), groups);
}

}  // namespace

void register_op(pybind11::object new_planner, pybind11::object grads) {
  std::lock_guard<std::mutex> lock(mutex);
  if (planner == nullptr) {
    planner = new pybind11::object(std::move(new_planner));
    backward_formula = new pybind11::object(std::move(grads));
  } else {
    *planner = std::move(new_planner);
    *backward_formula = std::move(grads);
  }
  plans.clear();
  if (cuda_library == nullptr) {
    cuda_library = new torch::Library(torch::Library::IMPL, "fx_fuse", c10::DispatchKey::CUDA,
                                      __FILE__, __LINE__);
    cuda_library->impl("conv2d_relu_add", TORCH_FN(conv2d_relu_add));
    autograd_library = new torch::Library(torch::Library::IMPL, "fx_fuse",
                                          c10::DispatchKey::AutogradCUDA, __FILE__, __LINE__);
    autograd_library->impl("conv2d_relu_add", TORCH_FN(conv2d_relu_add_autograd));
  }
}

void forget_plans() {
  std::lock_guard<std::mutex> lock(mutex);
  plans.clear();
}

}  // namespace fx_fuse
