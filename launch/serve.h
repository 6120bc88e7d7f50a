// `anyk serve`: an OpenAI-compatible completions server where every request picks its K
// (serve/http.h, serve/scheduler.h; docs/serve.md).
#pragma once

namespace anyk::launch {

// `anyk serve`: argv after the command name. Returns the exit code.
int serve_command(int argc, char** argv);

}  // namespace anyk::launch
