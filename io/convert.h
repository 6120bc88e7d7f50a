// Offline, single-process conversion of a checkpoint (a sharded step directory, a `latest` file,
// or a consolidated HDF5 file) into a consolidated HDF5 file (the model.h5 layout plus optimizer
// groups), a sharded checkpoint for another expert-parallel size, or safetensors. The command
// line is `anyk convert` (launch/convert_command.h). Formats: docs/checkpoint-format.md.
#pragma once
#include <cstdint>
#include <string>

#include "io/gguf.h"

namespace anyk::io {

struct ConvertSummary {
  std::string source;  // the checkpoint directory or file read
  int64_t step = 0, experts = 0, ep_size = 0;
  bool moments = false;  // AdamW moments written
};

// Reads checkpoint and writes out as `to` = "consolidated", "safetensors", "gguf" (llama.cpp, see
// gguf.h; `gguf` gives K and the dtype), "hf" (a Hugging Face Mixtral directory, hf.h; K from
// `gguf.k`) or "ep" (ep ranks). A directory holding model.h5 (a run
// directory) reads that file. An existing out is replaced only once the new one is complete.
// Progress bars go to stderr.
ConvertSummary convert_checkpoint(const std::string& checkpoint, const std::string& to, int ep,
                                  const std::string& out, bool no_optimizer, const GGUFExport& gguf = {});

}  // namespace anyk::io
