// Shared by the libFuzzer harnesses: a private temporary directory per process (removed at exit),
// whole-file writes, and the checks on what a refusal left behind. A harness failing to write its
// own temp files is an environment problem, not a finding, so these abort with a message instead
// of throwing.
#pragma once
#include <fcntl.h>
#include <hdf5.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <string>

namespace anyk::fuzz {

// <base>/anyk_fuzz_<name>_XXXXXX, created once, removed when the process exits. The base is
// $ANYK_FUZZ_TMPDIR, else /dev/shm where it is writable, else $TMPDIR or /tmp: rewriting a file
// on ext4 (truncate, then write) flushes it at close, which made every execution wait on the disk
// (250 exec/s instead of thousands).
inline const std::string& temp_dir(const char* name) {
  struct Dir {
    std::string path;
    explicit Dir(const char* name) {
      const char* base = std::getenv("ANYK_FUZZ_TMPDIR");
      if (!base || !*base) base = ::access("/dev/shm", W_OK) == 0 ? "/dev/shm" : std::getenv("TMPDIR");
      std::string tmpl = std::string(base && *base ? base : "/tmp") + "/anyk_fuzz_" + name + "_XXXXXX";
      if (!::mkdtemp(tmpl.data())) {
        std::perror("anyk fuzz: mkdtemp");
        std::abort();
      }
      path = tmpl;
    }
    ~Dir() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  };
  static Dir dir(name);
  return dir.path;
}

// agree_or_throw (train's validation) turns *any* std::exception into an AgreedError (an
// anyk::Error) carrying the original what(), so a std::bad_alloc or std::length_error raised
// there would pass as a refusal. Their what() strings are libstdc++'s and Boost's own
// ("std::bad_alloc", "vector::_M_default_append", "basic_string::_M_create", "stoi", ...), which
// no anyk message starts with: abort on those. (Checking for ANYK_CHECK's " [file:line]" suffix
// instead does not work: a value with a NUL byte cuts what() short.)
inline void check_anyk_message(const char* harness, const std::exception& e) {
  const std::string m = e.what();
  static const char* const kForeign[] = {"std::", "basic_string", "vector::", "map::", "unordered_map::",
                                         "bitset", "stoi", "stol", "stoul", "stoll", "stoull", "stof",
                                         "stod", "stold", "boost::", "bad_", "Unknown exception"};
  for (const char* p : kForeign) {
    if (m.rfind(p, 0) == 0) {
      std::fprintf(stderr, "%s: a foreign exception wrapped as anyk::Error: %s\n", harness, m.c_str());
      std::abort();
    }
  }
}

inline void write_file(const std::string& path, const void* data, size_t size) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    std::perror(("anyk fuzz: open " + path).c_str());
    std::abort();
  }
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t w = ::write(fd, p, size);
    if (w <= 0) {
      std::perror(("anyk fuzz: write " + path).c_str());
      std::abort();
    }
    p += w;
    size -= size_t(w);
  }
  ::close(fd);
}

// Lets libhdf5 keep the blocks it frees on its own free lists, so that every H5Fopen reuses them.
// H5Fopen callocs its metadata cache structure (H5C_t, about 0.5 MiB, mostly the index's hash
// table); HDF5's default per-list limit of 64 KiB for "regular" blocks frees it at every H5Fclose,
// and under ASan a block that size is mapped and unmapped afresh each time, so every open paid for
// about 130 page faults and zeroing new pages. That was a third (checkpoint) to a half (weights) of
// those harnesses' CPU time per input (docs/fuzzing.md, "HDF5's free lists"). The limits stay finite (4 MiB for the
// regular lists, 16 MiB for arrays, 64 MiB for blocks), so memory does not grow with the number
// of inputs. Blocks on these lists are reachable from HDF5's globals, so LeakSanitizer does not
// count them; an HDF5 object anyk forgets to close is still caught by check_no_h5_objects_open.
inline void keep_h5_free_blocks() {
  if (H5set_free_list_limits(4 << 20, 1 << 20, 16 << 20, 4 << 20, 64 << 20, 16 << 20) < 0) {
    std::fprintf(stderr, "anyk fuzz: H5set_free_list_limits failed\n");
    std::abort();
  }
}

// Every HDF5 file, group, dataset, attribute and type anyk opened must be closed again, on the
// error paths too: aborts (a finding) when any is still open after the loader returned.
inline void check_no_h5_objects_open(const char* harness) {
  const ssize_t open_objects = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);
  if (open_objects != 0) {
    std::fprintf(stderr, "%s: %zd HDF5 objects left open after the loader returned\n", harness, open_objects);
    std::abort();
  }
}

}  // namespace anyk::fuzz
