// Built when ANYK_CUDA=OFF: the NCCL factory exists but says how to get it.
#include "parallel/nccl_comm.h"

namespace anyk {

std::unique_ptr<Communicator> make_nccl_communicator(const Comm&) {
  ANYK_FAIL("--comm nccl: anyk was built without CUDA/NCCL hint: cmake -DANYK_CUDA=ON (NCCL from "
            "/usr/local/cuda), or use --comm mpi");
}

int nccl_version() {
  ANYK_FAIL("--comm nccl: anyk was built without CUDA/NCCL hint: cmake -DANYK_CUDA=ON (NCCL from "
            "/usr/local/cuda), or use --comm mpi");
}

}  // namespace anyk
