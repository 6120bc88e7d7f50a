// `anyk convert`: the command line of the offline checkpoint conversion (io/convert.h).
#pragma once

namespace anyk::launch {

// `anyk convert`: argv after the command name. Returns the exit code.
int convert_command(int argc, char** argv);

}  // namespace anyk::launch
