// Comm: an MPI process group. It is the MPI implementation of the data-path Communicator
// (parallel/communicator.h: all-to-all-v, all-reduce, counts, barrier over tensors) and also the
// handle for control-path code (splitting groups, agree_or_throw, checkpoint gathers, scalar
// reductions), which stays MPI-only. One class rather than an MpiCommunicator wrapping a Comm:
// the groups in ProcessGroups are then usable as communicators directly, with no second object
// to keep alive beside each. Every MPI call goes through ANYK_MPI_CHECK, which throws with
// file:line and a hint. Groups are passed to the objects that use them; nothing reaches for
// MPI_COMM_WORLD except the code that builds the groups.
#pragma once
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1  // the C API only; the deprecated C++ bindings warn
#endif
#include <mpi.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "core/check.h"

#define ANYK_MPI_CHECK(call)                                                                  \
  do {                                                                                        \
    int anyk_rc_ = (call);                                                                    \
    if (anyk_rc_ != MPI_SUCCESS) {                                                            \
      char anyk_buf_[MPI_MAX_ERROR_STRING];                                                   \
      int anyk_len_ = 0;                                                                      \
      MPI_Error_string(anyk_rc_, anyk_buf_, &anyk_len_);                                      \
      ANYK_FAIL(#call << " failed: " << std::string(anyk_buf_, anyk_len_)                      \
                      << ". hint: check the MPI launch (mpirun/srun) and that every rank runs " \
                         "the same command");                                                 \
    }                                                                                         \
  } while (0)

namespace anyk {

// Initialises MPI once (idempotent; thread level FUNNELED) and finalises it at exit.
void mpi_init_once(int* argc = nullptr, char*** argv = nullptr);
bool mpi_launched();  // true when started by mpirun/srun with more than one rank
// The ranks of MPI_COMM_WORLD on this node (MPI's shared-memory split; 1 when MPI is not up).
// A collective when MPI is up: every rank calls it. launch/threads.h divides the cores by it.
int node_ranks();
// When MPI is up with more than one rank, MPI_Abort the whole job (after a rank's fatal error).
void abort_job_if_parallel(int code);

class Comm;
// Runs f on every rank of comm (f must not call collectives), then one all-reduce tells every
// rank whether any f threw. On success returns; otherwise `on_failure` runs on rank 0 (cleanup,
// may be empty) and every rank throws: the lowest failing rank AgreedError with its own message
// (printed once, by the command line), the others ReportedError (exit non-zero quietly). No
// MPI_Abort, no message per rank.
void agree_or_throw(const Comm& comm, const std::function<void()>& f, const std::function<void()>& on_failure = {});

class Comm final : public Communicator {
 public:
  Comm() = default;
  explicit Comm(MPI_Comm c, bool owned = false);
  Comm(const Comm&) = delete;
  Comm& operator=(const Comm&) = delete;
  Comm(Comm&& o) noexcept;
  Comm& operator=(Comm&& o) noexcept;
  ~Comm() override;

  static Comm world();
  static Comm self();

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  MPI_Comm raw() const { return c_; }
  Comm split(int color, int key) const;
  // The ranks of this group that share this node's memory (MPI_COMM_TYPE_SHARED), ordered by key.
  Comm split_node(int key) const;

  // Communicator (data path). Tensors on a non-CPU device are staged through host buffers with
  // the copy ops (to_host before sending, from_host after receiving); the buffers only grow, so
  // steady-state steps allocate nothing. Host tensors go to MPI directly. Counts are host I32.
  void barrier() const override;
  void all_reduce_sum(const Tensor& x) const override;
  void all_gather(const Tensor& send, const Tensor& recv) const override;
  void all_to_all(const Tensor& send, const Tensor& recv) const override;
  void all_to_all_v(const Tensor& send, const Tensor& send_counts, const Tensor& recv,
                    const Tensor& recv_counts) const override;
  // MPI_Reduce_scatter (in place, then the block moved to its offset) and MPI_Allgatherv (in
  // place) over block_range's blocks; x of at most INT_MAX values.
  void reduce_scatter_sum(const Tensor& x) const override;
  void all_gather_blocks(const Tensor& x) const override;

  // Control path, host values.
  void all_reduce_sum(float* data, int64_t n) const;   // in place; chunked past INT_MAX
  void all_reduce_sum(double* data, int64_t n) const;
  double all_reduce_max(double v) const;
  double all_reduce_sum(double v) const;
  // Root gathers n values from every rank, in rank order, into recv (size() * n, root only).
  void gather(const float* send, int64_t n, float* recv, int root) const;
  // Root gathers every rank's block_range(n, size(), rank) block (host memory, `block` holds this
  // rank's) into full (n values, root only); MPI_Gatherv.
  void gather_blocks(const float* block, int64_t n, float* full, int root) const;
  // Abort every rank of the job (used when one rank fails, so no rank waits forever).
  [[noreturn]] void abort(int code) const;

 private:
  // A host view of t's bytes for MPI: t's own memory on the CPU, else `stage` grown to fit
  // (filled with t's data when `fill`).
  static void* host_view(const Tensor& t, std::vector<std::byte>& stage, bool fill);

  MPI_Comm c_ = MPI_COMM_NULL;
  bool owned_ = false;
  int rank_ = 0, size_ = 1;
  mutable std::vector<std::byte> send_stage_, recv_stage_;  // host staging for device tensors
};

}  // namespace anyk
