// The NCCL data-path communicator (--comm nccl): rows and gradients move between GPUs with NCCL
// on the CUDA backend's stream, while everything the host must read stays on MPI: the counts
// collectives (all_gather, all_to_all of I32 host tensors: they size the receive buffers, the one
// host synchronisation per layer) and barrier go over an MPI duplicate of the group.
// This header exists in every build. The class is defined only when ANYK_CUDA=ON (nccl_comm.cpp);
// otherwise make_nccl_communicator (nccl_comm_stub.cpp) throws the rebuild hint, so callers use
// the factory and never name the class.
#pragma once
#include <memory>

#include "parallel/comm.h"

struct ncclComm;  // nccl.h's opaque communicator (ncclComm_t is ncclComm*)

namespace anyk {

// Collective over group: group rank 0 creates the NCCL unique id, MPI_Bcast sends it to the
// group, every rank joins with ncclCommInitRank. Needs the CUDA backend initialised on this
// rank (anyk::cuda::init: its GPU current, its stream created); one GPU per rank (NCCL refuses
// two ranks of a communicator on one GPU). Loads NCCL first (nccl_version). Throws naming the
// NCCL call and ncclGetErrorString.
std::unique_ptr<Communicator> make_nccl_communicator(const Comm& group);

// NCCL is not linked into anyk: the first use opens libnccl.so.2 (dlopen, once per process) and
// resolves the functions the communicator calls, so runs without --comm nccl never need it.
// Returns NCCL's version code (ncclGetVersion: 22703 for 2.27.3). Throws one line naming
// libnccl.so.2, the loader's reason and the fix when it cannot be loaded or lacks a function;
// without ANYK_CUDA, the rebuild hint.
int nccl_version();

class NcclCommunicator final : public Communicator {
 public:
  explicit NcclCommunicator(const Comm& group);
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;
  ~NcclCommunicator() override;

  int rank() const override { return mpi_.rank(); }
  int size() const override { return mpi_.size(); }
  // Waits for this rank's stream, then an MPI barrier.
  void barrier() const override;
  // x on Device::CUDA, f32 or f64: ncclAllReduce in place on the backend's stream (ordered with
  // the kernels before and after it; no host wait).
  void all_reduce_sum(const Tensor& x) const override;
  // Counts (I32 host tensors): over MPI.
  void all_gather(const Tensor& send, const Tensor& recv) const override;
  void all_to_all(const Tensor& send, const Tensor& recv) const override;
  // Rows on Device::CUDA, counts on the host: one ncclGroupStart/End of ncclSend/ncclRecv per
  // peer with rows to move, at byte offsets from the counts, on the backend's stream.
  void all_to_all_v(const Tensor& send, const Tensor& send_counts, const Tensor& recv,
                    const Tensor& recv_counts) const override;
  // --zero 1, UNTESTED (compiled with ANYK_CUDA=ON, never run: no GPU in CI). x on Device::CUDA:
  // one ncclGroupStart/End of an in-place ncclReduce of block i to rank i for every rank i
  // (blocks of unequal size, which ncclReduceScatter cannot take), resp. of an in-place
  // ncclBroadcast of block i from rank i.
  void reduce_scatter_sum(const Tensor& x) const override;
  void all_gather_blocks(const Tensor& x) const override;

 private:
  // The grouped per-block calls of reduce_scatter_sum (reduce) and all_gather_blocks (broadcast).
  void per_block(const Tensor& x, bool reduce) const;
  Comm mpi_;                  // MPI_Comm_dup of the group: counts, barrier, the id broadcast
  ncclComm* nccl_ = nullptr;  // ncclComm_t
  void* stream_ = nullptr;    // cudaStream_t of the CUDA backend
};

}  // namespace anyk
