// The one safetensors writer and reader of anyk (`anyk convert --to safetensors` and the Hugging
// Face Mixtral directory, io/hf.h). The layout: 8 bytes little-endian uint64 N, N bytes of JSON
// (padded with spaces to a multiple of 8, the data's alignment), then the raw tensor data. The JSON
// object holds "__metadata__" (string values) first, then one entry per tensor in file order:
// {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]} (byte offsets into the data
// section, contiguous). anyk writes and reads F32 only (docs/checkpoint-format.md).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "io/json.h"

namespace anyk::io {

struct SafetensorsTensor {
  std::string name;
  std::vector<int64_t> shape;
  const float* data;  // contiguous, row-major, shape's element count
};

// Writes the tensors, in the order given, to path with a FileWriter (the caller makes it atomic
// or writes into a temporary directory); metadata is the "__metadata__" object. progress(i, n),
// when given, runs after tensor i of n is written.
void write_safetensors_f32(const std::string& path, const Json& metadata, const std::vector<SafetensorsTensor>& tensors,
                           const std::function<void(int64_t, int64_t)>& progress = {});

// A whole safetensors file in memory: its header is parsed; f32() copies one tensor out.
class SafetensorsFile {
 public:
  // Reads path; a file too short for its header or a header that is not JSON throws naming path.
  explicit SafetensorsFile(const std::string& path);
  const Json& header() const { return header_; }
  // Copies tensor `name` into dst (shape's element count); a missing tensor, a dtype other than
  // F32, another shape or offsets outside the file throw in one line naming the file and tensor.
  void f32(const std::string& name, const std::vector<int64_t>& shape, float* dst) const;

 private:
  std::string path_, bytes_;
  Json header_;
  size_t data0_ = 0;  // where the data section starts
};

}  // namespace anyk::io
