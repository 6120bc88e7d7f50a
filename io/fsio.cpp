// See fsio.h.
#include "launch/fsio.h"

#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "runtime/check.h"

namespace anyk::launch {

namespace fs = std::filesystem;

namespace {

std::string dir_of(const std::string& path) {
  fs::path p = fs::path(path).parent_path();
  return p.empty() ? std::string(".") : p.string();
}

// The directory a user should look at: the parent, above any *.tmp staging directory.
std::string user_dir_of(const std::string& path) {
  fs::path p = fs::path(dir_of(path));
  while (p.has_parent_path() && p.filename().string().ends_with(".tmp")) p = p.parent_path();
  return p.empty() ? std::string(".") : p.string();
}

std::string hint_for(int err, const std::string& path) {
  const std::string dir = user_dir_of(path);
  switch (err) {
    case ENOSPC:
      return "free space on the file system holding " + dir + " (df -h " + dir +
             "), lower --keep, or write to another disk; earlier checkpoints are intact";
    case EDQUOT: return "your disk quota is exhausted; free space or write to another file system";
    case EROFS: return dir + " is on a read-only file system; write somewhere else";
    case EACCES:
    case EPERM: return "no permission to write in " + dir + "; fix its permissions or choose another path";
    case EIO: return "the disk reported an I/O error; check it (dmesg) and write somewhere else";
    case ENOENT: return dir + " does not exist or was removed while writing";
    case EFBIG: return "the file exceeds the file-size limit (ulimit -f) or the file system's maximum";
    default: return "check the disk and the path";
  }
}

}  // namespace

std::string io_message(const std::string& verb, const std::string& path, int err) {
  return verb + " " + path + ": " + (err ? std::strerror(err) : "unknown I/O error") + " (hint: " +
         hint_for(err, path) + ")";
}

void fail_io(const std::string& verb, const std::string& path, int err) {
  throw Error(io_message(verb, path, err));
}

int guess_write_errno(const std::string& path) {
  struct statvfs st;
  if (::statvfs(dir_of(path).c_str(), &st) != 0) return errno == ENOENT ? ENOENT : 0;
  if (st.f_flag & ST_RDONLY) return EROFS;
  if (st.f_bavail == 0 || st.f_bfree == 0) return ENOSPC;
  if (st.f_files > 0 && st.f_favail == 0) return ENOSPC;  // no free inodes
  if (::access(dir_of(path).c_str(), W_OK) != 0) return errno;
  return 0;
}

void remove_quietly(const std::string& path) {
  std::error_code ec;
  fs::remove_all(path, ec);
}

void write_file_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail_io("writing", tmp, errno);
  const char* p = text.data();
  size_t left = text.size();
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n < 0 ? errno : ENOSPC;
      ::close(fd);
      ::unlink(tmp.c_str());
      fail_io("writing", path, err);
    }
    p += n;
    left -= size_t(n);
  }
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    fail_io("writing", path, err);
  }
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    fail_io("writing", path, err);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    fail_io("renaming " + tmp + " to", path, err);
  }
  int dfd = ::open(dir_of(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace anyk::launch
