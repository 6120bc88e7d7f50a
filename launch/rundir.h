// Run-directory safety: a run dir that already holds a run is never overwritten unless asked
// (--resume continues it, --overwrite moves it aside), and an advisory lock (flock on
// RUN_DIR/.lock, held by rank 0 for the run's life and released by the kernel however the process
// dies) stops a second process from writing into the same run dir.
#pragma once
#include <string>
#include <vector>

namespace anyk::launch {

// The anyk files found in dir that make it a run (config.ini, train.log, metrics.jsonl,
// model.h5, sweep.json, checkpoints/); empty when there are none or dir does not exist.
std::vector<std::string> run_files(const std::string& dir);

// Renames dir to dir.overwritten-<UTC time>[-N] (a fresh name) and returns the new path.
std::string move_run_aside(const std::string& dir);

// "pid N on host H" of the process that holds dir/.lock now, or "" when none does (no lock file,
// or its lock is free). Probes with a shared lock taken and dropped at once, without waiting.
std::string run_dir_holder(const std::string& dir);

// An exclusive flock on dir/.lock, taken without waiting. The file holds "pid N host H" of the
// holder. Fails at once with "run dir DIR is in use by pid N on host H" when another process
// (on this host, or on another one where the file system supports flock) holds it.
class RunDirLock {
 public:
  RunDirLock() = default;
  explicit RunDirLock(const std::string& dir);
  RunDirLock(const RunDirLock&) = delete;
  RunDirLock& operator=(const RunDirLock&) = delete;
  RunDirLock(RunDirLock&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  RunDirLock& operator=(RunDirLock&& o) noexcept;
  ~RunDirLock();
  bool held() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

}  // namespace anyk::launch
