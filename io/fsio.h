// File-system I/O with errors a user can act on. Every failure names the path and errno's text,
// in the form `writing PATH: No space left on device (hint: ...)`, and a failed atomic write
// removes its own temporary file, so a full disk never leaves half-written files behind.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace anyk::io {

// The advice after "free space on the file system holding DIR (df -h DIR), " on a full disk: the
// caller's own (the trainer passes kCheckpointSpaceHint) or, when empty, kAnotherDiskHint.
inline constexpr const char* kAnotherDiskHint = "or write to another disk";
inline constexpr const char* kCheckpointSpaceHint =
    "lower --keep, or write to another disk; earlier checkpoints are intact";

// "VERB PATH: strerror(err) (hint: what to do for this errno)".
std::string io_message(const std::string& verb, const std::string& path, int err, const std::string& space_hint = {});
[[noreturn]] void fail_io(const std::string& verb, const std::string& path, int err,
                          const std::string& space_hint = {});

// errno for a write that failed without one (an HDF5 call): ENOSPC when the file system holding
// path has no free block, EDQUOT/EROFS/EACCES where they apply, 0 when nothing explains it.
int guess_write_errno(const std::string& path);

// The one write-to-temporary-then-rename of the project: fill(path + ".tmp") writes the file
// (and closes it), then it is fsynced, renamed to path and the directory fsynced. On any failure
// path.tmp is removed and the error says what and where (`writing PATH: ... (hint: ...)`).
void write_file_atomic(const std::string& path, const std::function<void(const std::string& tmp)>& fill,
                       const std::string& space_hint = {});
// The same for a text: write(2) until done.
void write_file_atomic(const std::string& path, const std::string& text, const std::string& space_hint = {});

// A file opened for writing (truncated) whose every failure throws `writing SHOWN: ...` (SHOWN:
// path unless given).
class FileWriter {
 public:
  explicit FileWriter(const std::string& path, const std::string& space_hint = {}, const std::string& shown = {});
  ~FileWriter();
  FileWriter(const FileWriter&) = delete;
  FileWriter& operator=(const FileWriter&) = delete;
  void write(const void* data, size_t n);
  void close();

 private:
  std::string path_, hint_;
  int fd_ = -1;
};

// fsync of the directory holding path (after a rename into it); errors ignored.
void fsync_dir_of(const std::string& path);

// A regular file's size in bytes, 0 when it cannot be read (the callers then refuse the file).
int64_t file_bytes(const std::string& path);

// Removes a file or directory tree, ignoring errors (cleanup after a failure).
void remove_quietly(const std::string& path);

}  // namespace anyk::io
