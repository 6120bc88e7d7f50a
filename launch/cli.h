// Command-line entry: `anyk <command> [options]`. Returns the process exit code; every user
// error is one line on stderr and a non-zero code.
#pragma once

namespace anyk {
int run_cli(int argc, char** argv);
}
