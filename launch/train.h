// `anyk train`: option parsing (INI config + flag overrides), validation of everything before any
// file is written, the training loop (gradient accumulation, clipping, AdamW, LR schedule),
// per-step logs and metrics, periodic evals, the HDF5 weights and the final K-sweep.
#pragma once

namespace anyk::launch {

// argv after the command name. Returns the exit code; user errors throw anyk::Error.
int train_command(int argc, char** argv);

}  // namespace anyk::launch
