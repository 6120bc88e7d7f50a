// The stdout+log line sink, and the SGEMM peak measurement.
#include "launch/report.h"

#include <cerrno>

#include "io/fsio.h"

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <vector>

#include "core/check.h"

namespace anyk::launch {

using io::fail_io;

LineSink::~LineSink() {
  if (log_) std::fclose(log_);
}

void LineSink::open_log(const std::string& path) {
  if (log_) std::fclose(log_);
  log_ = std::fopen(path.c_str(), "w");
  if (!log_) fail_io("writing", path, errno, io::kCheckpointSpaceHint);
  path_ = path;
}

void LineSink::line(const std::string& s, std::FILE* to) {
  std::fflush(stdout);  // a stderr line after the stdout lines before it
  std::fputs(s.c_str(), to);
  std::fputc('\n', to);
  std::fflush(to);
  if (log_) {
    std::fputs(s.c_str(), log_);
    std::fputc('\n', log_);
    if (std::fflush(log_) != 0 || std::ferror(log_)) {
      const int err = errno;
      std::fclose(log_);
      log_ = nullptr;  // the message below must not be logged into the same full disk again
      fail_io("writing", path_, err, io::kCheckpointSpaceHint);
    }
  }
}

double measure_sgemm_flops_single_core() {
  constexpr int n = 512;
  Eigen::MatrixXf a = Eigen::MatrixXf::Random(n, n), b = Eigen::MatrixXf::Random(n, n), c(n, n);
  const int saved = Eigen::nbThreads();
  Eigen::setNbThreads(1);
  c.noalias() = a * b;  // warm-up: page in buffers, pack kernels
  std::vector<double> secs;
  for (int rep = 0; rep < 21; ++rep) {
    auto t0 = std::chrono::steady_clock::now();
    c.noalias() = a * b;
    auto t1 = std::chrono::steady_clock::now();
    secs.push_back(std::chrono::duration<double>(t1 - t0).count());
  }
  Eigen::setNbThreads(saved);
  std::sort(secs.begin(), secs.end());
  volatile float sink = c(0, 0);  // keep the product alive
  (void)sink;
  // The fastest repetition: interference from other processes only ever slows a run down, so
  // the best time is the closest to the core's real rate (the peak MFU is measured against).
  return 2.0 * double(n) * n * n / secs.front();
}

}  // namespace anyk::launch
