// NcclCommunicator, built when ANYK_CUDA=ON; see nccl_comm.h. NCCL is not linked: nccl.h gives
// the types and the functions' signatures, and libnccl.so.2 is opened (dlopen) on first use, so
// an anyk run that never asks for --comm nccl neither needs nor loads it.
#include "parallel/nccl_comm.h"

#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <nccl.h>

#include <mutex>
#include <string>
#include <type_traits>

#include "kernels/cuda_api.h"
#include "runtime/device.h"

namespace anyk {
namespace {

constexpr const char* kNcclLibrary = "libnccl.so.2";

// The NCCL functions anyk calls, resolved from kNcclLibrary by dlsym (types from nccl.h).
struct NcclApi {
  decltype(&::ncclGetVersion) GetVersion;
  decltype(&::ncclGetErrorString) GetErrorString;
  decltype(&::ncclGetUniqueId) GetUniqueId;
  decltype(&::ncclCommInitRank) CommInitRank;
  decltype(&::ncclCommDestroy) CommDestroy;
  decltype(&::ncclAllReduce) AllReduce;
  decltype(&::ncclGroupStart) GroupStart;
  decltype(&::ncclGroupEnd) GroupEnd;
  decltype(&::ncclReduce) Reduce;
  decltype(&::ncclBroadcast) Broadcast;
  decltype(&::ncclSend) Send;
  decltype(&::ncclRecv) Recv;
};

// Opens NCCL once per process (the handle is never closed); a failure is remembered and
// rethrown, one line naming the library, the loader's reason and the fix.
const NcclApi& nccl() {
  static std::once_flag once;
  static NcclApi api{};
  static std::string error;
  std::call_once(once, [] {
    void* lib = dlopen(kNcclLibrary, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      const char* why = dlerror();
      error = std::string("--comm nccl: cannot load ") + kNcclLibrary + " (" + (why ? why : "dlopen failed") +
              ") hint: install NCCL 2 (the CUDA toolkit's copy, or pip install nvidia-nccl-cu13) and put the "
              "folder holding " + kNcclLibrary + " on LD_LIBRARY_PATH, or use --comm mpi";
      return;
    }
    std::string missing;
    auto sym = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
      if (!fn) missing += std::string(missing.empty() ? "" : ", ") + name;
    };
    sym(api.GetVersion, "ncclGetVersion");
    sym(api.GetErrorString, "ncclGetErrorString");
    sym(api.GetUniqueId, "ncclGetUniqueId");
    sym(api.CommInitRank, "ncclCommInitRank");
    sym(api.CommDestroy, "ncclCommDestroy");
    sym(api.AllReduce, "ncclAllReduce");
    sym(api.GroupStart, "ncclGroupStart");
    sym(api.GroupEnd, "ncclGroupEnd");
    sym(api.Reduce, "ncclReduce");
    sym(api.Broadcast, "ncclBroadcast");
    sym(api.Send, "ncclSend");
    sym(api.Recv, "ncclRecv");
    if (!missing.empty())
      error = std::string("--comm nccl: ") + kNcclLibrary + " lacks " + missing +
              " hint: ncclSend/ncclRecv need NCCL >= 2.7; put a newer NCCL 2 first on LD_LIBRARY_PATH, or use "
              "--comm mpi";
  });
  ANYK_CHECK(error.empty(), error);
  return api;
}

// Every NCCL call: on failure the call, NCCL's own message and a hint.
void nccl_check(ncclResult_t r, const std::string& call) {
  ANYK_CHECK(r == ncclSuccess, call << " failed: " << nccl().GetErrorString(r)
                                    << " hint: rerun with NCCL_DEBUG=WARN (or INFO) for NCCL's reason; check one "
                                       "GPU per rank, and NCCL_SOCKET_IFNAME / NCCL_IB_HCA on multi-node runs");
}

cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

// Data tensors live on the GPU: NCCL reads device pointers.
void check_cuda_tensor(const Tensor& t, const char* what) {
  ANYK_CHECK(t.device == Device::CUDA, "--comm nccl: " << what << " is on " << device_name(t.device)
                                                       << ", NCCL moves GPU buffers only hint: use "
                                                          "--device cuda, or --comm mpi");
}

Comm dup_of(const Comm& group) {
  MPI_Comm d = MPI_COMM_NULL;
  ANYK_MPI_CHECK(MPI_Comm_dup(group.raw(), &d));
  MPI_Comm_set_errhandler(d, MPI_ERRORS_RETURN);
  return Comm(d, true);
}

}  // namespace

int nccl_version() {
  int v = 0;
  nccl_check(nccl().GetVersion(&v), "ncclGetVersion");
  return v;
}

NcclCommunicator::NcclCommunicator(const Comm& group) : mpi_(dup_of(group)), stream_(cuda::stream()) {
  ANYK_CHECK(stream_ != nullptr, "--comm nccl needs the CUDA backend set up on every rank first (anyk::cuda::init) "
                                 "hint: pass --device cuda");
  // Every rank loads NCCL before the collective id exchange, so a rank without it fails here alone
  // instead of leaving the others waiting in MPI_Bcast.
  const NcclApi& api = nccl();
  ncclUniqueId id{};
  if (mpi_.rank() == 0) nccl_check(api.GetUniqueId(&id), "ncclGetUniqueId");
  ANYK_MPI_CHECK(MPI_Bcast(&id, int(sizeof id), MPI_BYTE, 0, mpi_.raw()));
  ncclComm_t c = nullptr;
  nccl_check(api.CommInitRank(&c, mpi_.size(), id, mpi_.rank()), "ncclCommInitRank");
  nccl_ = c;
}

NcclCommunicator::~NcclCommunicator() {
  // nccl_ is set only after NCCL loaded. No throw from a destructor; the stream's work is ordered before it.
  if (nccl_) nccl().CommDestroy(nccl_);
}

void NcclCommunicator::barrier() const {
  cuda::synchronize();
  mpi_.barrier();
}

void NcclCommunicator::all_reduce_sum(const Tensor& x) const {
  ANYK_CHECK(x.dtype == DType::F32 || x.dtype == DType::F64,
             "all_reduce_sum supports f32 and f64, got " << dtype_name(x.dtype));
  check_cuda_tensor(x, "the all-reduce buffer");
  if (size() == 1 || x.numel() == 0) return;
  const ncclDataType_t t = x.dtype == DType::F32 ? ncclFloat32 : ncclFloat64;
  nccl_check(nccl().AllReduce(x.data, x.data, size_t(x.numel()), t, ncclSum, nccl_, as_stream(stream_)),
             "ncclAllReduce");
}

void NcclCommunicator::all_gather(const Tensor& send, const Tensor& recv) const { mpi_.all_gather(send, recv); }

void NcclCommunicator::all_to_all(const Tensor& send, const Tensor& recv) const { mpi_.all_to_all(send, recv); }

void NcclCommunicator::all_to_all_v(const Tensor& send, const Tensor& send_counts, const Tensor& recv,
                                    const Tensor& recv_counts) const {
  const size_t row = size_t(check_all_to_all_v(send, send_counts, recv, recv_counts, size()));
  if (send.numel() > 0) check_cuda_tensor(send, "the all-to-all send buffer");
  if (recv.numel() > 0) check_cuda_tensor(recv, "the all-to-all receive buffer");
  const int32_t* sc = send_counts.ptr<int32_t>();
  const int32_t* rc = recv_counts.ptr<int32_t>();
  const char* s = static_cast<const char*>(send.data);
  char* r = static_cast<char*>(recv.data);
  // Rank i's send count to j is j's receive count from i, so skipping empty blocks on both
  // sides keeps every ncclSend matched by an ncclRecv. The group is always closed, also after a
  // failed call, which is then reported.
  const NcclApi& api = nccl();
  nccl_check(api.GroupStart(), "ncclGroupStart");
  ncclResult_t bad = ncclSuccess;
  std::string bad_call;
  size_t so = 0, ro = 0;
  for (int p = 0; p < size() && bad == ncclSuccess; ++p) {
    const size_t sb = size_t(sc[p]) * row, rb = size_t(rc[p]) * row;
    if (sb && (bad = api.Send(s + so, sb, ncclInt8, p, nccl_, as_stream(stream_))) != ncclSuccess)
      bad_call = "ncclSend to rank " + std::to_string(p);
    if (rb && bad == ncclSuccess && (bad = api.Recv(r + ro, rb, ncclInt8, p, nccl_, as_stream(stream_))) != ncclSuccess)
      bad_call = "ncclRecv from rank " + std::to_string(p);
    so += sb;
    ro += rb;
  }
  nccl_check(api.GroupEnd(), "ncclGroupEnd");
  nccl_check(bad, bad_call);
}

void NcclCommunicator::per_block(const Tensor& x, bool reduce) const {
  check_block_tensor(x, reduce ? "reduce_scatter_sum" : "all_gather_blocks");
  check_cuda_tensor(x, "the --zero 1 buffer");
  const int64_t n = x.numel();
  if (size() == 1 || n == 0) return;
  float* p = static_cast<float*>(x.data);
  const NcclApi& api = nccl();
  nccl_check(api.GroupStart(), "ncclGroupStart");
  ncclResult_t bad = ncclSuccess;
  for (int i = 0; i < size() && bad == ncclSuccess; ++i) {
    const BlockRange b = block_range(n, size(), i);
    if (b.size() == 0) continue;  // the same on every rank: no call is left unmatched
    float* q = p + b.begin;
    bad = reduce ? api.Reduce(q, q, size_t(b.size()), ncclFloat32, ncclSum, i, nccl_, as_stream(stream_))
                 : api.Broadcast(q, q, size_t(b.size()), ncclFloat32, i, nccl_, as_stream(stream_));
  }
  nccl_check(api.GroupEnd(), "ncclGroupEnd");
  nccl_check(bad, reduce ? "ncclReduce" : "ncclBroadcast");
}

void NcclCommunicator::reduce_scatter_sum(const Tensor& x) const { per_block(x, true); }

void NcclCommunicator::all_gather_blocks(const Tensor& x) const { per_block(x, false); }

std::unique_ptr<Communicator> make_nccl_communicator(const Comm& group) {
  return std::make_unique<NcclCommunicator>(group);
}

}  // namespace anyk
