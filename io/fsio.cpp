// See fsio.h.
#include "io/fsio.h"

#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "core/check.h"

namespace anyk::io {

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

std::string hint_for(int err, const std::string& path, const std::string& space_hint) {
  const std::string dir = user_dir_of(path);
  switch (err) {
    case ENOSPC:
      return "free space on the file system holding " + dir + " (df -h " + dir + "), " +
             (space_hint.empty() ? std::string(kAnotherDiskHint) : space_hint);
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

std::string io_message(const std::string& verb, const std::string& path, int err, const std::string& space_hint) {
  return verb + " " + path + ": " + (err ? std::strerror(err) : "unknown I/O error") + " (hint: " +
         hint_for(err, path, space_hint) + ")";
}

void fail_io(const std::string& verb, const std::string& path, int err, const std::string& space_hint) {
  throw Error(io_message(verb, path, err, space_hint));
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

void write_file_atomic(const std::string& path, const std::function<void(const std::string& tmp)>& fill,
                       const std::string& space_hint) {
  const std::string tmp = path + ".tmp";
  try {
    fill(tmp);
  } catch (...) {
    remove_quietly(tmp);
    throw;
  }
  int fd = ::open(tmp.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 || ::fsync(fd) != 0) {
    const int err = errno;
    if (fd >= 0) ::close(fd);
    remove_quietly(tmp);
    fail_io("writing", path, err, space_hint);
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    remove_quietly(tmp);
    fail_io("renaming " + tmp + " to", path, err, space_hint);
  }
  fsync_dir_of(path);
}

void write_file_atomic(const std::string& path, const std::string& text, const std::string& space_hint) {
  write_file_atomic(
      path,
      [&](const std::string& tmp) {
        FileWriter w(tmp, space_hint, path);  // errors name the final path
        w.write(text.data(), text.size());
        w.close();
      },
      space_hint);
}

FileWriter::FileWriter(const std::string& path, const std::string& space_hint, const std::string& shown)
    : path_(shown.empty() ? path : shown), hint_(space_hint) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) fail_io("writing", path_, errno, hint_);
}

FileWriter::~FileWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void FileWriter::write(const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd_, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) fail_io("writing", path_, w < 0 ? errno : ENOSPC, hint_);
    p += w;
    n -= size_t(w);
  }
}

void FileWriter::close() {
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail_io("writing", path_, errno, hint_);
}

void fsync_dir_of(const std::string& path) {
  int dfd = ::open(dir_of(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

int64_t file_bytes(const std::string& path) {
  std::error_code ec;
  const auto n = std::filesystem::file_size(path, ec);
  return ec ? 0 : int64_t(n);
}

}  // namespace anyk::io
