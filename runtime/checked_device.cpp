// The checked device; see checked_device.h.
#include "runtime/checked_device.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <mutex>

#include "kernels/cpu/table.h"  // the checked tables forward to the CPU kernels

namespace anyk {

namespace {
constexpr size_t kGiB = size_t(1) << 30;
size_t page_size() {
  static const size_t p = size_t(::sysconf(_SC_PAGESIZE));
  return p;
}
size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }
}  // namespace

CheckedPool::CheckedPool() {
  size_t gib = 64;
  if (const char* e = std::getenv("ANYK_CHECKED_POOL_GIB")) {
    char* end = nullptr;
    long v = std::strtol(e, &end, 10);
    ANYK_CHECK(end != e && *end == 0 && v >= 1 && v <= 65536,
               "ANYK_CHECKED_POOL_GIB='" << e << "' is not a size in GiB in [1, 65536]");
    gib = size_t(v);
  }
  for (; gib >= 1; gib /= 2) {
    void* p = ::mmap(nullptr, gib * kGiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p != MAP_FAILED) {
      base_ = static_cast<std::byte*>(p);
      reserve_ = gib * kGiB;
      return;
    }
  }
  ANYK_FAIL("checked device: cannot reserve 1 GiB of address space for its pool");
}

CheckedPool::~CheckedPool() { ::munmap(base_, reserve_); }

void CheckedPool::set_strict(bool on) {
  strict_ = on;
  protect(!on);
}

void CheckedPool::protect(bool open) {
  if (mapped_) ::mprotect(base_, mapped_, open ? PROT_READ | PROT_WRITE : PROT_NONE);
}

void* CheckedPool::alloc(size_t bytes, size_t align) {
  const size_t start = (top_ + align - 1) / align * align;
  ANYK_CHECK(start + bytes <= reserve_, "checked device pool exhausted: " << (start + bytes) << " bytes wanted of its "
                                                                         << (reserve_ / kGiB)
                                                                         << " GiB hint: raise ANYK_CHECKED_POOL_GIB");
  top_ = start + bytes;
  live_[start] = bytes;
  const size_t end = round_up(top_, page_size());
  if (end > mapped_) {
    // New pages: closed like the rest of the pool in strict mode unless a kernel or copy has it open.
    if (strict_ && depth_ == 0) ::mprotect(base_ + mapped_, end - mapped_, PROT_NONE);
    mapped_ = end;
  }
  return base_ + start;
}

void CheckedPool::free(void* p, size_t) {
  if (!p) return;
  ANYK_CHECK(owns(p), "checked free of a pointer outside the pool");
  live_.erase(size_t(static_cast<std::byte*>(p) - base_));
  top_ = live_.empty() ? 0 : live_.rbegin()->first + live_.rbegin()->second;
}

void CheckedPool::zero(void* p, size_t bytes) {
  Open o(*this);
  std::memset(p, 0, bytes);
}

void CheckedPool::to_host(void* dst, const void* src, size_t bytes) {
  ANYK_CHECK(owns(src), "checked to_host from a pointer outside the pool");
  Open o(*this);
  std::memcpy(dst, src, bytes);
}

void CheckedPool::from_host(void* dst, const void* src, size_t bytes) {
  ANYK_CHECK(owns(dst), "checked from_host into a pointer outside the pool");
  Open o(*this);
  std::memcpy(dst, src, bytes);
}

void CheckedPool::copy(void* dst, const void* src, size_t bytes) {
  ANYK_CHECK(owns(dst) && owns(src), "checked copy with a pointer outside the pool");
  Open o(*this);
  std::memmove(dst, src, bytes);
}

CheckedPool& checked_pool() {
  static CheckedPool pool;
  return pool;
}

namespace {

template <class T> Kernels<T> g_cpu;  // the CPU table the checked one forwards to

// Every entry opens the pool, then calls the CPU kernel.
#define ANYK_CHECKED(f) \
  k.f = [](const Ctx& c, auto... a) { CheckedPool::Open o(checked_pool()); return g_cpu<T>.f(c, a...); }
template <class T> Kernels<T> make() {
  // A kernel added to kernels.h must be wrapped here too (else it would run with the pool closed).
  static_assert(sizeof(Kernels<T>) == 54 * sizeof(void*), "wrap the new kernel in runtime/checked_device.cpp");
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

struct sigaction g_prev_segv;

// Async-signal-safe: write(2) of fixed text and a hex offset.
void on_segv(int sig, siginfo_t* info, void* ctx) {
  CheckedPool& pool = checked_pool();
  if (pool.strict() && info && pool.owns(info->si_addr)) {
    char msg[256] = "anyk: error: host code touched checked-device memory at 0x";
    size_t n = std::strlen(msg);
    char hex[20];
    int h = 0;
    uintptr_t v = reinterpret_cast<uintptr_t>(info->si_addr);
    do {
      hex[h++] = "0123456789abcdef"[v & 15];
      v >>= 4;
    } while (v && h < 20);
    while (h > 0 && n < sizeof msg - 1) msg[n++] = hex[--h];
    const char tail[] = " outside a kernel or copy op hint: run it under gdb to see the access\n";
    for (size_t i = 0; tail[i] && n < sizeof msg - 1; ++i) msg[n++] = tail[i];
    ssize_t w = ::write(2, msg, n);
    (void)w;
    ::signal(SIGSEGV, SIG_DFL);  // returning re-runs the access: the default action ends the process
    return;
  }
  ::sigaction(SIGSEGV, &g_prev_segv, nullptr);  // not ours: whoever was there before handles it
  (void)sig;
  (void)ctx;
}

}  // namespace

void register_checked_device() {
  static std::once_flag once;
  std::call_once(once, [] {
    static const Kernels<float> f32 = make<float>();
    static const Kernels<double> f64 = make<double>();
    register_kernels(Device::Checked, &f32, &f64);
    register_allocator(Device::Checked, &checked_pool());
  });
}

void report_checked_faults() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGSEGV, &sa, &g_prev_segv);
  });
}

}  // namespace anyk
