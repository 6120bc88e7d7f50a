// Model weights as one HDF5 file: one float32 dataset per parameter, named by its ParamStore
// name and shaped like it (expert tensors hold every expert: (E, ...)), each with a `crc32`
// attribute, plus root attributes `format` = "anyk-weights", `version` = 1 and the model config
// fields. A consolidated checkpoint (anyk convert --to consolidated) is this file plus optimizer
// groups and checkpoint attributes, so everything that reads weights reads it too.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include "model/lm.h"

namespace anyk::io {

// Writes path + ".tmp", fsyncs it, then renames it to path. Every HDF5 failure throws naming
// file and dataset. step and seed, when given (the trainer's model.h5), are stored as root
// attributes `step` and `seed`, so a conversion can carry them (older files have neither);
// tokenizer_hash, when not empty, as `tokenizer_hash` (launch/tokenizer.h).
void save_weights(const std::string& path, const LM& lm, std::optional<int64_t> step = {},
                  std::optional<int64_t> seed = {}, const std::string& tokenizer_hash = "");
// The file's `tokenizer_hash` attribute, "" when it has none (older files, consolidated ones).
std::string weights_tokenizer_hash(const std::string& path);
// Reads every parameter of lm from path; a missing dataset, a shape that differs from the
// model's config or a checksum mismatch throws naming file and dataset.
void load_weights(const std::string& path, LM& lm);
// The model config stored in a weights (or consolidated) file's attributes.
ModelConfig weights_config(const std::string& path);

}  // namespace anyk::io
