// `anyk convert`: offline, single-process conversion of a checkpoint (a sharded step directory,
// a `latest` file, or a consolidated HDF5 file) into a consolidated HDF5 file (the model.h5
// layout plus optimizer groups), a sharded checkpoint for another expert-parallel size, or
// safetensors. Formats: docs/checkpoint-format.md.
#pragma once

namespace anyk::launch {

// `anyk convert`: argv after the command name. Returns the exit code.
int convert_command(int argc, char** argv);

}  // namespace anyk::launch
