// bf16 activation storage on CUDA (label gpu). On the GPU: (1) every activation op with bf16
// storage equals the GPU's own f32 op on the bf16-rounded inputs, output rounded, gradients bit
// for bit (tests/bf16_storage_cases.h, the property the unit suite checks on the CPU); (2) the
// same cases on CUDA against the CPU, both with bf16 storage: outputs within one bf16 ulp (the f32
// results before rounding differ in summation order), input gradients within 1e-5 norm-wise
// relative (the saved values are the same bf16 numbers on both). Without a GPU the suite exits 77
// ("no CUDA device visible"); ANYK_GPU_TEST_ON_CPU=1 runs the "CUDA" side on the CPU (a check of
// the harness only).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "bf16_storage_cases.h"
#include "kernels/cuda_api.h"
#include "runtime/devices.h"

using namespace anyk;
using namespace anyk::test::bf16s;

namespace {

bool on_cpu() { return std::getenv("ANYK_GPU_TEST_ON_CPU") != nullptr; }
Device gpu() { return on_cpu() ? Device::CPU : Device::CUDA; }

double rel_norm(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) num += (a[i] - b[i]) * (a[i] - b[i]), den += b[i] * b[i];
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

}  // namespace

TEST_CASE("gpu bf16 storage: every activation op equals the GPU's f32 op on rounded inputs") {
  check_all_cases(gpu());
}

TEST_CASE("gpu bf16 storage: CUDA against the CPU, both storing activations in bf16") {
  for (const Case& c : cases()) {
    CAPTURE(c.op);
    CAPTURE(c.variant);
    const Result cpu = run_case(c, Device::CPU, true), dev = run_case(c, gpu(), true);
    REQUIRE(cpu.out.size() == dev.out.size());
    for (size_t o = 0; o < cpu.out.size(); ++o) {
      CAPTURE(o);
      CHECK(cpu.out_bf16[o] == dev.out_bf16[o]);
      int64_t far = 0;
      for (size_t j = 0; j < cpu.out[o].size(); ++j)
        far += std::abs(cpu.out[o][j] - dev.out[o][j]) > std::ldexp(std::abs(cpu.out[o][j]), -7) + 1e-30;
      CHECK(far == 0);
    }
    for (size_t i = 0; i < cpu.grad.size(); ++i) {
      CAPTURE(i);
      CHECK(rel_norm(dev.grad[i], cpu.grad[i]) <= 1e-5);
    }
  }
}

// Skips (exit 77) without a GPU; otherwise prepares the CUDA device (f32 GEMMs) and runs the cases.
int main(int argc, char** argv) {
  if (on_cpu()) {
    std::printf("ANYK_GPU_TEST_ON_CPU: the CPU on both sides (a check of the harness)\n");
    return doctest::Context(argc, argv).run();
  }
  if (cuda::device_count() == 0) {
    std::printf("no CUDA device visible\n");
    return 77;
  }
  std::printf("device: %s\n", use_device(Device::CUDA, false).c_str());
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
