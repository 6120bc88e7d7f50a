// The CUDA backend's device state: the GPU this process uses, its stream and cuBLAS handle, the
// caching device allocator, pinned staging for host copies and the kernels' scratch workspace.
// Everything here runs on one non-blocking stream, so a freed block is reused in stream order;
// only grouped_linear's `streams` strategy forks work onto side streams and joins it back.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda_api.h"
#include "core/types.h"

namespace anyk::cuda {

namespace {

constexpr size_t kBlasWorkspace = size_t(32) << 20;  // cuBLAS' recommendation for sm_90
constexpr size_t kPinnedMax = size_t(64) << 20;      // larger host copies go through in chunks

struct State {
  std::mutex mu;
  int device = -1;
  bool gemm_bf16 = false;
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  void* blas_ws = nullptr;
  // Caching allocator: rounded size -> free blocks; live pointer -> rounded size.
  std::unordered_map<size_t, std::vector<void*>> free_blocks;
  std::unordered_map<void*, size_t> live;
  size_t in_use = 0, cached = 0, high_water = 0;
  // Pinned host staging and the kernels' workspace (outside the allocator's accounting).
  void* pinned = nullptr;
  size_t pinned_bytes = 0;
  void* ws = nullptr;
  size_t ws_bytes = 0;
  // grouped_linear: the strategy, the side streams (created on first use) and the pinned slots of
  // upload_async.
  std::atomic<int> expert_gemm{int(xgemm::Strategy::Loop)};
  bool expert_gemm_env_read = false;
  bool side_ready = false;
  cudaStream_t side[xgemm::kSideStreams] = {};
  cublasHandle_t side_blas[xgemm::kSideStreams] = {};
  void* side_ws[xgemm::kSideStreams] = {};
  cudaEvent_t fork = nullptr, side_done[xgemm::kSideStreams] = {};
  struct Slot {
    void* host = nullptr;
    size_t bytes = 0;
    cudaEvent_t done = nullptr;
  } slots[16];  // more than the grouped_linear calls one MoE layer queues between host syncs
  int next_slot = 0;
};

State& st() {
  static State s;
  return s;
}

const char* visible_devices() {
  const char* v = std::getenv("CUDA_VISIBLE_DEVICES");
  return v ? v : "(unset)";
}

// Checks init() ran and makes its GPU current on the calling thread (the current device is per
// thread: a helper thread would otherwise allocate on GPU 0).
void require_init(const char* what) {
  ANYK_CHECK(st().stream != nullptr,
             what << " before anyk::cuda::init() hint: select the GPU first (--device cuda)");
  thread_local int bound = -1;
  if (bound != st().device) {
    ANYK_CUDA_CHECK(cudaSetDevice(st().device));
    bound = st().device;
  }
}

// Block sizes: 512-byte steps up to 1 MiB, then four steps per power of two (<= 25% waste), so
// a buffer freed and asked for again each step lands on the same key.
size_t round_size(size_t bytes) {
  if (bytes <= (size_t(1) << 20)) return (bytes + 511) / 512 * 512;
  int lg = 63 - __builtin_clzll(bytes);
  size_t step = size_t(1) << (lg - 2);
  return (bytes + step - 1) / step * step;
}

// Returns every cached block to the driver (cudaFree synchronises the device).
void release_cache(State& s) {
  for (auto& [size, blocks] : s.free_blocks)
    for (void* p : blocks) ANYK_CUDA_CHECK(cudaFree(p));
  s.free_blocks.clear();
  s.cached = 0;
}

void* raw_malloc(State& s, size_t bytes) {
  void* p = nullptr;
  cudaError_t err = cudaMalloc(&p, bytes);
  if (err == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();  // not sticky: clear it and retry with the cache returned
    release_cache(s);
    err = cudaMalloc(&p, bytes);
    if (err == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      ANYK_FAIL("out of GPU memory allocating " << bytes << " bytes (" << s.in_use << " in use, " << s.cached
                                                << " cached) hint: lower --batch/--seq-len or use more ranks");
    }
  }
  ANYK_CHECK(err == cudaSuccess, "cudaMalloc(" << bytes << ") failed: " << cudaGetErrorString(err));
  return p;
}

// Grows the pinned staging buffer to at least `bytes` (callers hold the lock).
void* pinned(State& s, size_t bytes) {
  if (s.pinned_bytes < bytes) {
    if (s.pinned) ANYK_CUDA_CHECK(cudaFreeHost(s.pinned));
    s.pinned = nullptr;
    s.pinned_bytes = 0;
    ANYK_CUDA_CHECK(cudaMallocHost(&s.pinned, bytes));
    s.pinned_bytes = bytes;
  }
  return s.pinned;
}

}  // namespace

bool built_with_cuda() { return true; }

namespace {
std::string cuda_version(int v) {  // 13000 -> "13.0"
  return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10);
}
}  // namespace

// 0 only when there is no GPU to use: the driver sees none (cudaErrorNoDevice), or no NVIDIA driver
// is installed. The runtime reports a missing driver and a driver too old for it alike
// (cudaErrorInsufficientDriver); the driver's version tells them apart (0: none loaded). Any other
// failure (an old driver, a stub libcuda, a driver that cannot start) throws with CUDA's message:
// a GPU that is there but unusable must never read as "no CUDA device visible".
int device_count() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err == cudaSuccess) return n;
  (void)cudaGetLastError();
  int driver = 0;
  if (cudaDriverGetVersion(&driver) != cudaSuccess) driver = 0;
  if (err == cudaErrorNoDevice || (err == cudaErrorInsufficientDriver && driver == 0)) return 0;
  ANYK_FAIL("CUDA cannot use this machine's GPUs: cudaGetDeviceCount failed with "
            << cudaGetErrorName(err) << ": " << cudaGetErrorString(err) << " (NVIDIA driver supports CUDA "
            << cuda_version(driver) << ", anyk was built with CUDA runtime " << cuda_version(CUDART_VERSION)
            << ") hint: "
            << (err == cudaErrorInsufficientDriver ? "install an NVIDIA driver that supports this CUDA version"
                                                   : "check nvidia-smi and CUDA_VISIBLE_DEVICES"));
}

void require_cuda(const char* what) {
  ANYK_CHECK(device_count() > 0, what << ": no CUDA device visible (CUDA_VISIBLE_DEVICES=" << visible_devices()
                                      << ") hint: run on a GPU node (srun --gpus-per-node=N) or use --device cpu");
}

namespace {
// Creates a non-blocking stream and a cuBLAS handle bound to it (TF32 off) with its own workspace,
// on the current device. Used for the backend's stream and for each side stream.
void create_stream_and_blas(cudaStream_t* stream, cublasHandle_t* blas, void** ws) {
  ANYK_CUDA_CHECK(cudaStreamCreateWithFlags(stream, cudaStreamNonBlocking));
  ANYK_CUBLAS_CHECK(cublasCreate(blas));
  ANYK_CUBLAS_CHECK(cublasSetStream(*blas, *stream));
  // CUBLAS_DEFAULT_MATH: f32 routines run in full f32 (TF32 needs CUBLAS_TF32_TENSOR_OP_MATH or
  // CUBLAS_COMPUTE_32F_FAST_TF32, never set here); bf16 GemmEx with f32 compute still uses
  // tensor cores. Pedantic mode would also forbid those.
  ANYK_CUBLAS_CHECK(cublasSetMathMode(*blas, CUBLAS_DEFAULT_MATH));
  ANYK_CUDA_CHECK(cudaMalloc(ws, kBlasWorkspace));
  ANYK_CUBLAS_CHECK(cublasSetWorkspace(*blas, *ws, kBlasWorkspace));
}

DeviceInfo describe(int index, int count) {
  DeviceInfo info;
  info.index = index;
  info.count = count;
  cudaDeviceProp prop{};
  ANYK_CUDA_CHECK(cudaGetDeviceProperties(&prop, index));
  info.name = prop.name;
  info.cc_major = prop.major;
  info.cc_minor = prop.minor;
  ANYK_CUDA_CHECK(cudaMemGetInfo(&info.free_bytes, &info.total_bytes));
  return info;
}
}  // namespace

DeviceInfo init(int local_rank, bool gemm_bf16) {
  ANYK_CHECK(local_rank >= 0, "CUDA init: local rank " << local_rank << " is negative");
  const int count = device_count();
  ANYK_CHECK(count > 0, "--device cuda: no CUDA device visible (CUDA_VISIBLE_DEVICES=" << visible_devices()
                                                                                        << ") hint: run on a GPU node "
                                                                                           "(srun --gpus-per-node=N) or "
                                                                                           "use --device cpu");
  const int index = local_rank % count;
  State& s = st();
  if (!s.expert_gemm_env_read) {  // read once, before anything is created (a bad value throws here)
    if (const char* v = std::getenv("ANYK_EXPERT_GEMM")) set_expert_gemm(v);
    s.expert_gemm_env_read = true;
  }
  {
    std::lock_guard<std::mutex> lock(s.mu);
    ANYK_CHECK(s.device < 0 || s.device == index,
               "CUDA init: this process already uses GPU " << s.device << ", asked for GPU " << index);
    ANYK_CUDA_CHECK(cudaSetDevice(index));
    if (s.device < 0) {
      create_stream_and_blas(&s.stream, &s.blas, &s.blas_ws);
      s.device = index;
    }
    s.gemm_bf16 = gemm_bf16;
  }
  register_kernels(Device::CUDA, &kernel_table<float>(), &kernel_table<double>(),
                   Ctx{0, static_cast<void*>(s.stream), gemm_bf16});
  return describe(index, count);
}

void* mem_alloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  require_init("CUDA memory");
  State& s = st();
  std::lock_guard<std::mutex> lock(s.mu);
  const size_t r = round_size(bytes);
  void* p = nullptr;
  auto it = s.free_blocks.find(r);
  if (it != s.free_blocks.end() && !it->second.empty()) {
    p = it->second.back();
    it->second.pop_back();
    s.cached -= r;
  } else {
    p = raw_malloc(s, r);
    s.high_water = std::max(s.high_water, s.in_use + s.cached + r);
  }
  s.live[p] = r;
  s.in_use += r;
  return p;
}

void mem_free(void* p, size_t bytes) {
  if (!p) return;
  State& s = st();
  std::lock_guard<std::mutex> lock(s.mu);
  auto it = s.live.find(p);
  ANYK_CHECK(it != s.live.end() && it->second == round_size(bytes),
             "CUDA mem_free of " << p << " (" << bytes << " bytes): not a live block of that size");
  s.free_blocks[it->second].push_back(p);  // reused in stream order by a later mem_alloc
  s.in_use -= it->second;
  s.cached += it->second;
  s.live.erase(it);
}

void mem_zero(void* p, size_t bytes) {
  if (bytes == 0) return;
  require_init("CUDA memory");
  ANYK_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, st().stream));
}

void mem_to_host(void* host_dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  require_init("CUDA memory");
  State& s = st();
  std::lock_guard<std::mutex> lock(s.mu);
  char* buf = static_cast<char*>(pinned(s, std::min(bytes, kPinnedMax)));
  for (size_t off = 0; off < bytes; off += kPinnedMax) {
    const size_t n = std::min(kPinnedMax, bytes - off);
    ANYK_CUDA_CHECK(cudaMemcpyAsync(buf, static_cast<const char*>(src) + off, n, cudaMemcpyDeviceToHost, s.stream));
    ANYK_CUDA_CHECK(cudaStreamSynchronize(s.stream));
    std::memcpy(static_cast<char*>(host_dst) + off, buf, n);
  }
}

void mem_from_host(void* dst, const void* host_src, size_t bytes) {
  if (bytes == 0) return;
  require_init("CUDA memory");
  State& s = st();
  std::lock_guard<std::mutex> lock(s.mu);
  char* buf = static_cast<char*>(pinned(s, std::min(bytes, kPinnedMax)));
  for (size_t off = 0; off < bytes; off += kPinnedMax) {
    const size_t n = std::min(kPinnedMax, bytes - off);
    std::memcpy(buf, static_cast<const char*>(host_src) + off, n);
    ANYK_CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(dst) + off, buf, n, cudaMemcpyHostToDevice, s.stream));
    ANYK_CUDA_CHECK(cudaStreamSynchronize(s.stream));  // the staging buffer is reused next chunk
  }
}

void mem_copy(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  require_init("CUDA memory");
  ANYK_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, st().stream));
}

void synchronize() {
  if (st().stream) ANYK_CUDA_CHECK(cudaStreamSynchronize(st().stream));
}

size_t mem_high_water() {
  std::lock_guard<std::mutex> lock(st().mu);
  return st().high_water;
}

void* stream() { return static_cast<void*>(st().stream); }

cublasHandle_t blas() {
  require_init("cuBLAS");
  return st().blas;
}

void* workspace(size_t bytes) {
  require_init("CUDA workspace");
  State& s = st();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.ws_bytes < bytes) {
    size_t grown = std::max(bytes, s.ws_bytes * 2);
    grown = (grown + 255) / 256 * 256;
    if (s.ws) {
      ANYK_CUDA_CHECK(cudaStreamSynchronize(s.stream));  // queued kernels may still read it
      ANYK_CUDA_CHECK(cudaFree(s.ws));
      s.ws = nullptr;
      s.ws_bytes = 0;
    }
    s.ws = raw_malloc(s, grown);
    s.ws_bytes = grown;
  }
  return s.ws;
}

void check_launch(const char* kernel) {
  cudaError_t err = cudaGetLastError();
  ANYK_CHECK(err == cudaSuccess, "CUDA kernel " << kernel << " failed to launch: " << cudaGetErrorString(err));
}

// ---- grouped_linear's expert GEMM strategies ----

void set_expert_gemm(const std::string& name) { st().expert_gemm = int(xgemm::parse_strategy(name)); }
std::string expert_gemm() { return xgemm::strategy_name(expert_gemm_strategy()); }
xgemm::Strategy expert_gemm_strategy() { return xgemm::Strategy(st().expert_gemm.load()); }

namespace {
// The side streams, each with its own cuBLAS handle and workspace (concurrent GEMMs must not share
// one handle's workspace), and the fork/join events; created once, on first use.
State& side_state() {
  require_init("CUDA side streams");
  State& s = st();
  std::lock_guard<std::mutex> lock(s.mu);
  if (!s.side_ready) {
    for (int i = 0; i < xgemm::kSideStreams; ++i) {
      create_stream_and_blas(&s.side[i], &s.side_blas[i], &s.side_ws[i]);
      ANYK_CUDA_CHECK(cudaEventCreateWithFlags(&s.side_done[i], cudaEventDisableTiming));
    }
    ANYK_CUDA_CHECK(cudaEventCreateWithFlags(&s.fork, cudaEventDisableTiming));
    s.side_ready = true;
  }
  return s;
}
int side_count(int n) { return n < xgemm::kSideStreams ? n : xgemm::kSideStreams; }
}  // namespace

cublasHandle_t side_blas(int i) { return side_state().side_blas[i]; }

void fork_side_streams(cudaStream_t main, int n) {
  State& s = side_state();
  ANYK_CUDA_CHECK(cudaEventRecord(s.fork, main));  // a wait takes the event as recorded now
  for (int i = 0; i < side_count(n); ++i) ANYK_CUDA_CHECK(cudaStreamWaitEvent(s.side[i], s.fork, 0));
}

void join_side_streams(cudaStream_t main, int n) {
  State& s = side_state();
  for (int i = 0; i < side_count(n); ++i) {
    ANYK_CUDA_CHECK(cudaEventRecord(s.side_done[i], s.side[i]));
    ANYK_CUDA_CHECK(cudaStreamWaitEvent(main, s.side_done[i], 0));
  }
}

void upload_async(cudaStream_t stream, void* dst, const void* host, size_t bytes) {
  if (bytes == 0) return;
  require_init("CUDA upload");
  State& s = st();
  std::lock_guard<std::mutex> lock(s.mu);
  State::Slot& slot = s.slots[s.next_slot];
  s.next_slot = (s.next_slot + 1) % int(sizeof s.slots / sizeof s.slots[0]);
  if (slot.done) {
    ANYK_CUDA_CHECK(cudaEventSynchronize(slot.done));  // its previous copy has left the slot
  } else {
    ANYK_CUDA_CHECK(cudaEventCreateWithFlags(&slot.done, cudaEventDisableTiming));
  }
  if (slot.bytes < bytes) {
    if (slot.host) ANYK_CUDA_CHECK(cudaFreeHost(slot.host));
    slot.host = nullptr;
    slot.bytes = 0;
    const size_t grown = std::max(bytes, size_t(4096));
    ANYK_CUDA_CHECK(cudaMallocHost(&slot.host, grown));
    slot.bytes = grown;
  }
  std::memcpy(slot.host, host, bytes);
  ANYK_CUDA_CHECK(cudaMemcpyAsync(dst, slot.host, bytes, cudaMemcpyHostToDevice, stream));
  ANYK_CUDA_CHECK(cudaEventRecord(slot.done, stream));
}

}  // namespace anyk::cuda
