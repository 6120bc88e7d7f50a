// The checked device; see checked_device.h.
#include "runtime/checked_device.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <sstream>
#include <string>
#include <type_traits>

#include "kernels/cpu/table.h"  // the checked tables forward to the CPU kernels

namespace anyk {

namespace {
constexpr size_t kGiB = size_t(1) << 30;
size_t page_size() {
  static const size_t p = size_t(::sysconf(_SC_PAGESIZE));
  return p;
}
size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }
std::atomic<int> g_pointer_mode{int(PointerCheck::Fail)};
std::atomic<int64_t> g_misplaced{0}, g_syncs{0};
}  // namespace

void set_pointer_check(PointerCheck mode) { g_pointer_mode = int(mode); }
PointerCheck pointer_check() { return PointerCheck(g_pointer_mode.load()); }
int64_t misplaced_pointers() { return g_misplaced.load(); }
int64_t host_syncs() { return g_syncs.load(); }
void reset_checked_counters() {
  g_misplaced = 0;
  g_syncs = 0;
}

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
  ++g_syncs;
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

template <class A> const char* pointee() {
  using P = std::remove_cv_t<std::remove_pointer_t<A>>;
  if constexpr (std::is_same_v<P, float>) return "float*";
  else if constexpr (std::is_same_v<P, double>) return "double*";
  else if constexpr (std::is_same_v<P, int32_t>) return "int32_t*";
  else if constexpr (std::is_same_v<P, uint16_t>) return "uint16_t* (bf16)";
  else return "pointer";
}

// One pointer argument: `pos` counts the kernel's arguments after the Ctx from 1; `host_pos` is
// the one documented host argument (0: none).
template <class A> void check_pointer(const char* kernel, int pos, int host_pos, const A& a) {
  if constexpr (std::is_pointer_v<A>) {
    if (a == nullptr || pointer_check() == PointerCheck::Off) return;
    const bool in_pool = checked_pool().owns(a);
    const bool host = pos == host_pos;
    if (in_pool != host) return;
    ++g_misplaced;
    if (pointer_check() != PointerCheck::Fail) return;
    std::ostringstream m;
    m << "checked device: kernel " << kernel << " argument " << pos << " (" << pointee<A>() << ") is "
      << (host ? "checked-device memory where the kernel table documents HOST memory"
               : "host memory, not memory of the checked device")
      << " hint: a GPU kernel would " << (host ? "fault reading it on the host" : "read an illegal address")
      << "; move the data with the copy ops (runtime/device.h)";
    throw Error(m.str());
  }
}
template <class... A> void check_pointers(const char* kernel, int host_pos, const A&... a) {
  int pos = 0;
  (check_pointer(kernel, ++pos, host_pos, a), ...);
}

// Every entry checks where its pointers live, opens the pool, then calls the CPU kernel; an entry
// that returns a value is a host synchronisation and is counted as one.
#define ANYK_CHECKED_H(f, host_pos)                                                 \
  k.f = [](const Ctx& c, auto... a) {                                               \
    check_pointers(#f, host_pos, a...);                                             \
    if constexpr (!std::is_void_v<decltype(g_cpu<T>.f(c, a...))>) ++g_syncs;        \
    CheckedPool::Open o(checked_pool());                                            \
    return g_cpu<T>.f(c, a...);                                                     \
  }
#define ANYK_CHECKED(f) ANYK_CHECKED_H(f, 0)
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
  ANYK_CHECKED_H(grouped_linear_forward, 4); ANYK_CHECKED_H(grouped_linear_backward, 6);  // offsets: host
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
#undef ANYK_CHECKED_H

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

namespace {
// ANYK_CHECKED_POINTERS=fail (default) | count | off. With count, the totals are printed at exit.
void pointer_mode_from_env() {
  const char* e = std::getenv("ANYK_CHECKED_POINTERS");
  if (!e || !*e) return;
  const std::string v = e;
  ANYK_CHECK(v == "fail" || v == "count" || v == "off",
             "ANYK_CHECKED_POINTERS='" << v << "' is not a pointer-check mode: use fail, count or off");
  set_pointer_check(v == "fail" ? PointerCheck::Fail : v == "count" ? PointerCheck::Count : PointerCheck::Off);
  if (v == "count")
    std::atexit([] {
      std::fprintf(stderr, "checked device: %lld misplaced pointer arguments, %lld host syncs\n",
                   (long long)misplaced_pointers(), (long long)host_syncs());
    });
}
}  // namespace

void register_checked_device() {
  static std::once_flag once;
  std::call_once(once, [] {
    pointer_mode_from_env();
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
