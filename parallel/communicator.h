// The data-path communicator: the small interface the dispatcher and gradient sync use to talk
// to the other ranks of a group, over tensors. Comm (parallel/comm.h) is the MPI
// implementation; LocalCommunicator below is the one-rank case with no MPI at all. An NCCL
// implementation adds a class here and changes no caller.
// Counts (row counts, per-expert counts) are I32 tensors in host memory: they size the receive
// buffers, so the host must read them whatever device the rows live on.
#pragma once
#include "runtime/tensor.h"

namespace anyk {

// Block i of a flat buffer of n values split over `parts` ranks (--zero 1's shards):
// [n*i/parts, n*(i+1)/parts). Sizes differ by at most one; every rank computes the same split.
struct BlockRange {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};
BlockRange block_range(int64_t n, int parts, int i);

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual void barrier() const = 0;
  // x (any shape), f32 or f64: summed over every rank, in place.
  virtual void all_reduce_sum(const Tensor& x) const = 0;
  // send (n) I32 host -> recv (size*n): rank i's n values at [i*n, (i+1)*n).
  virtual void all_gather(const Tensor& send, const Tensor& recv) const = 0;
  // send (size*n) I32 host, block i goes to rank i -> recv (size*n), block i came from rank i.
  virtual void all_to_all(const Tensor& send, const Tensor& recv) const = 0;
  // Rows of send (S, ...) with S = sum(send_counts): send_counts[i] consecutive rows go to rank
  // i, in rank order. recv (R, ...) with R = sum(recv_counts) gets recv_counts[i] rows from rank
  // i, in rank order. send_counts, recv_counts: I32 (size) host. Row shapes and dtypes match.
  virtual void all_to_all_v(const Tensor& send, const Tensor& send_counts, const Tensor& recv,
                            const Tensor& recv_counts) const = 0;
  // --zero 1 (sharded optimizer). x (n) f32 on the data device, split into size() blocks by
  // block_range. reduce_scatter_sum: in place, this rank's block of x becomes the sum over ranks
  // of that block; the other blocks are left undefined. all_gather_blocks: in place, every block
  // of x becomes its owner rank's block.
  virtual void reduce_scatter_sum(const Tensor& x) const = 0;
  virtual void all_gather_blocks(const Tensor& x) const = 0;
};

// One rank, no MPI: the collectives are copies (LocalDispatcher and single-process tools use it).
class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void barrier() const override {}
  void all_reduce_sum(const Tensor& x) const override;
  void all_gather(const Tensor& send, const Tensor& recv) const override;
  void all_to_all(const Tensor& send, const Tensor& recv) const override;
  void all_to_all_v(const Tensor& send, const Tensor& send_counts, const Tensor& recv,
                    const Tensor& recv_counts) const override;
  void reduce_scatter_sum(const Tensor& x) const override;  // one block: nothing moves
  void all_gather_blocks(const Tensor& x) const override;
};

// Shared argument checks (every implementation uses them, so the errors read the same).
// An I32 host tensor of `n` values (counts); `what` names it in the error.
void check_counts_tensor(const Tensor& t, int64_t n, const char* what);
// Host memory (Device::CPU); `who` names the implementation that needs it.
void check_host_tensor(const Tensor& t, const char* who);
// Bytes of one row (everything but dim 0) of t.
int64_t row_bytes_of(const Tensor& t);
// Checks send/recv against the counts (row sizes equal, row totals match); returns row bytes.
// x is f32 (the --zero 1 collectives); `who` names the call.
void check_block_tensor(const Tensor& x, const char* who);
int64_t check_all_to_all_v(const Tensor& send, const Tensor& send_counts, const Tensor& recv,
                           const Tensor& recv_counts, int size);

}  // namespace anyk
