// Weights files (io/weights.cpp) and `anyk convert` on one: the round trip, and a file whose
// model attributes claim a model far larger than the file (found by fuzz_weights' bound check;
// docs/fuzzing.md) refused with one line before any model of that size is built.
#include <doctest/doctest.h>
#include <hdf5.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>

#include "io/convert.h"
#include "io/weights.h"
#include "model/lm.h"
#include "parallel/dispatcher.h"
#include "core/check.h"
#include "test_util.h"

using namespace anyk;
using anyk::test::TempDir;

namespace {

ModelConfig tiny() {
  ModelConfig c;
  c.layers = 1, c.dim = 8, c.heads = 2, c.experts = 2, c.expert_hidden = 8, c.seq_len = 8, c.vocab = 16;
  return c;
}

// Overwrites the int64 root attribute `name` of an existing HDF5 file, as a crafted file would.
void set_int_attr(const std::string& path, const char* name, int64_t v) {
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  REQUIRE(f >= 0);
  hid_t a = H5Aopen(f, name, H5P_DEFAULT);
  REQUIRE(a >= 0);
  CHECK(H5Awrite(a, H5T_NATIVE_INT64, &v) >= 0);
  H5Aclose(a);
  H5Fclose(f);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("save_weights -> weights_config + load_weights gives back the config and every value") {
  TempDir d("weights");
  LocalDispatcher disp(2);
  LM lm(tiny(), disp);
  lm.init(3);
  io::save_weights(d.file("w.h5"), lm);
  const ModelConfig c = io::weights_config(d.file("w.h5"));
  CHECK(c.dim == 8);
  CHECK(c.vocab == 16);
  CHECK(c.num_params() == tiny().num_params());
  LM back(c, disp);
  io::load_weights(d.file("w.h5"), back);
  for (Region r : {Region::Dense, Region::Expert})
    CHECK(std::memcmp(back.params().region_data(r), lm.params().region_data(r),
                      size_t(lm.params().region_numel(r)) * sizeof(float)) == 0);
}

TEST_CASE("a weights file whose attributes claim more parameters than the file holds is refused in one line") {
  TempDir d("weights");
  LocalDispatcher disp(2);
  LM lm(tiny(), disp);
  lm.init(3);
  const std::string w = d.file("w.h5");
  io::save_weights(w, lm);
  const double file_bytes = double(std::filesystem::file_size(w));
  // The real file holds its parameters: 4 bytes each, plus HDF5's overhead.
  CHECK(4.0 * double(tiny().num_params()) <= file_bytes);

  SUBCASE("dim 2^30 (before the fix: a signed overflow in 3*C, or an allocation of ~2^64 bytes)") {
    set_int_attr(w, "dim", int64_t(1) << 30);
  }
  SUBCASE("vocab 2^24: valid sizes, 512 MiB of embeddings from a file of a few KiB") {
    set_int_attr(w, "vocab", int64_t(1) << 24);
  }
  const std::string e = error_of([&] { io::weights_config(w); });
  INFO(e);
  CHECK(e.find(w + ": the model attributes (vocab ") != std::string::npos);
  const std::string holds = "bytes of parameters, but the file holds " + std::to_string(int64_t(file_bytes)) + " bytes";
  CHECK(e.find(holds) != std::string::npos);
  CHECK(e.find("hint: the file is corrupt") != std::string::npos);
  CHECK(e.find('\n') == std::string::npos);
  // anyk convert reads the same attributes through its own reader.
  const std::string ec = error_of([&] { io::convert_checkpoint(w, "safetensors", 0, d.file("o.safetensors"), true); });
  INFO(ec);
  CHECK(ec.find("bytes of parameters") != std::string::npos);
  CHECK(!std::filesystem::exists(d.file("o.safetensors")));
}
