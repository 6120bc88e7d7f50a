// llm.c token shard IO. Writes go through a temp file, fsync and rename so a crash never leaves
// a half-written shard under the real name; reads check every header field and the file size.
#include "data/shard.h"

#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fcntl.h>
#include <unistd.h>

#include "core/check.h"

namespace anyk::data {

static_assert(std::endian::native == std::endian::little,
              "shards are little-endian and are read/written without byte swapping");

namespace {

// Writes all of buf, retrying short writes and EINTR.
void write_all(int fd, const void* buf, size_t len, const std::string& path) {
  const char* p = static_cast<const char*>(buf);
  while (len > 0) {
    ssize_t w = ::write(fd, p, len);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      int err = errno;
      ::close(fd);
      ANYK_FAIL("write_shard: writing " << path << " failed: " << std::strerror(err)
                                        << " hint: check free disk space and permissions");
    }
    p += w;
    len -= static_cast<size_t>(w);
  }
}

}  // namespace

void write_shard(const std::string& path, const uint16_t* toks, size_t n) {
  ANYK_CHECK(n <= static_cast<size_t>(INT32_MAX),
             "write_shard: " << path << ": " << n << " tokens exceed the int32 header count"
                             << " hint: split the data into several shards");
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ANYK_CHECK(fd >= 0, "write_shard: cannot create " << tmp << ": " << std::strerror(errno)
                                                    << " hint: check that the directory exists and is writable");
  int32_t header[kShardHeaderInts] = {};
  header[0] = kShardMagic;
  header[1] = kShardVersion;
  header[2] = static_cast<int32_t>(n);
  write_all(fd, header, sizeof(header), tmp);
  if (n > 0) write_all(fd, toks, n * sizeof(uint16_t), tmp);
  if (::fsync(fd) != 0) {
    int err = errno;
    ::close(fd);
    ANYK_FAIL("write_shard: fsync of " << tmp << " failed: " << std::strerror(err)
                                       << " hint: check the filesystem");
  }
  ANYK_CHECK(::close(fd) == 0, "write_shard: closing " << tmp << " failed: " << std::strerror(errno)
                                                       << " hint: check free disk space");
  ANYK_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0,
             "write_shard: renaming " << tmp << " to " << path << " failed: " << std::strerror(errno)
                                      << " hint: check permissions on the output directory");
}

int64_t check_shard(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  ANYK_CHECK(fs::is_regular_file(path, ec),
             "read_shard: " << path << " does not exist or is not a regular file"
                            << " hint: run `anyk prepare` first or fix the data path");
  const uintmax_t size = fs::file_size(path, ec);
  ANYK_CHECK(!ec, "read_shard: cannot stat " << path << ": " << ec.message());
  ANYK_CHECK(size >= kShardHeaderBytes,
             "read_shard: " << path << " holds " << size << " bytes, less than the "
                            << kShardHeaderBytes << "-byte header (not an llm.c token shard?)");
  std::FILE* f = std::fopen(path.c_str(), "rb");
  ANYK_CHECK(f, "read_shard: cannot open " << path << ": " << std::strerror(errno)
                                           << " hint: check file permissions");
  int32_t header[kShardHeaderInts];
  const bool got_header = std::fread(header, sizeof(header), 1, f) == 1;
  std::fclose(f);
  ANYK_CHECK(got_header, "read_shard: cannot read the header of " << path);
  ANYK_CHECK(header[0] == kShardMagic, "read_shard: " << path << ": bad magic " << header[0] << ", expected "
                                                      << kShardMagic << " (not an llm.c token shard?)");
  ANYK_CHECK(header[1] == kShardVersion, "read_shard: " << path << ": unsupported version " << header[1]
                                                        << ", expected " << kShardVersion);
  const int64_t count = header[2];
  const uintmax_t body = size - kShardHeaderBytes;
  if (count < 0 || body != static_cast<uintmax_t>(count) * sizeof(uint16_t)) {
    if (count >= 0 && body < static_cast<uintmax_t>(count) * sizeof(uint16_t))
      ANYK_FAIL("read_shard: " << path << ": file is truncated: header says " << count
                               << " tokens, file holds " << body / sizeof(uint16_t)
                               << " hint: re-prepare the data");
    ANYK_FAIL("read_shard: " << path << ": size mismatch: header says " << count
                             << " tokens, file holds " << body << " bytes after the header"
                             << " hint: re-prepare the data");
  }
  return count;
}

std::vector<uint16_t> read_shard(const std::string& path, int vocab) {
  const int64_t count = check_shard(path);
  std::FILE* f = std::fopen(path.c_str(), "rb");
  ANYK_CHECK(f, "read_shard: cannot open " << path << ": " << std::strerror(errno)
                                           << " hint: check file permissions");
  if (std::fseek(f, long(kShardHeaderBytes), SEEK_SET) != 0) {
    std::fclose(f);
    ANYK_FAIL("read_shard: cannot seek past the header of " << path);
  }
  std::vector<uint16_t> toks(static_cast<size_t>(count));
  const size_t got = count > 0 ? std::fread(toks.data(), sizeof(uint16_t), toks.size(), f) : 0;
  std::fclose(f);
  ANYK_CHECK(got == toks.size(), "read_shard: " << path << ": read " << got << " of " << count
                                                << " tokens");
  if (vocab > 0) {
    for (size_t i = 0; i < toks.size(); ++i)
      ANYK_CHECK(toks[i] < vocab, "read_shard: " << path << ": token " << toks[i] << " at index " << i
                                                 << " is >= vocab " << vocab << " hint: pass --vocab "
                                                 << max_token(toks) + 1 << " or re-prepare the data");
  }
  return toks;
}

int max_token(const std::vector<uint16_t>& toks) {
  int m = -1;
  for (uint16_t t : toks) m = t > m ? t : m;
  return m;
}

}  // namespace anyk::data
