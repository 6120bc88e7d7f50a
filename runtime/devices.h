// Choosing the device a command runs on (`--device cpu|cuda|checked`, `--precision f32|bf16`):
// parsing the names, the node-local rank that picks a GPU, and preparing the device for this
// process (CUDA: the backend's init and an Allocator over its memory; checked: its tables and
// pool, strict). Everything after that allocates through the device's allocator and runs through
// its kernel tables, so no trainer code depends on which device it is.
#pragma once
#include <string>

#include "runtime/tensor.h"

namespace anyk {

// "cpu" | "cuda" | "checked"; anything else is an error naming the value and the choices.
Device parse_device(const std::string& name);
// "f32" -> false, "bf16" -> true; anything else is an error naming the value and the choices.
bool parse_bf16(const std::string& precision);

// This process's rank on its node: OMPI_COMM_WORLD_LOCAL_RANK, then SLURM_LOCALID, then
// MPI_LOCALRANKID, else 0. A value that is not a non-negative integer is an error naming the variable.
int local_rank_from_env();

// Prepares device d for this process and returns one line describing it for the start-up lines.
// CPU: nothing ("cpu"). CUDA: anyk::cuda::init(local_rank_from_env(), bf16) (throws naming the
// problem when the build lacks CUDA or no GPU is visible) and the CUDA Allocator. Checked: its
// kernel tables and allocator, strict mode, and the fault report. bf16 needs CUDA. When
// free_bytes is given it receives the device's free memory (-1: unknown or host memory).
std::string use_device(Device d, bool bf16, double* free_bytes = nullptr);

}  // namespace anyk
