// File-system I/O with errors a user can act on. Every failure names the path and errno's text,
// in the form `writing PATH: No space left on device (hint: ...)`, and a failed atomic write
// removes its own temporary file, so a full disk never leaves half-written files behind.
#pragma once
#include <string>

namespace anyk::launch {

// "VERB PATH: strerror(err) (hint: what to do for this errno)".
std::string io_message(const std::string& verb, const std::string& path, int err);
[[noreturn]] void fail_io(const std::string& verb, const std::string& path, int err);

// errno for a write that failed without one (an HDF5 call): ENOSPC when the file system holding
// path has no free block, EDQUOT/EROFS/EACCES where they apply, 0 when nothing explains it.
int guess_write_errno(const std::string& path);

// Writes text to path through path.tmp: write(2) until done, fsync, rename, fsync of the
// directory. On any failure path.tmp is removed and the error says what and where.
void write_file_atomic(const std::string& path, const std::string& text);

// Removes a file or directory tree, ignoring errors (cleanup after a failure).
void remove_quietly(const std::string& path);

}  // namespace anyk::launch
