// The checked pseudo-device (tests only): Device::Checked runs the CPU kernels over memory from
// its own mmap'd pool, which the host may not read directly. Tensors on it refuse ptr<T>(); in
// strict mode the whole pool is PROT_NONE outside kernel calls and copy ops, so any stray host
// read or write of its memory faults. If code runs on it and matches the CPU bit for bit, it
// went through the seam (kernel tables, allocator, copy ops) and nowhere else.
#pragma once
#include <sys/mman.h>

#include <cstring>
#include <mutex>

#include "kernels/cpu/table.h"
#include "runtime/device.h"

namespace anyk::test {

class CheckedPool final : public Allocator {
 public:
  static constexpr size_t kReserve = size_t(2) << 30;  // virtual address space only

  CheckedPool() {
    void* p = ::mmap(nullptr, kReserve, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    ANYK_CHECK(p != MAP_FAILED, "checked device: cannot reserve " << (kReserve >> 20) << " MiB");
    base_ = static_cast<std::byte*>(p);
  }
  ~CheckedPool() override { ::munmap(base_, kReserve); }

  bool owns(const void* p) const {
    auto* b = static_cast<const std::byte*>(p);
    return b >= base_ && b < base_ + kReserve;
  }
  size_t in_use() const { return top_; }

  // Strict: the pool is inaccessible to the host except inside kernel calls and copy ops.
  void set_strict(bool on) {
    strict_ = on;
    protect(!on);
  }
  bool strict() const { return strict_; }
  // Opens the pool for the duration of a kernel call or a copy (re-entrant).
  struct Open {
    CheckedPool& p;
    explicit Open(CheckedPool& pool) : p(pool) {
      if (p.strict_ && p.depth_++ == 0) p.protect(true);
    }
    ~Open() {
      if (p.strict_ && --p.depth_ == 0) p.protect(false);
    }
  };

  // A bump allocator: freeing the newest block rewinds; other blocks are reclaimed at teardown.
  void* alloc(size_t bytes, size_t align) override {
    size_t start = (top_ + align - 1) / align * align;
    ANYK_CHECK(start + bytes <= kReserve, "checked device pool exhausted");
    top_ = start + bytes;
    last_ = start;
    return base_ + start;
  }
  void free(void* p, size_t bytes) override {
    if (static_cast<std::byte*>(p) == base_ + last_ && last_ + bytes >= top_) top_ = last_;
  }
  void zero(void* p, size_t bytes) override {
    Open o(*this);
    std::memset(p, 0, bytes);
  }
  void to_host(void* dst, const void* src, size_t bytes) override {
    ANYK_CHECK(owns(src), "checked to_host from a pointer outside the pool");
    Open o(*this);
    std::memcpy(dst, src, bytes);
  }
  void from_host(void* dst, const void* src, size_t bytes) override {
    ANYK_CHECK(owns(dst), "checked from_host into a pointer outside the pool");
    Open o(*this);
    std::memcpy(dst, src, bytes);
  }
  void copy(void* dst, const void* src, size_t bytes) override {
    ANYK_CHECK(owns(dst) && owns(src), "checked copy with a pointer outside the pool");
    Open o(*this);
    std::memmove(dst, src, bytes);
  }

 private:
  void protect(bool open) { ::mprotect(base_, kReserve, open ? PROT_READ | PROT_WRITE : PROT_NONE); }
  std::byte* base_ = nullptr;
  size_t top_ = 0, last_ = 0;
  bool strict_ = false;
  int depth_ = 0;
};

inline CheckedPool& checked_pool() {
  static CheckedPool pool;
  return pool;
}

namespace checked_detail {
template <class T> inline Kernels<T> g_cpu;  // the CPU table the checked one forwards to

// Every entry opens the pool, then calls the CPU kernel.
#define ANYK_CHECKED(f) \
  k.f = [](const Ctx& c, auto... a) { CheckedPool::Open o(checked_pool()); return g_cpu<T>.f(c, a...); }
template <class T> Kernels<T> make() {
  g_cpu<T> = cpu::kernel_table<T>();
  Kernels<T> k{};
  ANYK_CHECKED(fill); ANYK_CHECKED(copy); ANYK_CHECKED(accumulate); ANYK_CHECKED(fill_div);
  ANYK_CHECKED(sum_div); ANYK_CHECKED(sumsq_accumulate); ANYK_CHECKED(first_bad_id);
  ANYK_CHECKED(embedding_forward); ANYK_CHECKED(embedding_backward);
  ANYK_CHECKED(linear_forward); ANYK_CHECKED(linear_backward);
  ANYK_CHECKED(add_forward); ANYK_CHECKED(add_backward);
  ANYK_CHECKED(scale_forward); ANYK_CHECKED(scale_backward);
  ANYK_CHECKED(rmsnorm_forward); ANYK_CHECKED(rmsnorm_backward);
  ANYK_CHECKED(rope_tables); ANYK_CHECKED(rope_forward); ANYK_CHECKED(rope_backward);
  ANYK_CHECKED(attention_forward); ANYK_CHECKED(attention_backward);
  ANYK_CHECKED(swiglu_forward); ANYK_CHECKED(swiglu_backward);
  ANYK_CHECKED(cross_entropy_forward); ANYK_CHECKED(cross_entropy_backward);
  ANYK_CHECKED(gather_rows_forward); ANYK_CHECKED(gather_rows_backward);
  ANYK_CHECKED(scatter_add_rows_forward); ANYK_CHECKED(scatter_add_rows_backward);
  ANYK_CHECKED(grouped_linear_forward); ANYK_CHECKED(grouped_linear_backward);
  ANYK_CHECKED(adamw_update);
  ANYK_CHECKED(router_forward); ANYK_CHECKED(router_backward);
  ANYK_CHECKED(top_p_count_forward); ANYK_CHECKED(emoe_sample_forward); ANYK_CHECKED(expert_counts);
  ANYK_CHECKED(lb_loss_forward); ANYK_CHECKED(lb_loss_backward);
  ANYK_CHECKED(z_loss_forward); ANYK_CHECKED(z_loss_backward);
  ANYK_CHECKED(kl_loss_forward); ANYK_CHECKED(kl_loss_backward); ANYK_CHECKED(kl_loss_backward_f64);
  ANYK_CHECKED(router_aux_forward); ANYK_CHECKED(router_aux_forward_f64);
  ANYK_CHECKED(router_aux_backward); ANYK_CHECKED(router_aux_backward_f64);
  ANYK_CHECKED(convert_from_f64);
  ANYK_CHECKED(attention_cached_forward); ANYK_CHECKED(linear_rows_forward);
  if (g_cpu<T>.to_bf16) {
    ANYK_CHECKED(to_bf16);
    ANYK_CHECKED(from_bf16);
  }
  return k;
}
#undef ANYK_CHECKED
}  // namespace checked_detail

// Registers the checked device's kernel tables and allocator (once per process).
inline void register_checked_device() {
  static std::once_flag once;
  std::call_once(once, [] {
    static const Kernels<float> f32 = checked_detail::make<float>();
    static const Kernels<double> f64 = checked_detail::make<double>();
    register_kernels(Device::Checked, &f32, &f64);
    register_allocator(Device::Checked, &checked_pool());
  });
}

}  // namespace anyk::test
