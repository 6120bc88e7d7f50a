// Command-line entry: `anyk <command> [options]` with commands prepare, train, eval, convert and
// generate. Returns the process exit code: 0 on success, 2 on a user error, which is one line on
// stderr (`anyk: error: <message>`).
#pragma once

namespace anyk {
int run_cli(int argc, char** argv);
}
