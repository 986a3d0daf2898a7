// oneDNN's direct convolutions as XLA FFI handlers: the "onednn" conv algorithm on CPU.
//
// Built and loaded by research/layers/onednn.py, which documents the contract. Three
// handlers, one per pass, on NHWC activations and HWIO kernels (groups split the O axis):
//   ResearchOnednnConvForward        (x, w)   -> y
//   ResearchOnednnConvBackwardInput  (dy, w)  -> dx
//   ResearchOnednnConvBackwardKernel (x, dy)  -> dw
// Attributes: strides, dilations (1 = dense), pad_lo, pad_hi (two each), groups.
// oneDNN picks its own weights layout; the HWIO kernel is reordered into it on each call
// (or the kernel gradient out of it). Primitives are created once per geometry and kept.
//
// Threads. oneDNN (the GNU OpenMP build) runs each call on an OpenMP team started by the
// calling thread, and XLA runs independent custom calls side by side on its own worker
// threads: a layer's backward-data and backward-kernel calls (and a ResNet's shortcut
// and main-branch convolutions) may run at once. With every team as large as the machine,
// k concurrent calls would ask for k x cores threads. So each call caps its team at
// cores / kConcurrentCalls (at least 1), or at $RESEARCH_ONEDNN_THREADS where set, fixed
// per process so a given machine always splits the work the same way (oneDNN's numbers
// depend on the thread count, never on timing).

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <omp.h>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = dnnl::memory::format_tag;
using Ints = ffi::Span<const int64_t>;

namespace {

enum Pass { kForward = 0, kBackwardInput = 1, kBackwardKernel = 2 };

// The most convolution calls our programs let XLA run at once (backward data + kernel).
constexpr int kConcurrentCalls = 2;

int ThreadsPerCall() {
  static const int threads = [] {
    const char* set = std::getenv("RESEARCH_ONEDNN_THREADS");
    if (set != nullptr && std::atoi(set) > 0) return std::atoi(set);
    return std::max(1, omp_get_num_procs() / kConcurrentCalls);
  }();
  return threads;
}

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// oneDNN's logical dims: activations NCHW, kernels OIHW (GOIHW with groups).
struct Geometry {
  memory::dims x, w, y, strides, dilations, pad_lo, pad_hi;
  int64_t groups;

  std::string Key(Pass pass) const {
    std::string key = std::to_string(pass) + "g" + std::to_string(groups);
    for (const auto* v : {&x, &w, &y, &strides, &dilations, &pad_lo, &pad_hi}) {
      key += "|";
      for (auto d : *v) key += std::to_string(d) + ",";
    }
    return key;
  }
  memory::desc Activations(const memory::dims& dims) const {
    return memory::desc(dims, memory::data_type::f32, Tag::nhwc);
  }
  memory::desc Kernel(Tag tag) const { return memory::desc(w, memory::data_type::f32, tag); }
  Tag KernelTag() const { return groups == 1 ? Tag::hwio : Tag::hwigo; }
};

Geometry MakeGeometry(Ints xd, Ints wd, Ints yd, Ints strides, Ints dilations, Ints pad_lo,
                      Ints pad_hi, int64_t groups) {
  Geometry g;
  g.x = {xd[0], xd[3], xd[1], xd[2]};
  g.y = {yd[0], yd[3], yd[1], yd[2]};
  if (groups == 1) {
    g.w = {wd[3], wd[2], wd[0], wd[1]};
  } else {  // HWIO with O = (G, O/G): oneDNN's hwigo
    g.w = {groups, wd[3] / groups, wd[2], wd[0], wd[1]};
  }
  g.strides = {strides[0], strides[1]};
  g.dilations = {dilations[0] - 1, dilations[1] - 1};  // oneDNN counts the gaps
  g.pad_lo = {pad_lo[0], pad_lo[1]};
  g.pad_hi = {pad_hi[0], pad_hi[1]};
  g.groups = groups;
  return g;
}

struct Plan {
  dnnl::primitive conv;
  memory::desc kernel_md;  // the primitive's (diff) weights layout
  bool reorder = false;    // whether that layout differs from HWIO
  dnnl::primitive kernel_reorder;
  memory::desc scratch_md;
};

// A plan's primitive of type `Primitive` from `pd`, whose (diff) weights layout is
// `kernel_md`.
template <typename Primitive>
void SetPrimitive(Plan& plan, const typename Primitive::primitive_desc& pd,
                  const memory::desc& kernel_md) {
  plan.conv = Primitive(pd);
  plan.kernel_md = kernel_md;
  plan.scratch_md = pd.scratchpad_desc();
}

std::mutex plans_mutex;
std::map<std::string, std::shared_ptr<const Plan>> plans;

std::shared_ptr<const Plan> GetPlan(const Geometry& g, Pass pass) {
  const std::string key = g.Key(pass);
  std::lock_guard<std::mutex> lock(plans_mutex);
  auto found = plans.find(key);
  if (found != plans.end()) return found->second;

  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // one buffer per thread, below
  const auto any = g.Kernel(Tag::any);
  const auto x_md = g.Activations(g.x), y_md = g.Activations(g.y);
  const auto algo = dnnl::algorithm::convolution_direct;
  auto forward = dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, algo, x_md, any, y_md, g.strides,
      g.dilations, g.pad_lo, g.pad_hi, attr);
  auto plan = std::make_shared<Plan>();
  if (pass == kForward) {
    SetPrimitive<dnnl::convolution_forward>(*plan, forward, forward.weights_desc());
  } else if (pass == kBackwardInput) {
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        Engine(), algo, x_md, any, y_md, g.strides, g.dilations, g.pad_lo, g.pad_hi, forward,
        attr);
    SetPrimitive<dnnl::convolution_backward_data>(*plan, pd, pd.weights_desc());
  } else {
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        Engine(), algo, x_md, any, y_md, g.strides, g.dilations, g.pad_lo, g.pad_hi, forward,
        attr);
    SetPrimitive<dnnl::convolution_backward_weights>(*plan, pd, pd.diff_weights_desc());
  }
  const auto user_md = g.Kernel(g.KernelTag());
  plan->reorder = plan->kernel_md != user_md;
  if (plan->reorder) {
    plan->kernel_reorder =
        pass == kBackwardKernel
            ? dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), plan->kernel_md, Engine(), user_md))
            : dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), user_md, Engine(), plan->kernel_md));
  }
  plans.emplace(key, plan);
  return plan;
}

// Runs one pass. `x`, `w`, `y` are the activations, HWIO kernel and output-side
// activations of the forward convolution; which of them are written depends on `pass`.
ffi::Error Run(Pass pass, const Geometry& g, float* x, float* w, float* y) {
  try {
    // This thread's teams from here on: primitives are created and run with one count.
    omp_set_num_threads(ThreadsPerCall());
    const auto plan = GetPlan(g, pass);
    auto& engine = Engine();
    dnnl::stream stream(engine);
    memory x_mem(g.Activations(g.x), engine, x);
    memory y_mem(g.Activations(g.y), engine, y);
    memory w_user(g.Kernel(g.KernelTag()), engine, w);
    memory w_mem = plan->reorder ? memory(plan->kernel_md, engine) : w_user;
    thread_local std::vector<char> scratch;  // grows to the largest pass this thread ran
    if (scratch.size() < plan->scratch_md.get_size()) scratch.resize(plan->scratch_md.get_size());
    memory scratch_mem(plan->scratch_md, engine, scratch.data());
    if (pass != kBackwardKernel && plan->reorder) {
      plan->kernel_reorder.execute(stream, {{DNNL_ARG_FROM, w_user}, {DNNL_ARG_TO, w_mem}});
    }
    if (pass == kForward) {
      plan->conv.execute(stream, {{DNNL_ARG_SRC, x_mem}, {DNNL_ARG_WEIGHTS, w_mem},
                                  {DNNL_ARG_DST, y_mem}, {DNNL_ARG_SCRATCHPAD, scratch_mem}});
    } else if (pass == kBackwardInput) {
      plan->conv.execute(stream, {{DNNL_ARG_DIFF_SRC, x_mem}, {DNNL_ARG_WEIGHTS, w_mem},
                                  {DNNL_ARG_DIFF_DST, y_mem}, {DNNL_ARG_SCRATCHPAD, scratch_mem}});
    } else {
      plan->conv.execute(stream, {{DNNL_ARG_SRC, x_mem}, {DNNL_ARG_DIFF_WEIGHTS, w_mem},
                                  {DNNL_ARG_DIFF_DST, y_mem}, {DNNL_ARG_SCRATCHPAD, scratch_mem}});
      if (plan->reorder) {
        plan->kernel_reorder.execute(stream, {{DNNL_ARG_FROM, w_mem}, {DNNL_ARG_TO, w_user}});
      }
    }
    stream.wait();
  } catch (const std::exception& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN convolution: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                   ffi::ResultBuffer<ffi::F32> y, Ints strides, Ints dilations, Ints pad_lo,
                   Ints pad_hi, int64_t groups) {
  auto g = MakeGeometry(x.dimensions(), w.dimensions(), y->dimensions(), strides, dilations,
                        pad_lo, pad_hi, groups);
  return Run(kForward, g, x.typed_data(), w.typed_data(), y->typed_data());
}

ffi::Error BackwardInput(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                         ffi::ResultBuffer<ffi::F32> dx, Ints strides, Ints dilations,
                         Ints pad_lo, Ints pad_hi, int64_t groups) {
  auto g = MakeGeometry(dx->dimensions(), w.dimensions(), dy.dimensions(), strides, dilations,
                        pad_lo, pad_hi, groups);
  return Run(kBackwardInput, g, dx->typed_data(), w.typed_data(), dy.typed_data());
}

ffi::Error BackwardKernel(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                          ffi::ResultBuffer<ffi::F32> dw, Ints strides, Ints dilations,
                          Ints pad_lo, Ints pad_hi, int64_t groups) {
  auto g = MakeGeometry(x.dimensions(), dw->dimensions(), dy.dimensions(), strides, dilations,
                        pad_lo, pad_hi, groups);
  return Run(kBackwardKernel, g, x.typed_data(), dw->typed_data(), dy.typed_data());
}

}  // namespace

#define RESEARCH_BIND                             \
  ffi::Ffi::Bind()                                \
      .Arg<ffi::Buffer<ffi::F32>>()               \
      .Arg<ffi::Buffer<ffi::F32>>()               \
      .Ret<ffi::Buffer<ffi::F32>>()               \
      .Attr<Ints>("strides")                      \
      .Attr<Ints>("dilations")                    \
      .Attr<Ints>("pad_lo")                       \
      .Attr<Ints>("pad_hi")                       \
      .Attr<int64_t>("groups")

XLA_FFI_DEFINE_HANDLER_SYMBOL(ResearchOnednnConvForward, Forward, RESEARCH_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(ResearchOnednnConvBackwardInput, BackwardInput, RESEARCH_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(ResearchOnednnConvBackwardKernel, BackwardKernel, RESEARCH_BIND);
