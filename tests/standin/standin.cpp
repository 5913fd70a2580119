// A stand-in accelerator for the test suite: PyTorch's PrivateUse1 backend, renamed "standin".
//
// Its tensors live in host memory and every operator runs the CPU kernel (through
// at::native::cpu_fallback), but the device is distinct: an operator that mixes a standin tensor
// with a CPU tensor of one or more dimensions raises "Expected all tensors to be on the same
// device" exactly as CUDA does, so mixed-device bugs surface without a GPU. Every blocking
// device-to-host transfer (a copy to the CPU, .item(), bool()/float() of a tensor) increments a
// counter that Python reads, so tests and the benchmark can count host-device synchronisations.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/EmptyTensor.h>
#include <ATen/detail/PrivateUse1HooksInterface.h>
#include <ATen/native/CPUFallback.h>
#include <ATen/native/Resize.h>
#include <ATen/ops/_local_scalar_dense.h>
#include <ATen/ops/_reshape_alias_native.h>
#include <ATen/ops/as_strided_native.h>
#include <ATen/ops/resize_native.h>
#include <ATen/ops/unfold_native.h>
#include <ATen/ops/view_native.h>
#include <c10/core/Allocator.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/core/impl/alloc_cpu.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <atomic>
#include <cstring>
#include <string>

namespace {

std::atomic<int64_t> sync_count{0};      // blocking device-to-host reads
std::atomic<int64_t> upload_count{0};    // host-to-device copies
// The CPU fallback moves its operands to the host and back internally: not the user's transfers.
thread_local bool in_fallback = false;

void free_host(void* ptr) { c10::free_cpu(ptr); }

struct StandInAllocator final : at::Allocator {
  at::DataPtr allocate(size_t nbytes) override {
    void* data = nbytes > 0 ? c10::alloc_cpu(nbytes) : nullptr;
    return {data, data, &free_host, at::Device(at::DeviceType::PrivateUse1, 0)};
  }
  at::DeleterFnPtr raw_deleter() const override { return &free_host; }
  void copy_data(void* dest, const void* src, std::size_t count) const final {
    if (count > 0) std::memcpy(dest, src, count);
  }
};

StandInAllocator standin_allocator;
REGISTER_ALLOCATOR(c10::DeviceType::PrivateUse1, &standin_allocator);

struct StandInGuardImpl final : c10::impl::DeviceGuardImplInterface {
  static constexpr c10::DeviceType static_type = c10::DeviceType::PrivateUse1;
  c10::DeviceType type() const override { return static_type; }
  c10::Device exchangeDevice(c10::Device d) const override { return c10::Device(static_type, 0); }
  c10::Device getDevice() const override { return c10::Device(static_type, 0); }
  void setDevice(c10::Device d) const override {}
  void uncheckedSetDevice(c10::Device d) const noexcept override {}
  c10::Stream getStream(c10::Device d) const noexcept override { return c10::Stream(c10::Stream::DEFAULT, d); }
  c10::Stream exchangeStream(c10::Stream s) const noexcept override { return s; }
  c10::DeviceIndex deviceCount() const noexcept override { return 1; }
  void record(void**, const c10::Stream&, const c10::DeviceIndex, const c10::EventFlag) const override {}
  void block(void*, const c10::Stream&) const override {}
  bool queryEvent(void*) const override { return true; }
  void destroyEvent(void*, const c10::DeviceIndex) const noexcept override {}
  void synchronizeStream(const c10::Stream&) const override {}
  void synchronizeDevice(const c10::DeviceIndex) const override {}
};

C10_REGISTER_GUARD_IMPL(PrivateUse1, StandInGuardImpl);

// What the autograd engine and the generator lookup ask of an accelerator.
struct StandInHooks final : at::PrivateUse1HooksInterface {
  bool isBuilt() const override { return true; }
  bool isAvailable() const override { return true; }
  bool hasPrimaryContext(c10::DeviceIndex) const override { return true; }
  c10::DeviceIndex deviceCount() const override { return 1; }
  c10::DeviceIndex getCurrentDevice() const override { return 0; }
  void setCurrentDevice(c10::DeviceIndex) const override {}
  c10::DeviceIndex exchangeDevice(c10::DeviceIndex) const override { return 0; }
  c10::DeviceIndex maybeExchangeDevice(c10::DeviceIndex) const override { return 0; }
  const at::Generator& getDefaultGenerator(c10::DeviceIndex) const override {
    return at::detail::getDefaultCPUGenerator();  // random kernels run on the host
  }
  at::Device getDeviceFromPtr(void*) const override { return at::Device(at::DeviceType::PrivateUse1, 0); }
  at::Allocator* getPinnedMemoryAllocator() const override { return c10::GetCPUAllocator(); }
  void resizePrivateUse1Bytes(const c10::Storage& storage, size_t newsize) const override {
    at::DataPtr fresh = standin_allocator.allocate(newsize);
    const size_t keep = std::min(newsize, storage.nbytes());
    if (keep > 0) std::memcpy(fresh.get(), storage.data(), keep);
    storage.unsafeGetStorageImpl()->set_data_ptr_noswap(std::move(fresh));
    storage.unsafeGetStorageImpl()->set_nbytes(newsize);
  }
};

const bool hooks_registered = [] {
  static StandInHooks hooks;
  at::RegisterPrivateUse1HooksInterface(&hooks);
  return true;
}();

// A CPU tensor that aliases the host memory of a standin tensor (same sizes, strides, offset).
at::Tensor host_alias(const at::Tensor& t) {
  if (!t.is_privateuseone()) return t;
  return at::from_blob(
      t.data_ptr(), t.sizes(), t.strides(), [](void*) {}, t.options().device(at::kCPU));
}

at::Tensor empty_memory_format(
    c10::IntArrayRef size, std::optional<c10::ScalarType> dtype, std::optional<c10::Layout> layout,
    std::optional<c10::Device> device, std::optional<bool> pin_memory,
    std::optional<c10::MemoryFormat> memory_format) {
  constexpr c10::DispatchKeySet keys(c10::DispatchKey::PrivateUse1);
  return at::detail::empty_generic(
      size, &standin_allocator, keys, c10::dtype_or_default(dtype), memory_format);
}

at::Tensor empty_strided(
    c10::IntArrayRef size, c10::IntArrayRef stride, std::optional<c10::ScalarType> dtype,
    std::optional<c10::Layout> layout, std::optional<c10::Device> device, std::optional<bool> pin_memory) {
  constexpr c10::DispatchKeySet keys(c10::DispatchKey::PrivateUse1);
  return at::detail::empty_strided_generic(size, stride, &standin_allocator, keys, c10::dtype_or_default(dtype));
}

at::Tensor copy_from(const at::Tensor& self, const at::Tensor& dst, bool non_blocking) {
  if (in_fallback) {
  } else if (self.is_privateuseone() && dst.is_cpu()) {
    ++sync_count;  // a device-to-host copy: the host waits for the device
  } else if (self.is_cpu() && dst.is_privateuseone()) {
    ++upload_count;
  }
  at::Tensor target = host_alias(dst);
  target.copy_(host_alias(self));
  return dst;
}

at::Tensor copy_from_and_resize(const at::Tensor& self, const at::Tensor& dst) {
  dst.resize_(self.sizes());
  return copy_from(self, dst, false);
}

at::Scalar local_scalar_dense(const at::Tensor& self) {
  if (!in_fallback) ++sync_count;
  return at::_local_scalar_dense(host_alias(self));
}

// resize_ as the CPU does it (host memory from this device's allocator), without the CPU's
// deterministic-mode fill, which would view the storage as a CPU tensor.
const at::Tensor& resize(const at::Tensor& self, c10::SymIntArrayRef size,
                         std::optional<c10::MemoryFormat> memory_format) {
  at::native::resize_impl_cpu_(self.unsafeGetTensorImpl(), C10_AS_INTARRAYREF_SLOW(size), std::nullopt);
  if (memory_format.has_value() && *memory_format != at::MemoryFormat::Preserve) {
    self.unsafeGetTensorImpl()->empty_tensor_restride(*memory_format);
  }
  return self;
}

// Operators that take CPU index tensors on a device as CUDA does (they move them themselves).
bool accepts_host_indices(const c10::OperatorName& name) {
  const std::string& n = name.name;
  return n == "aten::index" || n == "aten::index_put_" || n == "aten::_index_put_impl_" ||
         n == "aten::index_put";
}

void check_same_device(const c10::OperatorHandle& op, const torch::jit::Stack& stack) {
  const auto num_args = op.schema().arguments().size();
  if (accepts_host_indices(op.schema().operator_name())) return;
  bool on_device = false;
  bool on_host = false;
  auto visit = [&](const at::Tensor& t) {
    if (!t.defined()) return;
    if (t.is_privateuseone()) {
      on_device = true;
    } else if (t.is_cpu() && t.dim() > 0) {  // 0-dim CPU tensors pass as scalars, as on CUDA
      on_host = true;
    }
  };
  for (auto it = stack.end() - static_cast<std::ptrdiff_t>(num_args); it != stack.end(); ++it) {
    if (it->isTensor()) {
      visit(it->toTensor());
    } else if (it->isTensorList()) {
      for (const at::Tensor& t : it->toTensorVector()) visit(t);
    } else if (it->isList()) {
      for (const c10::IValue& v : it->toListRef()) {
        if (v.isTensor()) visit(v.toTensor());
      }
    }
  }
  TORCH_CHECK(!(on_device && on_host),
              "Expected all tensors to be on the same device, but found at least two devices, standin:0 and cpu! "
              "(in ", op.schema().operator_name().name, ")");
}

void standin_fallback(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  check_same_device(op, *stack);
  const bool outer = in_fallback;
  in_fallback = true;
  try {
    at::native::cpu_fallback(op, stack);
  } catch (...) {
    in_fallback = outer;
    throw;
  }
  in_fallback = outer;
}

// Convolutions reach a backend without its own kernels as *_overrideable: run the CPU kernels on
// host aliases of the operands and put the results on the device.
struct FallbackScope {
  bool outer;
  FallbackScope() : outer(in_fallback) { in_fallback = true; }
  ~FallbackScope() { in_fallback = outer; }
};

void require_device(std::initializer_list<const at::Tensor*> tensors, const char* op) {
  for (const at::Tensor* t : tensors) {
    TORCH_CHECK(!t->defined() || t->is_privateuseone() || t->dim() == 0,
                "Expected all tensors to be on the same device, but found at least two devices, standin:0 and cpu! "
                "(in ", op, ")");
  }
}

at::Tensor to_device(const at::Tensor& host) {
  if (!host.defined()) return host;
  at::Tensor out = at::empty(host.sizes(), host.options().device(c10::Device(c10::DeviceType::PrivateUse1, 0)));
  at::Tensor alias = host_alias(out);
  alias.copy_(host);
  return out;
}

at::Tensor convolution_overrideable(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool transposed,
    at::IntArrayRef output_padding, int64_t groups) {
  at::Tensor b = bias.has_value() ? *bias : at::Tensor();
  require_device({&input, &weight, &b}, "aten::convolution");
  FallbackScope scope;
  std::optional<at::Tensor> host_bias = b.defined() ? std::optional<at::Tensor>(host_alias(b)) : std::nullopt;
  return to_device(at::convolution(host_alias(input), host_alias(weight), host_bias, stride, padding, dilation,
                                   transposed, output_padding, groups));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> convolution_backward_overrideable(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, bool transposed, at::IntArrayRef output_padding,
    int64_t groups, std::array<bool, 3> output_mask) {
  require_device({&grad_output, &input, &weight}, "aten::convolution_backward");
  FallbackScope scope;
  std::vector<int64_t> bias_sizes{transposed ? weight.size(1) * groups : weight.size(0)};
  auto [gi, gw, gb] = at::convolution_backward(
      host_alias(grad_output), host_alias(input), host_alias(weight), at::IntArrayRef(bias_sizes), stride,
      padding, dilation, transposed, output_padding, groups, output_mask);
  return {to_device(gi), to_device(gw), to_device(gb)};
}

int64_t syncs() { return sync_count.load(); }
int64_t uploads() { return upload_count.load(); }

}  // namespace

TORCH_LIBRARY_IMPL(aten, PrivateUse1, m) {
  m.impl("empty.memory_format", empty_memory_format);
  m.impl("empty_strided", empty_strided);
  m.impl("_copy_from", copy_from);
  m.impl("_copy_from_and_resize", copy_from_and_resize);
  m.impl("_local_scalar_dense", local_scalar_dense);
  m.impl("resize_", resize);
  m.impl("view", at::native::view);
  m.impl("as_strided", at::native::as_strided_tensorimpl);
  m.impl("_reshape_alias", at::native::_reshape_alias);
  m.impl("unfold", at::native::unfold);
  m.impl("convolution_overrideable", convolution_overrideable);
  m.impl("convolution_backward_overrideable", convolution_backward_overrideable);
}

TORCH_LIBRARY_IMPL(_, PrivateUse1, m) {
  m.fallback(torch::CppFunction::makeFromBoxedFunction<&standin_fallback>());
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("syncs", &syncs, "blocking device-to-host reads so far");
  m.def("uploads", &uploads, "host-to-device copies so far");
}
