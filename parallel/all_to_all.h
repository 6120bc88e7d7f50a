// The differentiable all-to-all of rows: forward sends send_counts[i] rows to rank i and
// receives recv_counts[i] rows from rank i (rank order); backward is the same exchange with the
// counts swapped, adding into the input's gradient.
#pragma once
#include "parallel/comm.h"
#include "runtime/tape.h"

namespace anyk {

// parallel/'s differentiable ops (registered with the tape from all_to_all.cpp; see runtime/tape.h).
inline constexpr std::string_view kParallelOps[] = {"all_to_all_rows"};

// x (S,C) with S = sum(send_counts) -> (R,C) with R = sum(recv_counts). The count arrays must
// outlive the step (allocate them in the arena).
Var all_to_all_rows(Tape& tape, const Var& x, const int* send_counts, const int* recv_counts,
                    const Comm& comm);

}  // namespace anyk
