// The differentiable all-to-all of rows: forward sends send_counts[i] rows to rank i and
// receives recv_counts[i] rows from rank i (rank order); backward is the same exchange with the
// counts swapped, adding into the input's gradient.
#pragma once
#include "parallel/communicator.h"
#include "runtime/tape.h"

namespace anyk {

// parallel/'s differentiable ops (registered with the tape from all_to_all.cpp; see runtime/tape.h).
inline constexpr std::string_view kParallelOps[] = {"all_to_all_rows"};

// x (S,C) with S = sum(send_counts) -> (R,C) with R = sum(recv_counts). send_counts,
// recv_counts: I32 (comm.size()) host tensors that must outlive the step (the arena's).
// backward_seconds, when given, accumulates the wall time of the backward exchange (--profile's
// dispatch: the forward exchange is timed by the caller); it must outlive the tape's backward.
Var all_to_all_rows(Tape& tape, const Var& x, const Tensor& send_counts, const Tensor& recv_counts,
                    const Communicator& comm, double* backward_seconds = nullptr);

}  // namespace anyk
