// safetensors writing and reading; see safetensors.h.
#include "io/safetensors.h"

#include <cstring>
#include <fstream>
#include <iterator>

#include "core/check.h"
#include "io/fsio.h"

namespace anyk::io {

namespace {

int64_t f32_bytes(const std::vector<int64_t>& shape) {
  int64_t n = 4;
  for (int64_t d : shape) n *= d;
  return n;
}

}  // namespace

void write_safetensors_f32(const std::string& path, const Json& metadata, const std::vector<SafetensorsTensor>& tensors,
                           const std::function<void(int64_t, int64_t)>& progress) {
  Json header = {{"__metadata__", metadata}};
  int64_t offset = 0;
  for (const SafetensorsTensor& t : tensors) {
    const int64_t n = f32_bytes(t.shape);
    header[t.name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  std::string text = json_text(header);
  while (text.size() % 8) text += ' ';
  FileWriter w(path);
  const uint64_t len = text.size();
  unsigned char le[8];
  for (int i = 0; i < 8; ++i) le[i] = static_cast<unsigned char>(len >> (8 * i));
  w.write(le, 8);
  w.write(text.data(), text.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    w.write(tensors[i].data, size_t(f32_bytes(tensors[i].shape)));  // little-endian host
    if (progress) progress(int64_t(i + 1), int64_t(tensors.size()));
  }
  w.close();
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  std::ifstream in(path, std::ios::binary);
  ANYK_CHECK(in, "cannot read " << path);
  bytes_.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  uint64_t len = 0;
  for (int i = 0; i < 8 && size_t(i) < bytes_.size(); ++i) len |= uint64_t((unsigned char)bytes_[size_t(i)]) << (8 * i);
  ANYK_CHECK(bytes_.size() >= 8 && len <= bytes_.size() - 8,
             path << " is not a safetensors file (header length " << len << ")");
  try {
    header_ = Json::parse(bytes_.substr(8, len));
  } catch (const std::exception& e) {
    ANYK_FAIL(path << ": the safetensors header is not valid JSON: " << e.what());
  }
  data0_ = 8 + len;
}

void SafetensorsFile::f32(const std::string& name, const std::vector<int64_t>& shape, float* dst) const {
  ANYK_CHECK(header_.contains(name), path_ << " has no tensor '" << name << "'");
  const Json& h = header_[name];
  const std::string dtype = h.value("dtype", std::string());
  ANYK_CHECK(dtype == "F32", path_ << ": " << name << " is " << dtype << ", anyk reads F32");
  ANYK_CHECK(h["shape"].get<std::vector<int64_t>>() == shape,
             path_ << ": " << name << " has shape " << h["shape"] << ", this model needs " << Json(shape));
  const auto off = h["data_offsets"].get<std::vector<uint64_t>>();
  const int64_t n = f32_bytes(shape);
  ANYK_CHECK(off.size() == 2 && off[1] - off[0] == uint64_t(n) && data0_ + off[1] <= bytes_.size(),
             path_ << ": the data offsets of " << name << " do not fit the file");
  std::memcpy(dst, bytes_.data() + data0_ + off[0], size_t(n));
}

}  // namespace anyk::io
