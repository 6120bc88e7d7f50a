// Model weights as one HDF5 file: one float32 dataset per parameter, named by its ParamStore
// name and shaped like it, plus root attributes `format` = "anyk-weights", `version` = 1 and the
// model config fields. (The sharded checkpoint with optimizer state is a separate format.)
#pragma once
#include <string>

#include "model/lm.h"

namespace anyk::launch {

// Writes path + ".tmp", then renames it to path. Every HDF5 failure throws naming file and dataset.
void save_weights(const std::string& path, const LM& lm);
// Reads every parameter of lm from path; a missing dataset or a shape that differs from the
// model's config throws naming file and dataset.
void load_weights(const std::string& path, LM& lm);

}  // namespace anyk::launch
