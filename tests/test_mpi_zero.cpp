// --zero 1's pieces across ranks (ctest runs this under mpiexec on 2 and 4 ranks): block_range
// splits a region exactly; the MPI communicator's reduce_scatter_sum, all_gather_blocks and
// gather_blocks match a naive loop over every rank's data (on the CPU and, staged through the
// host, on the checked device in strict mode); AdamW over each rank's block, with clip_spans,
// updates exactly what AdamW over the whole region does; and the moments a block-sized region
// allocates, measured by the checked device's allocator, are 1/size of the whole region's.
#include <doctest/doctest.h>

#include <cstring>
#include <vector>

#include "checked_device.h"
#include "optim/adamw.h"
#include "parallel/comm.h"
#include "test_util.h"

using namespace anyk;
using namespace anyk::test;

namespace {

// Rank r's contribution at element i: small integers, so every order of summation is exact.
float value(int r, int64_t i) { return float((r + 1) * 1000 + i % 997) - 400.0f; }

// A flat f32 tensor of n values on dev, filled from host.
struct Buf {
  DeviceBuffer mem;
  Tensor t;
  Buf(Device dev, const std::vector<float>& host) : mem(dev, host.size() * sizeof(float)) {
    t.shape = Shape{int64_t(host.size())};
    t.dtype = DType::F32;
    t.device = dev;
    t.data = mem.data();
    if (!host.empty()) from_host(t, host.data());
  }
  std::vector<float> host() const { return to_host_vector<float>(t); }
};

}  // namespace

TEST_CASE("block_range splits n values into size() contiguous blocks of near-equal size") {
  for (int64_t n : {0, 1, 3, 7, 1000, 1001}) {
    for (int parts : {1, 2, 3, 4, 7}) {
      int64_t next = 0, lo = n, hi = 0;
      for (int i = 0; i < parts; ++i) {
        const BlockRange b = block_range(n, parts, i);
        CHECK(b.begin == next);
        next = b.end;
        lo = std::min(lo, b.size());
        hi = std::max(hi, b.size());
      }
      CHECK(next == n);
      CHECK(hi - lo <= 1);
    }
  }
  CHECK_THROWS(block_range(10, 2, 2));
}

TEST_CASE("reduce_scatter_sum, all_gather_blocks and gather_blocks match a naive loop over the ranks") {
  register_checked_device();
  Comm world = Comm::world();
  const int P = world.size(), me = world.rank();
  for (Device dev : {Device::CPU, Device::Checked}) {
    // Sizes: not divisible by P, fewer values than ranks (empty blocks), and a larger one.
    for (int64_t n : {int64_t(1), int64_t(P - 1), int64_t(13), int64_t(4099)}) {
      CAPTURE(n);
      CAPTURE(device_name(dev));
      std::vector<float> mine(static_cast<size_t>(n)), sum(static_cast<size_t>(n), 0.0f);
      for (int64_t i = 0; i < n; ++i) {
        mine[size_t(i)] = value(me, i);
        for (int r = 0; r < P; ++r) sum[size_t(i)] += value(r, i);
      }
      const BlockRange b = block_range(n, P, me);
      {
        Buf x(dev, mine);
        Strict s(dev == Device::Checked);
        world.reduce_scatter_sum(x.t);
        const std::vector<float> got = x.host();
        bool ok = true;
        for (int64_t i = b.begin; i < b.end; ++i) ok = ok && got[size_t(i)] == sum[size_t(i)];
        CHECK(ok);
      }
      {
        // Each rank's own block set, the rest garbage: afterwards every block is its owner's.
        std::vector<float> in(static_cast<size_t>(n), -12345.0f), want(static_cast<size_t>(n));
        for (int r = 0; r < P; ++r) {
          const BlockRange br = block_range(n, P, r);
          for (int64_t i = br.begin; i < br.end; ++i) want[size_t(i)] = value(r, i);
        }
        for (int64_t i = b.begin; i < b.end; ++i) in[size_t(i)] = want[size_t(i)];
        Buf x(dev, in);
        Strict s(dev == Device::Checked);
        world.all_gather_blocks(x.t);
        CHECK(x.host() == want);
        // gather_blocks (host memory, control path): root 0 gets the same whole.
        std::vector<float> block(in.begin() + b.begin, in.begin() + b.end), full(me == 0 ? size_t(n) : 0);
        world.gather_blocks(block.data(), n, me == 0 ? full.data() : nullptr, 0);
        if (me == 0) CHECK(full == want);
      }
    }
  }
  LocalCommunicator one;
  std::vector<float> v = {1, 2, 3};
  Buf x(Device::CPU, v);
  one.reduce_scatter_sum(x.t);
  one.all_gather_blocks(x.t);
  CHECK(x.host() == v);
}

TEST_CASE("AdamW over each rank's block (clip_spans) updates exactly what AdamW over the region does") {
  register_checked_device();
  Comm world = Comm::world();
  const int P = world.size(), me = world.rank();
  // A region of three parameters with a frozen gap and mixed decay; blocks cut through them.
  const int64_t n = 1003;
  const std::vector<ParamSpan> spans = {{0, 300, true}, {300, 200, false}, {520, 483, true}};
  const auto p0 = randn(size_t(n), 11, 0.5);
  const std::vector<float> param0(p0.begin(), p0.end());
  for (Device dev : {Device::CPU, Device::Checked}) {
    CAPTURE(device_name(dev));
    Buf full_p(dev, param0), block_p(dev, param0);
    AdamW whole(AdamWConfig{}, dev), part(AdamWConfig{}, dev);
    const BlockRange b = block_range(n, P, me);
    Buf g(dev, std::vector<float>(size_t(n)));
    whole.add_region(static_cast<float*>(full_p.t.data), static_cast<const float*>(g.t.data), n, spans);
    part.add_region(static_cast<float*>(block_p.t.data) + b.begin, static_cast<const float*>(g.t.data) + b.begin,
                    b.size(), clip_spans(spans, b.begin, b.end));
    for (int step = 0; step < 3; ++step) {
      const auto gd = randn(size_t(n), 100 + uint64_t(step), 1.0);
      const std::vector<float> gh(gd.begin(), gd.end());
      from_host(g.t, gh.data());
      Strict s(dev == Device::Checked);
      whole.step(1e-2);
      part.step(1e-2);
      world.all_gather_blocks(block_p.t);  // every rank's updated block
    }
    const std::vector<float> a = full_p.host(), c = block_p.host();
    CHECK(std::memcmp(a.data(), c.data(), a.size() * sizeof(float)) == 0);
    // The frozen gap [500, 520) is untouched.
    CHECK(std::memcmp(a.data() + 500, param0.data() + 500, 20 * sizeof(float)) == 0);
  }
}

TEST_CASE("a block region's moments, measured by the checked device's allocator, are 1/size of the whole's") {
  register_checked_device();
  Comm world = Comm::world();
  const int P = world.size();
  const int64_t n = int64_t(P) * 4096;  // blocks of whole 64-byte lines: no rounding in the pool
  Buf p(Device::Checked, std::vector<float>(size_t(n))), g(Device::Checked, std::vector<float>(size_t(n)));
  auto measure = [&](int64_t begin, int64_t count) {
    const size_t before = checked_pool().in_use();
    AdamW opt(AdamWConfig{}, Device::Checked);
    opt.add_region(static_cast<float*>(p.t.data) + begin, static_cast<const float*>(g.t.data) + begin, count,
                   {{0, count, true}});
    const size_t used = checked_pool().in_use() - before;  // the pool's top: both moment buffers
    CHECK(int64_t(used) == opt.moment_bytes(0));
    return used;
  };
  const size_t whole = measure(0, n);
  const BlockRange b = block_range(n, P, world.rank());
  const size_t block = measure(b.begin, b.size());
  CHECK(whole == size_t(8 * n));
  CHECK(block * size_t(P) == whole);
}
