// Shared by the libFuzzer harnesses: a private temporary directory per process (removed at exit)
// and whole-file writes. A harness failing to write its own temp files is an environment problem,
// not a finding, so these abort with a message instead of throwing.
#pragma once
#include <fcntl.h>
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

// An anyk::Error is the expected refusal only when it comes from ANYK_CHECK / ANYK_FAIL, whose
// message ends in " [file:line]". agree_or_throw (train's validation) turns *any* std::exception
// into an AgreedError carrying the original what(), so a std::bad_alloc or std::length_error
// there would otherwise pass as an anyk::Error: this tells them apart, and aborts on the latter.
inline void check_anyk_message(const char* harness, const std::exception& e) {
  const std::string m = e.what();
  const size_t open = m.rfind(" [");
  const size_t colon = m.rfind(':');
  bool ok = !m.empty() && m.back() == ']' && open != std::string::npos && colon != std::string::npos &&
            colon > open && colon + 2 < m.size();
  for (size_t i = colon + 1; ok && i + 1 < m.size(); ++i) ok = m[i] >= '0' && m[i] <= '9';
  if (!ok) {
    std::fprintf(stderr, "%s: an anyk::Error that no ANYK_CHECK raised (a wrapped foreign exception?): %s\n",
                 harness, m.c_str());
    std::abort();
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

}  // namespace anyk::fuzz
