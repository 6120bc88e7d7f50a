// See rundir.h.
#include "launch/rundir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>

#include "io/fsio.h"
#include "core/check.h"

namespace anyk::launch {

using io::fail_io;

namespace fs = std::filesystem;

std::vector<std::string> run_files(const std::string& dir) {
  std::vector<std::string> found;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return found;
  for (const char* name : {"config.ini", "train.log", "metrics.jsonl", "model.h5", "sweep.json", "checkpoints"})
    if (fs::exists(fs::path(dir) / name, ec)) found.push_back(name);
  return found;
}

std::string move_run_aside(const std::string& dir) {
  std::string d = dir;
  while (d.size() > 1 && d.back() == '/') d.pop_back();
  char stamp[32];
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  std::strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm);
  std::string target = d + ".overwritten-" + stamp;
  for (int i = 2; fs::exists(fs::symlink_status(target)); ++i)
    target = d + ".overwritten-" + stamp + "-" + std::to_string(i);
  if (::rename(d.c_str(), target.c_str()) != 0) fail_io("moving aside the old run " + d + " to", target, errno);
  return target;
}

namespace {

// The holder writes "pid N on host H\n" right after taking the lock, so a process that loses a
// race by microseconds can find the file still empty: wait briefly (up to ~1 s) for the complete
// line before falling back to "another process".
std::string read_holder(int fd) {
  for (int attempt = 0; attempt < 100; ++attempt) {
    char buf[256] = {0};
    const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
    std::string s = n > 0 ? std::string(buf, size_t(n)) : std::string();
    if (!s.empty() && s.back() == '\n') {
      while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
      return s;
    }
    ::usleep(10000);
  }
  return "another process";
}

}  // namespace

std::string run_dir_holder(const std::string& dir) {
  const std::string path = (fs::path(dir) / ".lock").string();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";
  std::string holder;
  if (::flock(fd, LOCK_SH | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) holder = read_holder(fd);
  }
  ::close(fd);  // drops the probe's shared lock, if it got one
  return holder;
}

RunDirLock::RunDirLock(const std::string& dir) {
  const std::string path = (fs::path(dir) / ".lock").string();
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) fail_io("creating the lock file", path, errno);
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    if (err == EWOULDBLOCK) {
      const std::string holder = read_holder(fd);
      ::close(fd);
      ANYK_FAIL("run dir " << dir << " is in use by " << holder
                           << " hint: wait for that run to finish, stop it, or choose another --run-dir");
    }
    ::close(fd);
    fail_io("locking", path, err);
  }
  char host[256] = {0};
  ::gethostname(host, sizeof host - 1);
  const std::string who = "pid " + std::to_string(::getpid()) + " on host " + host + "\n";
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, who.data(), who.size(), 0) != ssize_t(who.size())) {
    const int err = errno;
    ::close(fd);
    fail_io("writing", path, err ? err : ENOSPC, io::kCheckpointSpaceHint);
  }
  fd_ = fd;
}

RunDirLock& RunDirLock::operator=(RunDirLock&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.fd_;
    o.fd_ = -1;
  }
  return *this;
}

RunDirLock::~RunDirLock() {
  if (fd_ >= 0) {
    // Clear the holder line first so that a later contender never reads a stale pid, then close:
    // closing the descriptor releases the flock. A failure to truncate only leaves a stale line.
    [[maybe_unused]] const int rc = ::ftruncate(fd_, 0);
    ::close(fd_);
  }
}

}  // namespace anyk::launch
