// The checked device (`--device checked`, a debugging aid): Device::Checked runs the CPU kernels
// over memory from its own mmap'd pool, which the host may not read directly. Tensors on it
// refuse ptr<T>(); in strict mode the pool is PROT_NONE outside kernel calls and copy ops, so any
// stray host read or write of its memory faults. Code that runs on it and matches the CPU bit for
// bit went through the device seam (kernel tables, allocator, copy ops) and nowhere else: it is
// how the seam is proven without a GPU. The CLI always runs it strict (runtime/devices.h).
#pragma once
#include <cstddef>
#include <map>

#include "runtime/device.h"

namespace anyk {

class CheckedPool final : public Allocator {
 public:
  // Reserves address space only (MAP_NORESERVE): ANYK_CHECKED_POOL_GIB GiB, default 64, halved
  // down to 1 GiB while the system refuses it. Pages cost memory once touched.
  CheckedPool();
  ~CheckedPool() override;
  CheckedPool(const CheckedPool&) = delete;
  CheckedPool& operator=(const CheckedPool&) = delete;

  bool owns(const void* p) const {
    auto* b = static_cast<const std::byte*>(p);
    return b >= base_ && b < base_ + reserve_;
  }
  size_t in_use() const { return top_; }      // bytes up to the end of the highest live block
  size_t reserved() const { return reserve_; }

  // Strict: the pool is inaccessible to the host except inside kernel calls and copy ops.
  void set_strict(bool on);
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

  // A bump allocator over live blocks: freeing the highest blocks lowers the top; a block freed
  // below a live one is reused once everything above it is freed.
  void* alloc(size_t bytes, size_t align) override;
  void free(void* p, size_t bytes) override;
  void zero(void* p, size_t bytes) override;
  void to_host(void* dst, const void* src, size_t bytes) override;
  void from_host(void* dst, const void* src, size_t bytes) override;
  void copy(void* dst, const void* src, size_t bytes) override;

 private:
  // mprotect of [base, mapped_): the pages ever handed out (the rest of the reserve is never touched).
  void protect(bool open);
  std::byte* base_ = nullptr;
  size_t reserve_ = 0, top_ = 0, mapped_ = 0;
  std::map<size_t, size_t> live_;  // offset -> bytes
  bool strict_ = false;
  int depth_ = 0;
};

CheckedPool& checked_pool();

// Residency check of every pointer a checked kernel receives (both directions of the seam):
// a pointer argument must lie in the checked pool (device memory), except the arguments the
// kernel table documents as HOST memory (kernels/kernels.h: grouped_linear's offsets), which must
// lie outside it. Null pointers ("not needed") pass. Fail (the default) throws one line naming the
// kernel and the argument; Count only counts (to measure a code path); Off checks nothing.
enum class PointerCheck { Off, Count, Fail };
void set_pointer_check(PointerCheck mode);
PointerCheck pointer_check();
// Pointers that broke the rule since the last reset (Count and Fail modes).
int64_t misplaced_pointers();
// Blocking device -> host transfers since the last reset: to_host copies of the pool (read_element,
// to_host_vector, staging) plus kernels that return a value to the host (first_bad_id). On a
// GPU each is a stream synchronisation.
int64_t host_syncs();
void reset_checked_counters();

// Registers the checked device's kernel tables (every CPU kernel, wrapped to open the pool) and
// its allocator; once per process.
void register_checked_device();

// For the CLI in strict mode: a SIGSEGV at a pool address prints one line naming the host access
// that bypassed the copy ops before the default action (core dump, debugger) takes over; other
// faults go to the handler that was installed before.
void report_checked_faults();

}  // namespace anyk
