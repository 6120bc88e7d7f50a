// Small output helpers of the commands: a line sink that writes to stdout and (optionally) a log
// file, and the single-core SGEMM rate used for MFU. (JSON: io/json.h.)
#pragma once
#include <cstdio>
#include <string>

namespace anyk::launch {

// Writes every line to stdout (flushed; warnings and notes: to stderr) and, when open, to a log file.
class LineSink {
 public:
  LineSink() = default;
  ~LineSink();
  void open_log(const std::string& path);  // truncates
  // Throws `writing PATH: <errno text> (hint: ...)` when the log cannot be written (full disk).
  void line(const std::string& s, std::FILE* to = stdout);

 private:
  std::FILE* log_ = nullptr;
  std::string path_;
};

// FLOP/s of one core on a 512x512x512 float GEMM (Eigen, single-threaded, fastest of 21 reps).
double measure_sgemm_flops_single_core();

}  // namespace anyk::launch
