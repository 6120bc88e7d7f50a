// The (device, dtype) -> kernel table registry; see kernels.h.
#include <mutex>
#include <stdexcept>
#include <string>

#include "kernels/cpu/table.h"
#include "kernels/kernels.h"

namespace anyk {

namespace {
constexpr int kMaxDevices = 8;
struct Entry {
  const Kernels<float>* f32 = nullptr;
  const Kernels<double>* f64 = nullptr;
  Ctx ctx;
};
Entry g_tables[kMaxDevices];
std::once_flag g_builtin;

// The CPU backend is always built in; it registers itself for Device 0 (CPU) on first use.
void register_builtin() {
  std::call_once(g_builtin, [] { g_tables[0] = Entry{&cpu::kernel_table<float>(), &cpu::kernel_table<double>(), {}}; });
}

Entry& entry(Device d) {
  register_builtin();
  int i = static_cast<int>(d);
  if (i < 0 || i >= kMaxDevices) throw std::runtime_error("device index " + std::to_string(i) + " is out of range");
  return g_tables[i];
}

[[noreturn]] void missing(Device d, const char* dtype) {
  throw std::runtime_error("no " + std::string(dtype) + " kernels registered for device " +
                           std::to_string(static_cast<int>(d)) +
                           " (hint: the backend for it is not built or not registered)");
}
}  // namespace

void register_kernels(Device d, const Kernels<float>* f32, const Kernels<double>* f64, Ctx ctx) {
  entry(d) = Entry{f32, f64, ctx};
}

template <> const Kernels<float>& kernels<float>(Device d) {
  const Entry& e = entry(d);
  if (!e.f32) missing(d, "f32");
  return *e.f32;
}

template <> const Kernels<double>& kernels<double>(Device d) {
  const Entry& e = entry(d);
  if (!e.f64) missing(d, "f64");
  return *e.f64;
}

const Ctx& exec_ctx(Device d) { return entry(d).ctx; }

}  // namespace anyk
