// The device seam across ranks (ctest runs this under mpiexec on 2 and 4 ranks): the MPI
// communicator stages device tensors through host buffers, so the AllToAllDispatcher (permute
// and unpermute, forward and backward) and a full LM training step with gradient sync on the
// checked pseudo-device (tests/checked_device.h) match the same runs on the CPU bit for bit.
// Checkpoint save and resume on it write the CPU's datasets and CRCs and resume to the CPU's next step.
// Strict mode (the pool PROT_NONE outside kernels and copy ops) wherever the code allows it.
#include <doctest/doctest.h>

#include <cstring>
#include <filesystem>
#include <vector>

#include "checked_device.h"
#include "io/checkpoint.h"
#include "io/h5.h"
#include "model/lm.h"
#include "optim/adamw.h"
#include "parallel/dispatcher.h"
#include "parallel/grad_sync.h"
#include "parallel/groups.h"
#include "test_util.h"

using namespace anyk;
using namespace anyk::test;

namespace {

template <class T> bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

std::vector<float> randf(size_t n, uint64_t seed) {
  auto d = randn(n, seed, 0.5);
  return std::vector<float>(d.begin(), d.end());
}

Var leaf_on(Tape& tape, Shape s, const std::vector<float>& v, bool grad = true) {
  Var x = tape.make(s, DType::F32, grad);
  from_host(x.val, v.data());
  return x;
}

// Dispatcher round trip on `dev`: rows after permute, out after unpermute, and the gradients of
// x and the weights from a seeded d(out). Experts 3 and 6 receive no rows on any rank.
struct DispRun {
  std::vector<float> rows, out, gx, gw;
  std::vector<int32_t> offsets;
};
// node_size > 0: the hierarchical all-to-all with nodes of that many consecutive ranks.
DispRun dispatch_run(const Comm& ep, Device dev, int K, int node_size) {
  const int E = 8, C = 5, N = 9, me = ep.rank();
  std::vector<int32_t> ids(N * K);
  for (int n = 0; n < N; ++n)
    for (int k = 0; k < K; ++k) {
      int e = (n * 3 + k * 5 + me) % E;
      if (e == 3 || e == 6) e = (e + 1) % E;
      for (int j = 0; j < k; ++j)
        if (ids[n * K + j] == e) e = -1;
      ids[n * K + k] = (k == K - 1 && n % 4 == 1) ? -1 : e;  // some unused slots
    }
  NodeGroups ng;
  if (node_size) ng = make_node_groups(ep, node_size);
  AllToAllDispatcher d = node_size ? AllToAllDispatcher(ep, ng.node, ng.cross, E) : AllToAllDispatcher(ep, E);
  Arena arena(1 << 20, dev);
  Tape tape(arena);
  Var x = leaf_on(tape, {N, C}, randf(N * C, 10 + me));
  Var w = leaf_on(tape, {N, K}, randf(N * K, 20 + me));
  DispatchPlan plan;
  Var rows = d.permute(tape, x, Tensor{ids.data(), {N, K}, DType::I32}, plan);
  Var out = d.unpermute(tape, rows, w, plan);
  from_host(out.grad, randf(N * C, 30 + me).data());
  tape.backward_seeded();
  DispRun r{to_host_vector<float>(rows.val), to_host_vector<float>(out.val), to_host_vector<float>(x.grad),
            to_host_vector<float>(w.grad), {}};
  const int32_t* off = plan.offsets.ptr<int32_t>();  // host memory on every device
  r.offsets.assign(off, off + plan.offsets.numel());
  return r;
}

ModelConfig small_lm() {
  ModelConfig c;
  c.vocab = 17;
  c.dim = 16;
  c.layers = 2;
  c.heads = 2;
  c.experts = 4;
  c.expert_hidden = 12;
  c.seq_len = 6;
  c.init_std = 0.3;
  c.router.lb_coef = 0.02;
  c.router.z_coef = 0.001;
  return c;
}

// One 2-rank (or P-rank) training step: forward, backward, grad sync, clipped norm, AdamW.
struct StepRun {
  double ce = 0, norm = 0;
  std::vector<float> grads, params, m, v;
};
StepRun lm_step(const ProcessGroups& g, Device dev, std::vector<int> ks) {
  const int B = 2, T = 6, me = g.world.rank(), P = g.world.size();
  std::vector<int> in(B * T), tg(B * T);
  for (int i = 0; i < B * T; ++i) in[i] = (i * 7 + 3 + me) % 17, tg[i] = (i * 5 + 1 + 2 * me) % 17;
  AllToAllDispatcher disp(g.ep, 4);
  LM lm(small_lm(), disp, dev);
  lm.init(11);
  ParamStore& ps = lm.params();
  AdamW opt(AdamWConfig{1e-2, 0.9, 0.95, 1e-8, 0.1}, dev);
  int region[kNumRegions];
  for (int r = 0; r < kNumRegions; ++r) {
    int64_t n = ps.region_numel(Region(r));
    region[r] = opt.add_region(ps.region_value(Region(r)).dev_ptr<float>(),
                               ps.region_gradient(Region(r)).dev_ptr<float>(), n, {{0, n, true}});
  }
  StepRun out;
  Strict strict(dev == Device::Checked);  // the whole step: forward, backward, sync, norm, AdamW
  Arena arena(1 << 20, dev);
  {
    Tape tape(arena);
    ForwardStats st;
    Var loss = lm.forward(tape, in.data(), tg.data(), B, T, ks, &st, double(B) * T * P);
    tape.backward(loss);
    out.ce = st.ce;
  }
  sync_gradients(ps, g);
  std::vector<std::pair<float*, int64_t>> gr;
  for (int r = 0; r < kNumRegions; ++r)
    gr.push_back({ps.region_gradient(Region(r)).dev_ptr<float>(), ps.region_numel(Region(r))});
  out.norm = clip_grad_norm(gr, 0.05, dev);  // local norm; the clip path runs
  opt.step(3e-3);
  for (int r = 0; r < kNumRegions; ++r) {
    auto add = [](std::vector<float>& to, const std::vector<float>& v) { to.insert(to.end(), v.begin(), v.end()); };
    add(out.grads, to_host_vector<float>(ps.region_gradient(Region(r))));
    add(out.params, to_host_vector<float>(ps.region_value(Region(r))));
    add(out.m, to_host_vector<float>(opt.m_tensor(region[r])));
    add(out.v, to_host_vector<float>(opt.v_tensor(region[r])));
  }
  return out;
}

}  // namespace

TEST_CASE("MPI communicator: all-reduce and all-to-all-v of checked tensors equal the host ones (strict)") {
  register_checked_device();
  Comm world = Comm::world();
  const int P = world.size(), me = world.rank(), C = 3;
  std::vector<int32_t> sc(P), rc(P);
  for (int i = 0; i < P; ++i) sc[i] = (me + i) % 3, rc[i] = (i + me) % 3;  // rank i sends (i+j)%3 to j
  int S = 0, R = 0;
  for (int i = 0; i < P; ++i) S += sc[i], R += rc[i];
  auto xs = randf(size_t(S) * C, 40 + me), red = randf(1000, 50 + me);
  auto run = [&](Device dev) {
    DeviceBuffer a(dev, xs.size() * 4 + 4), b(dev, size_t(R) * C * 4 + 4), c(dev, red.size() * 4);
    Tensor send{a.data(), {S, C}, DType::F32, dev}, recv{b.data(), {R, C}, DType::F32, dev};
    Tensor sum{c.data(), {int64_t(red.size())}, DType::F32, dev};
    from_host(send, xs.data());
    from_host(sum, red.data());
    Strict s(dev == Device::Checked);
    world.all_to_all_v(send, Tensor{sc.data(), {P}, DType::I32}, recv, Tensor{rc.data(), {P}, DType::I32});
    world.all_reduce_sum(sum);
    auto v = to_host_vector<float>(recv), r = to_host_vector<float>(sum);
    v.insert(v.end(), r.begin(), r.end());
    return v;
  };
  auto cpu = run(Device::CPU);
  CHECK(same_bits(cpu, run(Device::Checked)));
  CHECK(int64_t(cpu.size()) == int64_t(R) * C + 1000);
}

TEST_CASE("AllToAllDispatcher (flat and hier) on the checked device matches the CPU bit for bit, experts empty (strict)") {
  register_checked_device();
  Comm world = Comm::world();
  const int El = 8 / world.size(), first = world.rank() * El;
  for (int node_size : {0, 1, 2}) {  // 0: flat; 1, 2: hier with nodes of that many ranks
    if (node_size && world.size() % node_size) continue;
    CAPTURE(node_size);
    for (int K : {1, 2, 3}) {
      CAPTURE(K);
      DispRun cpu = dispatch_run(world, Device::CPU, K, node_size);
      DispRun chk;
      {
        Strict s(true);
        chk = dispatch_run(world, Device::Checked, K, node_size);
      }
      CHECK(!cpu.rows.empty());
      CHECK(same_bits(cpu.rows, chk.rows));
      CHECK(same_bits(cpu.out, chk.out));
      CHECK(same_bits(cpu.gx, chk.gx));
      CHECK(same_bits(cpu.gw, chk.gw));
      CHECK(cpu.offsets == chk.offsets);
      for (int e : {3, 6})  // experts 3 and 6 receive nothing: equal offsets around them
        if (e >= first && e < first + El) CHECK(cpu.offsets[e - first] == cpu.offsets[e - first + 1]);
    }
  }
}

TEST_CASE("a full multi-rank LM training step on the checked device matches the CPU bit for bit") {
  register_checked_device();
  ProcessGroups g = make_groups(Comm::world(), Comm::world().size() % 4 == 0 ? 4 : 2, 4);
  // Strict for the whole step (forward and backward included): the router and its losses run
  // through the kernel table and the dispatch plan lives in host memory.
  for (std::vector<int> ks : {std::vector<int>{1, 2}, std::vector<int>{4, 3}}) {
    CAPTURE(ks[0]);
    StepRun cpu = lm_step(g, Device::CPU, ks);
    StepRun chk = lm_step(g, Device::Checked, ks);
    CHECK(cpu.ce == chk.ce);
    CHECK(cpu.norm == chk.norm);
    CHECK(cpu.norm > 0.05);
    CHECK(same_bits(cpu.grads, chk.grads));
    CHECK(same_bits(cpu.params, chk.params));
    CHECK(same_bits(cpu.m, chk.m));
    CHECK(same_bits(cpu.v, chk.v));
  }
}

namespace {

// One process, every expert local: an LM and its AdamW on `dev`, for the checkpoint round trip.
struct Single {
  Device dev;
  LocalDispatcher disp{4};
  LM lm;
  AdamW opt;
  int region[kNumRegions];
  Single(Device d, uint64_t seed) : dev(d), lm(small_lm(), disp, d), opt(AdamWConfig{1e-2, 0.9, 0.95, 1e-8, 0.1}, d) {
    lm.init(seed);
    ParamStore& ps = lm.params();
    for (int r = 0; r < kNumRegions; ++r) {
      int64_t n = ps.region_numel(Region(r));
      region[r] = opt.add_region(ps.region_value(Region(r)).dev_ptr<float>(),
                                 ps.region_gradient(Region(r)).dev_ptr<float>(), n, {{0, n, true}});
    }
  }
  void step(int salt) {
    const int B = 2, T = 6;
    std::vector<int> in(B * T), tg(B * T);
    for (int i = 0; i < B * T; ++i) in[i] = (i * 7 + salt) % 17, tg[i] = (i * 5 + 2 * salt) % 17;
    Arena arena(1 << 20, dev);
    Tape tape(arena);
    const int ks[2] = {2, 1};
    tape.backward(lm.forward(tape, in.data(), tg.data(), B, T, ks));
    opt.step(3e-3);
  }
  std::vector<float> state() {
    std::vector<float> all;
    auto add = [&](const Tensor& t) {
      auto v = to_host_vector<float>(t);
      all.insert(all.end(), v.begin(), v.end());
    };
    for (int r = 0; r < kNumRegions; ++r) {
      add(lm.params().region_value(Region(r)));
      add(opt.m_tensor(region[r]));
      add(opt.v_tensor(region[r]));
    }
    return all;
  }
  io::CheckpointMeta meta() const {
    io::CheckpointMeta m;
    m.step = opt.step_count();
    m.adam_step = opt.step_count();
    m.model = small_lm();
    return m;
  }
  void save(const std::filesystem::path& dir) {
    std::filesystem::create_directories(dir);
    io::write_meta_file((dir / "meta.h5").string(), meta(),
                        io::dense_refs(lm.params(), &opt, region[int(Region::Dense)]));
    io::write_experts_file((dir / "experts_0.h5").string(), meta(), 0,
                           io::expert_refs(lm.params(), &opt, region[int(Region::Expert)], 0));
  }
  void load(const std::filesystem::path& dir) {
    io::CheckpointMeta m = io::read_checkpoint_meta(dir.string());
    io::read_checkpoint_tensors(dir.string(), m, io::dense_refs(lm.params(), &opt, region[int(Region::Dense)]),
                                io::expert_refs(lm.params(), &opt, region[int(Region::Expert)], 0));
    opt.set_step_count(m.adam_step);
  }
};

}  // namespace

TEST_CASE("checkpoint save and resume on the checked device: the CPU's files and the CPU's next step (strict I/O)") {
  register_checked_device();
  TempDir tmp("checked_ckpt_" + std::to_string(Comm::world().rank()));
  Single cpu(Device::CPU, 11), chk(Device::Checked, 11);
  cpu.step(1);
  chk.step(1);
  REQUIRE(same_bits(cpu.state(), chk.state()));
  cpu.save(tmp / "cpu");
  {
    Strict s(true);
    chk.save(tmp / "chk");
  }
  // The same datasets: every value bit for bit (read_f32 checks each CRC) and the same crc32
  // attributes. (Not the whole files: HDF5 stores object times, so two saves differ there.)
  std::vector<std::pair<std::string, std::string>> sets;  // (file, dataset)
  const char* groups[] = {"params/", "adam_m/", "adam_v/"};
  for (const io::TensorRef& t : io::dense_refs(cpu.lm.params(), &cpu.opt, cpu.region[int(Region::Dense)]))
    for (const char* g : groups) sets.push_back({"meta.h5", g + t.name});
  for (const io::ExpertRef& r : io::expert_refs(cpu.lm.params(), &cpu.opt, cpu.region[int(Region::Expert)], 0))
    for (const char* g : groups)
      sets.push_back({"experts_0.h5", "experts/" + std::to_string(r.expert) + "/" + g + r.t.name});
  CHECK(sets.size() > 30);
  for (const auto& set : sets) {
    const std::string &file = set.first, &name = set.second;  // not a structured binding: CAPTURE
    CAPTURE(name);                                             // is a lambda (clang 14 refuses)
    std::vector<float> vals[2];
    uint32_t crcs[2];
    for (int i = 0; i < 2; ++i) {
      const std::string path = (tmp / (i ? "chk" : "cpu") / file).string();
      io::h5::Handle f = io::h5::open_file(path);
      const auto shape = io::h5::dataset_shape(f.id, path, name);
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      vals[i].resize(size_t(n));
      io::h5::read_f32(f.id, path, name, vals[i].data(), shape);
      io::h5::Handle a(H5Aopen_by_name(f.id, name.c_str(), "crc32", H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
      REQUIRE(a.id >= 0);
      REQUIRE(H5Aread(a.id, H5T_NATIVE_UINT32, &crcs[i]) >= 0);
    }
    CHECK(same_bits(vals[0], vals[1]));
    CHECK(crcs[0] == crcs[1]);
    CHECK(crcs[0] == io::h5::crc32(vals[0].data(), vals[0].size() * sizeof(float)));
  }
  // Resume into fresh models (another init), one more step each: bit for bit equal.
  Single cpu2(Device::CPU, 99), chk2(Device::Checked, 99);
  cpu2.load(tmp / "cpu");
  {
    Strict s(true);
    chk2.load(tmp / "chk");
  }
  CHECK(same_bits(cpu2.state(), cpu.state()));
  CHECK(same_bits(chk2.state(), cpu.state()));
  cpu2.step(2);
  chk2.step(2);
  CHECK(same_bits(cpu2.state(), chk2.state()));
  CHECK_FALSE(same_bits(cpu2.state(), cpu.state()));  // the step did change the state
}
