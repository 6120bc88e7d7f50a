// Command-line entry: `anyk <command> [options]` with commands prepare, train, eval, convert.with commands prepare, train and eval. Returns
// the process exit code: 0 on success, 2 on a user error, which is one line on stderr
// (`anyk: error: <message>`).
#pragma once

namespace anyk {
int run_cli(int argc, char** argv);
}
