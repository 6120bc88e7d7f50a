// MPI implementation of Comm; see comm.h.
#include "parallel/comm.h"


#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <utility>

#include "runtime/device.h"

namespace anyk {

namespace {
void finalize_at_exit() {
  int fin = 0;
  MPI_Finalized(&fin);
  if (!fin) MPI_Finalize();
}
}  // namespace

void mpi_init_once(int* argc, char*** argv) {
  int inited = 0;
  MPI_Initialized(&inited);
  if (inited) return;
  int provided = 0;
  ANYK_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  std::atexit(finalize_at_exit);
}

bool mpi_launched() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_STEP_NUM_TASKS"})
    if (std::getenv(v)) return true;
  return false;
}

void agree_or_throw(const Comm& comm, const std::function<void()>& f, const std::function<void()>& on_failure) {
  std::string err, where;
  int code = kExitFailure;
  try {
    f();
  } catch (const Error& e) {
    err = e.what();
    where = e.where();
    code = e.exit_code();
    if (err.empty()) err = "unknown error";
  } catch (const std::exception& e) {
    err = e.what();
    if (err.empty()) err = "unknown error";
  }
  const int P = comm.size();
  const int lowest = P - int(comm.all_reduce_max(double(err.empty() ? 0 : P - comm.rank())));
  if (lowest == P) return;
  // Every rank exits with the status of the rank that prints (usage error or run-time failure).
  code = int(comm.all_reduce_max(double(comm.rank() == lowest ? code : 0)));
  if (comm.rank() == 0 && on_failure) on_failure();
  if (comm.rank() == lowest) throw AgreedError(err, code, where);
  throw ReportedError("rank " + std::to_string(lowest) + " failed", code);
}

void abort_job_if_parallel(int code) {
  int inited = 0, fin = 0, size = 1;
  MPI_Initialized(&inited);
  MPI_Finalized(&fin);
  if (!inited || fin) return;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size > 1) {
    std::fflush(stdout);
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
  }
}

int node_ranks() {
  int local = 1, inited = 0, fin = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&fin);
  if (inited && !fin) {
    MPI_Comm node;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) == MPI_SUCCESS) {
      MPI_Comm_size(node, &local);
      MPI_Comm_free(&node);
    }
  }
  return std::max(1, local);
}

Comm::Comm(MPI_Comm c, bool owned) : c_(c), owned_(owned) {
  ANYK_MPI_CHECK(MPI_Comm_rank(c_, &rank_));
  ANYK_MPI_CHECK(MPI_Comm_size(c_, &size_));
}

Comm::Comm(Comm&& o) noexcept
    : c_(std::exchange(o.c_, MPI_COMM_NULL)), owned_(std::exchange(o.owned_, false)), rank_(o.rank_), size_(o.size_) {}

Comm& Comm::operator=(Comm&& o) noexcept {
  std::swap(c_, o.c_);
  std::swap(owned_, o.owned_);
  std::swap(rank_, o.rank_);
  std::swap(size_, o.size_);
  return *this;
}

Comm::~Comm() {
  int fin = 0;
  MPI_Finalized(&fin);
  if (owned_ && c_ != MPI_COMM_NULL && !fin) MPI_Comm_free(&c_);
}

Comm Comm::world() {
  mpi_init_once();
  return Comm(MPI_COMM_WORLD, false);
}

Comm Comm::self() {
  mpi_init_once();
  return Comm(MPI_COMM_SELF, false);
}

Comm Comm::split(int color, int key) const {
  MPI_Comm out;
  ANYK_MPI_CHECK(MPI_Comm_split(c_, color, key, &out));
  MPI_Comm_set_errhandler(out, MPI_ERRORS_RETURN);
  return Comm(out, true);
}

Comm Comm::split_node(int key) const {
  MPI_Comm out;
  ANYK_MPI_CHECK(MPI_Comm_split_type(c_, MPI_COMM_TYPE_SHARED, key, MPI_INFO_NULL, &out));
  MPI_Comm_set_errhandler(out, MPI_ERRORS_RETURN);
  return Comm(out, true);
}

void Comm::barrier() const { ANYK_MPI_CHECK(MPI_Barrier(c_)); }

void Comm::all_reduce_sum(float* data, int64_t n) const {
  if (size_ == 1) return;
  for (int64_t off = 0; off < n; off += INT_MAX / 2) {
    int cnt = int(std::min<int64_t>(INT_MAX / 2, n - off));
    ANYK_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, data + off, cnt, MPI_FLOAT, MPI_SUM, c_));
  }
}

void Comm::all_reduce_sum(double* data, int64_t n) const {
  if (size_ == 1) return;
  for (int64_t off = 0; off < n; off += INT_MAX / 2) {
    int cnt = int(std::min<int64_t>(INT_MAX / 2, n - off));
    ANYK_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, data + off, cnt, MPI_DOUBLE, MPI_SUM, c_));
  }
}

double Comm::all_reduce_max(double v) const {
  if (size_ == 1) return v;
  ANYK_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_DOUBLE, MPI_MAX, c_));
  return v;
}

double Comm::all_reduce_sum(double v) const {
  if (size_ == 1) return v;
  ANYK_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_DOUBLE, MPI_SUM, c_));
  return v;
}

void* Comm::host_view(const Tensor& t, std::vector<std::byte>& stage, bool fill) {
  if (t.device == Device::CPU) return t.data;
  if (stage.size() < t.bytes()) stage.resize(t.bytes());
  if (fill && t.bytes()) to_host(stage.data(), t);
  return stage.data();
}

void Comm::all_reduce_sum(const Tensor& x) const {
  ANYK_CHECK(x.dtype == DType::F32 || x.dtype == DType::F64,
             "all_reduce_sum supports f32 and f64, got " << dtype_name(x.dtype));
  if (size_ == 1) return;
  void* h = host_view(x, send_stage_, true);
  if (x.dtype == DType::F32)
    all_reduce_sum(static_cast<float*>(h), x.numel());
  else
    all_reduce_sum(static_cast<double*>(h), x.numel());
  if (x.device != Device::CPU && x.bytes()) from_host(x, h);
}

void Comm::all_gather(const Tensor& send, const Tensor& recv) const {
  const int64_t n = send.numel();
  check_counts_tensor(send, n, "all_gather send");
  check_counts_tensor(recv, n * size_, "all_gather recv");
  ANYK_CHECK(n <= INT_MAX, "all_gather of " << n << " values would overflow MPI's int counts");
  ANYK_MPI_CHECK(MPI_Allgather(send.data, int(n), MPI_INT32_T, recv.data, int(n), MPI_INT32_T, c_));
}

void Comm::all_to_all(const Tensor& send, const Tensor& recv) const {
  const int64_t n = send.numel();
  ANYK_CHECK(n % size_ == 0, "all_to_all: " << n << " values for " << size_ << " ranks");
  check_counts_tensor(send, n, "all_to_all send");
  check_counts_tensor(recv, n, "all_to_all recv");
  ANYK_CHECK(n / size_ <= INT_MAX, "all_to_all of " << n << " values would overflow MPI's int counts");
  const int per = int(n / size_);
  ANYK_MPI_CHECK(MPI_Alltoall(send.data, per, MPI_INT32_T, recv.data, per, MPI_INT32_T, c_));
}

void Comm::all_to_all_v(const Tensor& send, const Tensor& send_counts, const Tensor& recv,
                        const Tensor& recv_counts) const {
  const int64_t row_bytes = check_all_to_all_v(send, send_counts, recv, recv_counts, size_);
  const int* sc = send_counts.ptr<int32_t>();
  const int* rc = recv_counts.ptr<int32_t>();
  // One MPI datatype per row keeps the counts in rows; displacements must still fit an int.
  std::vector<int> sd(size_), rd(size_);
  int64_t s = 0, r = 0;
  for (int i = 0; i < size_; ++i) {
    sd[i] = int(s);
    rd[i] = int(r);
    s += sc[i];
    r += rc[i];
  }
  ANYK_CHECK(s <= INT_MAX && r <= INT_MAX && row_bytes <= INT_MAX,
             "all-to-all of " << s << " rows out / " << r << " rows in of " << row_bytes
                              << " bytes would overflow MPI's int counts. hint: lower --batch or "
                                 "--seq-len per rank, or use more expert-parallel ranks");
  MPI_Datatype row;
  ANYK_MPI_CHECK(MPI_Type_contiguous(int(row_bytes), MPI_BYTE, &row));
  ANYK_MPI_CHECK(MPI_Type_commit(&row));
  void* hs = host_view(send, send_stage_, true);
  void* hr = host_view(recv, recv_stage_, false);
  int rc_mpi = MPI_Alltoallv(hs, sc, sd.data(), row, hr, rc, rd.data(), row, c_);
  MPI_Type_free(&row);
  ANYK_MPI_CHECK(rc_mpi);
  if (recv.device != Device::CPU && recv.bytes()) from_host(recv, hr);
}

namespace {
// MPI's int counts and displacements of the blocks of n values over `parts` ranks.
void block_counts(int64_t n, int parts, std::vector<int>& counts, std::vector<int>& displs, const char* who) {
  ANYK_CHECK(n <= INT_MAX, who << " over " << n << " values would overflow MPI's int counts hint: --zero 1 "
                                  "shards regions of at most 2^31-1 values; use --zero 0 for this model, or "
                                  "--comm nccl");
  counts.resize(size_t(parts));
  displs.resize(size_t(parts));
  for (int i = 0; i < parts; ++i) {
    const BlockRange b = block_range(n, parts, i);
    counts[size_t(i)] = int(b.size());
    displs[size_t(i)] = int(b.begin);
  }
}
}  // namespace

void Comm::reduce_scatter_sum(const Tensor& x) const {
  check_block_tensor(x, "reduce_scatter_sum");
  const int64_t n = x.numel();
  if (size_ == 1 || n == 0) return;
  std::vector<int> counts, displs;
  block_counts(n, size_, counts, displs, "reduce_scatter_sum");
  float* h = static_cast<float*>(host_view(x, send_stage_, true));
  // In place, MPI leaves this rank's block of the sum at the start of the buffer.
  ANYK_MPI_CHECK(MPI_Reduce_scatter(MPI_IN_PLACE, h, counts.data(), MPI_FLOAT, MPI_SUM, c_));
  const BlockRange b = block_range(n, size_, rank_);
  const size_t bytes = size_t(b.size()) * sizeof(float);
  if (x.device == Device::CPU)
    std::memmove(h + b.begin, h, bytes);
  else if (bytes)
    allocator(x.device).from_host(static_cast<float*>(x.data) + b.begin, h, bytes);
}

void Comm::all_gather_blocks(const Tensor& x) const {
  check_block_tensor(x, "all_gather_blocks");
  const int64_t n = x.numel();
  if (size_ == 1 || n == 0) return;
  std::vector<int> counts, displs;
  block_counts(n, size_, counts, displs, "all_gather_blocks");
  void* h = host_view(x, send_stage_, true);
  ANYK_MPI_CHECK(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, h, counts.data(), displs.data(), MPI_FLOAT, c_));
  if (x.device != Device::CPU) from_host(x, h);
}

void Comm::gather_blocks(const float* block, int64_t n, float* full, int root) const {
  std::vector<int> counts, displs;
  block_counts(n, size_, counts, displs, "gather_blocks");
  ANYK_MPI_CHECK(MPI_Gatherv(block, counts[size_t(rank_)], MPI_FLOAT, full, counts.data(), displs.data(), MPI_FLOAT,
                             root, c_));
}

void Comm::gather(const float* send, int64_t n, float* recv, int root) const {
  ANYK_CHECK(n <= INT_MAX, "gather of " << n << " values would overflow MPI's int counts");
  ANYK_MPI_CHECK(MPI_Gather(send, int(n), MPI_FLOAT, recv, int(n), MPI_FLOAT, root, c_));
}

void Comm::abort(int code) const {
  MPI_Abort(c_ == MPI_COMM_NULL ? MPI_COMM_WORLD : c_, code);
  std::abort();
}

}  // namespace anyk
