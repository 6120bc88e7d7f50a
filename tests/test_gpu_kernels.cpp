// Every entry of the CUDA kernel tables against the CPU tables (the reference), on random inputs
// with edge shapes (an expert with zero rows, ids with -1 slots, sizes not a multiple of a block,
// odd C), forward and backward. f32: norm-wise relative error <= 1e-5; f64 <= 1e-12; the bf16
// GEMM path (Ctx.gemm_bf16) <= 2e-2; integer outputs (ids, counts, kcount, first_bad_id, bf16
// bits) and EMoE draws equal exactly (NaN bit patterns are not compared). Without a GPU the suite
// exits 77 ("no CUDA device visible"), which ctest reports as skipped (label gpu).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "runtime/rng.h"
#include "kernels/cpu/table.h"
#include "kernels/cuda_api.h"
#include "kernels/kernels.h"
#include "runtime/tensor.h"

using namespace anyk;

namespace {

enum class Cmp { Near, Exact };

// One compared output: its values after the call (as double), and what it held before when the
// kernel adds into it (the delta is compared then).
struct Result {
  Cmp cmp;
  bool delta;
  std::vector<double> init, value;
};

struct Missing {
  std::string name;
};

// ANYK_GPU_TEST_ON_CPU=1 runs the "CUDA" side on the CPU table and host memory: a check of this
// harness itself (every case runs, coverage is complete) on a machine without a GPU.
bool on_cpu() {
  static const bool v = std::getenv("ANYK_GPU_TEST_ON_CPU") != nullptr;
  return v;
}

std::set<std::string>& covered() {  // f32 entries exercised (the last case checks all are)
  static std::set<std::string> s;
  return s;
}

template <class U> std::vector<double> widen(const std::vector<U>& v) { return {v.begin(), v.end()}; }

// Runs one case's kernel calls on one device: inputs are copied to that device's memory, outputs
// are tracked and read back for comparison. On the CPU, "device memory" is host memory.
template <class T> class Harness {
 public:
  using Scalar = T;
  Harness(bool gpu, bool bf16)
      : gpu_(gpu && !on_cpu()), k(kernels<T>(dev())), ctx(exec_ctx(dev())) {
    ctx.gemm_bf16 = bf16;
  }
  ~Harness() {
    for (auto& [p, n] : dev_) cuda::mem_free(p, n);
  }
  Harness(const Harness&) = delete;
  Harness& operator=(const Harness&) = delete;

  bool gpu_;
  Device dev() const { return gpu_ ? Device::CUDA : Device::CPU; }
  const Kernels<T>& k;
  Ctx ctx;

  // The entry, after checking that this table has it.
  template <class F> F need(F f, const char* name) {
    if (!f) throw Missing{name};
    if (std::is_same_v<T, float>) covered().insert(name);
    return f;
  }
  template <class U> U* in(const std::vector<U>& v) { return place(v); }
  // Scratch the kernel may use (not compared).
  template <class U> U* scratch(size_t n) { return place(std::vector<U>(n, U(0))); }
  // An output the kernel overwrites: starts as a sentinel, compared as is.
  template <class U> U* out(size_t n, Cmp c = Cmp::Near) { return track(std::vector<U>(n, U(77)), c, false); }
  // An output the kernel adds into: starts as init, compared as value - init.
  template <class U> U* acc(const std::vector<U>& init, Cmp c = Cmp::Near) { return track(init, c, true); }
  // A value the kernel returned to the host.
  void value(double v) { host_results_.push_back({Cmp::Exact, false, {0.0}, {v}}); }

  std::vector<Result> results() {
    if (gpu_) cuda::synchronize();
    std::vector<Result> r;
    for (auto& t : tracked_) r.push_back({t.cmp, t.delta, t.init, t.read()});
    r.insert(r.end(), host_results_.begin(), host_results_.end());
    return r;
  }

 private:
  struct Tracked {
    Cmp cmp;
    bool delta;
    std::vector<double> init;
    std::function<std::vector<double>()> read;
  };
  template <class U> U* place(const std::vector<U>& v) {
    const size_t bytes = v.size() * sizeof(U);
    if (!gpu_) {
      auto& b = host_.emplace_back(std::max<size_t>(bytes, 16) / sizeof(double) + 1);
      if (bytes) std::memcpy(b.data(), v.data(), bytes);
      return reinterpret_cast<U*>(b.data());
    }
    const size_t alloc = std::max<size_t>(bytes, 16);
    void* p = cuda::mem_alloc(alloc);
    dev_.push_back({p, alloc});
    if (bytes) cuda::mem_from_host(p, v.data(), bytes);
    return static_cast<U*>(p);
  }
  template <class U> U* track(const std::vector<U>& init, Cmp c, bool delta) {
    U* p = place(init);
    const size_t n = init.size();
    const bool gpu = gpu_;
    tracked_.push_back({c, delta, widen(init), [p, n, gpu] {
                          std::vector<U> h(n);
                          if (n && gpu) cuda::mem_to_host(h.data(), p, n * sizeof(U));
                          if (n && !gpu) std::memcpy(h.data(), p, n * sizeof(U));
                          return widen(h);
                        }});
    return p;
  }
  std::deque<std::vector<double>> host_;
  std::vector<std::pair<void*, size_t>> dev_;
  std::vector<Tracked> tracked_;
  std::vector<Result> host_results_;
};

#define KN(name) h.need(h.k.name, #name)

// ---- inputs ----
template <class T> std::vector<T> rnd(size_t n, uint64_t seed, double scale = 1.0) {
  CounterRng r(seed, 91);
  std::vector<T> v(n);
  for (auto& x : v) x = T(scale * r.normal());
  return v;
}
std::vector<int32_t> ints(size_t n, int lo, int hi, uint64_t seed) {  // uniform in [lo, hi)
  CounterRng r(seed, 92);
  std::vector<int32_t> v(n);
  for (auto& x : v) x = lo + int32_t(r.uniform() * (hi - lo)) % (hi - lo);
  return v;
}
// Rows of softmax probabilities (N,E) of random logits.
template <class T> std::vector<T> softmax_rows(int N, int E, uint64_t seed) {
  std::vector<T> z = rnd<T>(size_t(N) * E, seed, 2.0), p(z.size());
  for (int n = 0; n < N; ++n) {
    double mx = -1e300, s = 0;
    for (int e = 0; e < E; ++e) mx = std::max(mx, double(z[n * E + e]));
    for (int e = 0; e < E; ++e) s += std::exp(double(z[n * E + e]) - mx);
    for (int e = 0; e < E; ++e) p[n * E + e] = T(std::exp(double(z[n * E + e]) - mx) / s);
  }
  return p;
}
template <class T> std::vector<T> abs_of(std::vector<T> v) {
  for (auto& x : v) x = std::abs(x);
  return v;
}

// ---- comparison ----
double norm_rel_err(const Result& g, const Result& c) {
  double num = 0, den = 0;
  for (size_t i = 0; i < c.value.size(); ++i) {
    const double b = c.value[i] - (c.delta ? c.init[i] : 0.0);
    const double a = g.value[i] - (g.delta ? g.init[i] : 0.0);
    num += (a - b) * (a - b);
    den += b * b;
  }
  if (num == 0) return 0;
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
}

void compare(const std::string& name, const std::vector<Result>& cpu, const std::vector<Result>& gpu, double tol) {
  REQUIRE_MESSAGE(cpu.size() == gpu.size(), name);
  for (size_t i = 0; i < cpu.size(); ++i) {
    INFO(name << ": output " << i << " (" << cpu[i].value.size() << " values)");
    if (cpu[i].cmp == Cmp::Exact) {
      size_t bad = 0;
      while (bad < cpu[i].value.size() && cpu[i].value[bad] == gpu[i].value[bad]) ++bad;
      CHECK_MESSAGE(bad == cpu[i].value.size(), "first difference at " << bad << ": cpu "
                                                   << cpu[i].value[bad] << " cuda " << gpu[i].value[bad]);
    } else {
      const double err = norm_rel_err(gpu[i], cpu[i]);
      CHECK_MESSAGE(err <= tol, "relative error " << err << " > " << tol);
    }
  }
}

// One entry of the case table: the same generic body runs for f32 and f64 on both devices.
struct Case {
  std::string name;
  bool bf16;  // run with Ctx.gemm_bf16 on the CUDA side (f32 only, tolerance 2e-2)
  std::function<void(Harness<float>&)> f32;
  std::function<void(Harness<double>&)> f64;
  template <class L> Case(std::string n, L body, bool b = false) : name(std::move(n)), bf16(b), f32(body), f64(body) {}
};

template <class T> void run_case(const Case& c, const std::function<void(Harness<T>&)>& body) {
  const bool bf16 = c.bf16 && std::is_same_v<T, float>;
  const double tol = bf16 ? 2e-2 : std::is_same_v<T, float> ? 1e-5 : 1e-12;
  const std::string name = c.name + (std::is_same_v<T, float> ? " f32" : " f64") + (bf16 ? " bf16" : "");
  std::vector<Result> rc, rg;
  try {
    Harness<T> cpu(false, false);
    body(cpu);
    rc = cpu.results();
  } catch (const Missing& m) {
    return;  // the CPU table has no such entry for this type: nothing to compare with
  }
  try {
    Harness<T> gpu(true, bf16);
    body(gpu);
    rg = gpu.results();
  } catch (const Missing& m) {
    if (std::is_same_v<T, float>) {
      FAIL_CHECK(name << ": the CUDA f32 table has no " << m.name);
    } else {
      MESSAGE(name << ": the CUDA f64 table has no " << m.name << " (not compared)");
    }
    return;
  }
  compare(name, rc, rg, tol);
}

std::vector<Case> cases();

}  // namespace

TEST_CASE("gpu kernels: every f32 entry, CUDA against CPU") {
  const std::vector<Case> all = cases();
  for (const Case& c : all) run_case<float>(c, c.f32);
  const size_t entries = sizeof(Kernels<float>) / sizeof(void (*)());
  std::string names;
  for (const auto& n : covered()) names += n + " ";
  INFO("covered: " << names);
  CHECK_MESSAGE(covered().size() == entries, "the cases exercise " << covered().size() << " of the " << entries
                                                                   << " entries of Kernels<float>");
}

TEST_CASE("gpu kernels: the f64 entries, CUDA against CPU") {
  bool has_f64 = true;
  try {
    (void)kernels<double>(on_cpu() ? Device::CPU : Device::CUDA);
  } catch (const std::exception& e) {
    has_f64 = false;
    MESSAGE("no CUDA f64 table registered: " << std::string(e.what()));
  }
  if (!has_f64) return;
  for (const Case& c : cases())
    if (!c.bf16) run_case<double>(c, c.f64);
}

namespace {

template <class H> using S = typename std::remove_reference_t<H>::Scalar;

// Sets the expert GEMM strategy for one case body and restores the previous one after.
struct ExpertGemm {
  std::string before = cuda::expert_gemm();
  explicit ExpertGemm(const char* s) { cuda::set_expert_gemm(s); }
  ~ExpertGemm() { cuda::set_expert_gemm(before); }
  ExpertGemm(const ExpertGemm&) = delete;
  ExpertGemm& operator=(const ExpertGemm&) = delete;
};

void elementwise_cases(std::vector<Case>& v) {
  const size_t n = 100003;  // not a multiple of any block size
  v.emplace_back("fill", [n](auto& h) { KN(fill)(h.ctx, h.template out<S<decltype(h)>>(n), S<decltype(h)>(1.5), n); });
  v.emplace_back("copy", [n](auto& h) {
    using T = S<decltype(h)>;
    KN(copy)(h.ctx, h.template out<T>(n), h.in(rnd<T>(n, 1)), n);
  });
  v.emplace_back("accumulate", [n](auto& h) {
    using T = S<decltype(h)>;
    KN(accumulate)(h.ctx, h.acc(rnd<T>(n, 2)), h.in(rnd<T>(n, 3)), n);
  });
  v.emplace_back("fill_div", [n](auto& h) {
    using T = S<decltype(h)>;
    KN(fill_div)(h.ctx, h.template out<T>(n), h.in(std::vector<T>{T(5.25)}), 3.0, n);
  });
  v.emplace_back("sum_div", [n](auto& h) {
    using T = S<decltype(h)>;
    KN(sum_div)(h.ctx, h.template out<T>(1), h.in(rnd<T>(n, 4)), n, 7.0);
  });
  v.emplace_back("sumsq_accumulate", [](auto& h) {
    using T = S<decltype(h)>;
    const int64_t m = 3 * 65536 + 17;  // several fixed chunks and a ragged one
    KN(sumsq_accumulate)(h.ctx, h.acc(std::vector<double>{0.25}), h.in(rnd<T>(m, 5)), m);
  });
  v.emplace_back("first_bad_id", [](auto& h) {
    const int V = 300, m = 5003;
    std::vector<int32_t> ids = ints(m, 0, V, 6);
    h.value(double(KN(first_bad_id)(h.ctx, h.in(ids), m, V)));  // -1: all valid
    ids[4321] = V;
    ids[4500] = -3;
    h.value(double(KN(first_bad_id)(h.ctx, h.in(ids), m, V)));
    ids[7] = -1;
    h.value(double(KN(first_bad_id)(h.ctx, h.in(ids), m, V)));
  });
  v.emplace_back("add", [n](auto& h) {
    using T = S<decltype(h)>;
    KN(add_forward)(h.ctx, h.template out<T>(n), h.in(rnd<T>(n, 7)), h.in(rnd<T>(n, 8)), n);
    KN(add_backward)(h.ctx, h.acc(rnd<T>(n, 9)), h.acc(rnd<T>(n, 10)), h.in(rnd<T>(n, 11)), n);
  });
  v.emplace_back("scale", [n](auto& h) {
    using T = S<decltype(h)>;
    KN(scale_forward)(h.ctx, h.template out<T>(n), h.in(rnd<T>(n, 12)), T(-0.75), n);
    T* a = h.acc(rnd<T>(n, 13));
    KN(scale_forward)(h.ctx, a, a, T(1.25), n);  // in place
    KN(scale_backward)(h.ctx, h.acc(rnd<T>(n, 14)), h.in(rnd<T>(n, 15)), T(0.5), n);
  });
  v.emplace_back("adamw_update", [n](auto& h) {
    using T = S<decltype(h)>;
    KN(adamw_update)(h.ctx, h.acc(rnd<T>(n, 16)), h.acc(rnd<T>(n, 17, 0.1)), h.acc(abs_of(rnd<T>(n, 18, 0.01))),
                     h.in(rnd<T>(n, 19)), n, 0.9, 0.95, 1e-8, 1 - 3e-4 * 0.1, 3e-4 / (1 - 0.9 * 0.9),
                     1 / std::sqrt(1 - 0.95 * 0.95));
  });
  v.emplace_back("convert_from_f64", [n](auto& h) {
    KN(convert_from_f64)(h.ctx, h.template out<S<decltype(h)>>(n), h.in(rnd<double>(n, 20)), n);
  });
  v.emplace_back("bf16 conversions", [](auto& h) {
    using T = S<decltype(h)>;
    std::vector<T> x = rnd<T>(4099, 21, 3.0);
    x[0] = T(1e30), x[1] = T(INFINITY), x[2] = T(-INFINITY), x[3] = T(0), x[4] = T(-0.0);
    x[5] = T(1.00390625);   // exactly half-way between two bf16 values: rounds to even (1.0)
    x[6] = T(1.01171875);   // half-way, rounds up to even
    x[7] = T(3.4e38);       // rounds to infinity
    x[8] = T(1e-40);        // subnormal
    KN(to_bf16)(h.ctx, h.template out<uint16_t>(x.size(), Cmp::Exact), h.in(x), int64_t(x.size()));
    std::vector<uint16_t> bits(4099);
    for (size_t i = 0; i < bits.size(); ++i) bits[i] = uint16_t((i * 40503u) & 0xffff);
    for (auto& b : bits)
      if ((b & 0x7f80) == 0x7f80) b &= 0xbfff;  // no NaN or inf patterns: compared as numbers
    KN(from_bf16)(h.ctx, h.template out<T>(bits.size(), Cmp::Exact), h.in(bits), int64_t(bits.size()));
  });
}

void dense_cases(std::vector<Case>& v) {
  v.emplace_back("embedding", [](auto& h) {
    using T = S<decltype(h)>;
    const int N = 111, C = 33, V = 50;
    std::vector<int32_t> ids = ints(N, 0, V, 30);  // repeats: the backward sums rows
    KN(embedding_forward)(h.ctx, h.template out<T>(size_t(N) * C), h.in(ids), h.in(rnd<T>(size_t(V) * C, 31)), N, C);
    KN(embedding_backward)(h.ctx, h.acc(rnd<T>(size_t(V) * C, 32)), h.in(rnd<T>(size_t(N) * C, 33)), h.in(ids), N, C);
  });
  for (bool bf16 : {false, true}) {
    v.emplace_back("linear", [](auto& h) {
      using T = S<decltype(h)>;
      const int N = 67, I = 33, O = 129;
      const T* x = h.in(rnd<T>(size_t(N) * I, 34));
      const T* w = h.in(rnd<T>(size_t(O) * I, 35, 0.2));
      KN(linear_forward)(h.ctx, h.template out<T>(size_t(N) * O), x, w, N, I, O);
      const T* dout = h.in(rnd<T>(size_t(N) * O, 36));
      KN(linear_backward)(h.ctx, h.acc(rnd<T>(size_t(N) * I, 37)), h.acc(rnd<T>(size_t(O) * I, 38)), dout, x, w, N, I, O);
      KN(linear_backward)(h.ctx, nullptr, h.acc(rnd<T>(size_t(O) * I, 39)), dout, x, w, N, I, O);  // dw only
    }, bf16);
    v.emplace_back("linear_rows_forward", [](auto& h) {
      using T = S<decltype(h)>;
      const int M = 3, I = 65, O = 257;
      KN(linear_rows_forward)(h.ctx, h.template out<T>(size_t(M) * O), h.in(rnd<T>(size_t(M) * I, 40)),
                              h.in(rnd<T>(size_t(O) * I, 41, 0.2)), M, I, O);
    }, bf16);
  }
  v.emplace_back("rmsnorm", [](auto& h) {
    using T = S<decltype(h)>;
    const int N = 67, C = 65;
    const double eps = 1e-5;
    std::vector<T> x = rnd<T>(size_t(N) * C, 42), rstd(N);
    for (int i = 0; i < N; ++i) {
      double s = 0;
      for (int c = 0; c < C; ++c) s += double(x[i * C + c]) * x[i * C + c];
      rstd[i] = T(1 / std::sqrt(s / C + eps));
    }
    const T* xd = h.in(x);
    const T* w = h.in(rnd<T>(C, 43, 0.5));
    KN(rmsnorm_forward)(h.ctx, h.template out<T>(x.size()), h.template out<T>(N), xd, w, N, C, eps);
    KN(rmsnorm_backward)(h.ctx, h.acc(rnd<T>(x.size(), 44)), h.acc(rnd<T>(C, 45)), h.in(rnd<T>(x.size(), 46)), xd, w,
                         h.in(rstd), N, C);
  });
  v.emplace_back("rope", [](auto& h) {
    using T = S<decltype(h)>;
    const int B = 2, Tn = 19, NHx = 5, D = 16, nrot = 3;
    const double theta = 10000;
    KN(rope_tables)(h.ctx, h.template out<T>(size_t(Tn) * D / 2), h.template out<T>(size_t(Tn) * D / 2), Tn, D, theta);
    std::vector<T> cs(size_t(Tn) * D / 2), sn(cs.size());
    for (int t = 0; t < Tn; ++t)
      for (int i = 0; i < D / 2; ++i) {
        const double a = t * std::pow(theta, -2.0 * i / D);
        cs[t * D / 2 + i] = T(std::cos(a)), sn[t * D / 2 + i] = T(std::sin(a));
      }
    const size_t n = size_t(B) * Tn * NHx * D;
    const T *c = h.in(cs), *s = h.in(sn);
    KN(rope_forward)(h.ctx, h.template out<T>(n), h.in(rnd<T>(n, 47)), c, s, B, Tn, NHx, D, nrot);
    KN(rope_backward)(h.ctx, h.acc(rnd<T>(n, 48)), h.in(rnd<T>(n, 49)), c, s, B, Tn, NHx, D, nrot);
  });
  v.emplace_back("swiglu", [](auto& h) {
    using T = S<decltype(h)>;
    const int M = 67, H = 33;
    const T* x = h.in(rnd<T>(size_t(M) * 2 * H, 50, 2.0));
    KN(swiglu_forward)(h.ctx, h.template out<T>(size_t(M) * H), x, M, H);
    KN(swiglu_backward)(h.ctx, h.acc(rnd<T>(size_t(M) * 2 * H, 51)), h.in(rnd<T>(size_t(M) * H, 52)), x, M, H);
  });
  v.emplace_back("cross_entropy", [](auto& h) {
    using T = S<decltype(h)>;
    const int N = 67, V = 259;
    const T* logits = h.in(rnd<T>(size_t(N) * V, 53, 3.0));
    const int32_t* tg = h.in(ints(N, 0, V, 54));
    KN(cross_entropy_forward)(h.ctx, h.template out<T>(N), logits, tg, N, V);
    KN(cross_entropy_backward)(h.ctx, h.acc(rnd<T>(size_t(N) * V, 55)), h.in(rnd<T>(N, 56)), logits, tg, N, V);
  });
}

void attention_cases(std::vector<Case>& v) {
  for (bool bf16 : {false, true}) {
    v.emplace_back("attention", [](auto& h) {
      using T = S<decltype(h)>;
      const int B = 2, Tn = 37, C = 48, NH = 3;
      const size_t nq = size_t(B) * Tn * 3 * C, na = size_t(B) * NH * Tn * Tn;
      const T* qkv = h.in(rnd<T>(nq, 57));
      T* att = h.template out<T>(na);
      KN(attention_forward)(h.ctx, h.template out<T>(size_t(B) * Tn * C), att, qkv, B, Tn, C, NH);
      KN(attention_backward)(h.ctx, h.acc(rnd<T>(nq, 58)), h.template scratch<T>(na),
                             h.in(rnd<T>(size_t(B) * Tn * C, 59)), qkv, att, B, Tn, C, NH);
    }, bf16);
    v.emplace_back("attention_cached_forward", [](auto& h) {
      using T = S<decltype(h)>;
      const int n = 3, len = 21, C = 48, NH = 3, stride = 3 * C;
      KN(attention_cached_forward)(h.ctx, h.template out<T>(size_t(n) * C), h.template scratch<T>(size_t(NH) * n * len),
                                   h.in(rnd<T>(size_t(n) * stride, 60)), stride, h.in(rnd<T>(size_t(len) * C, 61)),
                                   h.in(rnd<T>(size_t(len) * C, 62)), n, len, C, NH);
    }, bf16);
  }
}

void moe_cases(std::vector<Case>& v) {
  v.emplace_back("gather_rows", [](auto& h) {
    using T = S<decltype(h)>;
    const int N = 50, M = 120, C = 33;
    const int32_t* rows = h.in(ints(M, 0, N, 63));  // repeats: the backward sums them
    KN(gather_rows_forward)(h.ctx, h.template out<T>(size_t(M) * C), h.in(rnd<T>(size_t(N) * C, 64)), rows, M, C);
    KN(gather_rows_backward)(h.ctx, h.acc(rnd<T>(size_t(N) * C, 65)), h.in(rnd<T>(size_t(M) * C, 66)), rows, M, C);
  });
  v.emplace_back("scatter_add_rows", [](auto& h) {
    using T = S<decltype(h)>;
    const int N = 50, K = 3, C = 33;
    std::vector<int32_t> widx, tok;  // unique slots, some left out (as -1 slots are), shuffled order
    for (int s = 0; s < N * K; ++s)
      if (s % 7 != 3) widx.push_back((s * 37) % (N * K));
    for (int32_t s : widx) tok.push_back(s / K);
    const int M = int(widx.size());
    const int32_t *wi = h.in(widx), *tk = h.in(tok);
    const T* y = h.in(rnd<T>(size_t(M) * C, 67));
    const T* w = h.in(rnd<T>(size_t(N) * K, 68));
    KN(scatter_add_rows_forward)(h.ctx, h.acc(rnd<T>(size_t(N) * C, 69)), y, w, tk, wi, M, C);
    KN(scatter_add_rows_forward)(h.ctx, h.acc(rnd<T>(size_t(N) * C, 70)), y, nullptr, tk, wi, M, C);
    const T* dout = h.in(rnd<T>(size_t(N) * C, 71));
    KN(scatter_add_rows_backward)(h.ctx, h.acc(rnd<T>(size_t(M) * C, 72)), h.acc(rnd<T>(size_t(N) * K, 73)), dout, y,
                                  w, tk, wi, M, C);
    KN(scatter_add_rows_backward)(h.ctx, h.acc(rnd<T>(size_t(M) * C, 74)), nullptr, dout, y, nullptr, tk, wi, M, C);
  });
  // grouped_linear under each expert GEMM strategy (cuda::set_expert_gemm), zero-row experts
  // included; the 9-expert split wraps around the 4 side streams of `streams`.
  const std::vector<std::vector<int32_t>> splits = {
      {13, 0, 40, 1, 29}, {0, 70, 0, 0, 3}, {5, 0, 17, 3, 0, 8, 1, 12, 4}};
  for (const char* strategy : {"loop", "streams", "grouped"})
    for (bool bf16 : {false, true})
      for (const std::vector<int32_t>& counts : splits) {
        v.emplace_back(std::string("grouped_linear ") + strategy, [counts, strategy](auto& h) {
          using T = S<decltype(h)>;
          const ExpertGemm use(strategy);
          const int E = int(counts.size()), I = 33, O = 65;
          std::vector<int32_t> off{0};  // host memory: the op reads the dispatch plan's offsets on the host
          for (int32_t c : counts) off.push_back(off.back() + c);
          const int M = off.back();
          const T* x = h.in(rnd<T>(size_t(M) * I, 75));
          const T* w = h.in(rnd<T>(size_t(E) * O * I, 76, 0.2));
          KN(grouped_linear_forward)(h.ctx, h.template out<T>(size_t(M) * O), x, w, off.data(), E, I, O);
          const T* dout = h.in(rnd<T>(size_t(M) * O, 77));
          KN(grouped_linear_backward)(h.ctx, h.acc(rnd<T>(size_t(M) * I, 78)), h.acc(rnd<T>(size_t(E) * O * I, 79)), dout,
                                      x, w, off.data(), E, I, O);
          KN(grouped_linear_backward)(h.ctx, h.acc(rnd<T>(size_t(M) * I, 80)), nullptr, dout, x, w, off.data(), E, I, O);
          KN(grouped_linear_backward)(h.ctx, nullptr, h.acc(rnd<T>(size_t(E) * O * I, 81)), dout, x, w, off.data(), E, I,
                                      O);
        }, bf16);
      }
}

void router_cases(std::vector<Case>& v) {
  for (bool renorm : {false, true})
    for (bool with_kcount : {false, true}) {
      v.emplace_back("router", [=](auto& h) {
        using T = S<decltype(h)>;
        const int N = 67, E = 8, K = 4;
        std::vector<T> z = rnd<T>(size_t(N) * E, 81, 2.0);
        std::fill(z.begin(), z.begin() + E, T(0));  // a row of ties: lower ids first
        std::vector<int32_t> kc = ints(N, 1, K + 1, 82);  // -1 in the slots past kcount
        const int32_t* kcd = with_kcount ? h.in(kc) : nullptr;
        T* probs = h.template out<T>(size_t(N) * E);
        int32_t* ids = h.template out<int32_t>(size_t(N) * K, Cmp::Exact);
        KN(router_forward)(h.ctx, probs, h.template out<T>(N), ids, h.template out<T>(size_t(N) * K), h.in(z), kcd, N, E,
                           K, renorm);
        KN(router_backward)(h.ctx, h.acc(rnd<T>(size_t(N) * E, 83)), h.in(rnd<T>(size_t(N) * K, 84)),
                            h.in(rnd<T>(size_t(N) * E, 85)), h.in(rnd<T>(N, 86)), probs, ids, N, E, K, renorm);
        KN(router_backward)(h.ctx, h.acc(rnd<T>(size_t(N) * E, 87)), h.in(rnd<T>(size_t(N) * K, 88)), nullptr, nullptr,
                            probs, ids, N, E, K, renorm);
      });
    }
  v.emplace_back("top_p_count_forward", [](auto& h) {
    using T = S<decltype(h)>;
    const int N = 67, E = 16;
    std::vector<T> p = softmax_rows<T>(N, E, 89);
    p[5 * E + 2] = T(NAN);  // NaN counts as zero mass
    for (int e = 0; e < E; ++e) p[6 * E + e] = T(1.0 / E);  // ties
    const T* pd = h.in(p);
    double* scratch = h.template scratch<double>(E);
    KN(top_p_count_forward)(h.ctx, h.template out<int32_t>(N, Cmp::Exact), scratch, pd, N, E, 0.7, 1, 4);
    KN(top_p_count_forward)(h.ctx, h.template out<int32_t>(N, Cmp::Exact), scratch, pd, N, E, 0.3, 2, 3);
  });
  for (bool renorm : {false, true})
    v.emplace_back("emoe_sample_forward", [renorm](auto& h) {
      using T = S<decltype(h)>;
      const int N = 67, E = 16, K = 3, P = 6;
      std::vector<T> p = softmax_rows<T>(N, E, 90);
      std::vector<int32_t> pool(size_t(N) * P);
      for (int n = 0; n < N; ++n) {  // each token's top-P experts, best first
        std::vector<int> e(E);
        for (int i = 0; i < E; ++i) e[i] = i;
        std::stable_sort(e.begin(), e.end(), [&](int a, int b) { return p[n * E + a] > p[n * E + b]; });
        for (int j = 0; j < P; ++j) pool[n * P + j] = e[j];
      }
      KN(emoe_sample_forward)(h.ctx, h.template out<int32_t>(size_t(N) * K, Cmp::Exact), h.template out<T>(size_t(N) * K),
                              h.in(p), h.in(pool), N, E, K, P, 0x5eed1234abcdULL, renorm);
    });
  v.emplace_back("expert_counts", [](auto& h) {
    const int E = 8;
    std::vector<int32_t> ids = ints(1001, -1, E, 91);  // about one in nine is a -1 slot
    KN(expert_counts)(h.ctx, h.template out<int32_t>(E, Cmp::Exact), h.in(ids), int64_t(ids.size()), E);
  });
}

void aux_loss_cases(std::vector<Case>& v) {
  v.emplace_back("aux losses", [](auto& h) {
    using T = S<decltype(h)>;
    const int N = 67, E = 8;
    std::vector<T> p = softmax_rows<T>(N, E, 92);
    for (int e = 0; e < E; e += 3) p[e] = T(0);  // q = 0 terms are skipped by kl
    const T* pd = h.in(p);
    const int32_t* counts = h.in(std::vector<int32_t>{30, 0, 12, 50, 7, 1, 0, 34});
    const T* lse = h.in(rnd<T>(N, 93, 3.0));
    const double* dout = h.in(std::vector<double>{0.37});
    KN(lb_loss_forward)(h.ctx, h.template out<double>(1), pd, counts, N, E);
    KN(lb_loss_backward)(h.ctx, h.acc(rnd<T>(size_t(N) * E, 94)), dout, counts, N, E);
    KN(z_loss_forward)(h.ctx, h.template out<double>(1), lse, N);
    KN(z_loss_backward)(h.ctx, h.acc(rnd<T>(N, 95)), dout, lse, N);
    KN(kl_loss_forward)(h.ctx, h.template out<double>(1), pd, N, E);
    KN(kl_loss_backward)(h.ctx, h.acc(rnd<T>(size_t(N) * E, 96)), dout, pd, N, E);
    KN(kl_loss_backward_f64)(h.ctx, h.acc(rnd<double>(size_t(N) * E, 97)), dout, pd, N, E);
  });
  v.emplace_back("router_aux", [](auto& h) {
    using T = S<decltype(h)>;
    const double cl = 0.01, cz = 1e-3, ck = 0.05;
    const T *lb = h.in(std::vector<T>{T(1.3)}), *z = h.in(std::vector<T>{T(4.1)}), *kl = h.in(std::vector<T>{T(0.2)});
    KN(router_aux_forward)(h.ctx, h.template out<T>(1), lb, z, kl, cl, cz, ck);
    const double *lb8 = h.in(std::vector<double>{1.3}), *z8 = h.in(std::vector<double>{4.1}),
                 *kl8 = h.in(std::vector<double>{0.2});
    KN(router_aux_forward_f64)(h.ctx, h.template out<T>(1), lb8, z8, kl8, cl, cz, ck);
    const T* dout = h.in(std::vector<T>{T(0.7)});
    KN(router_aux_backward)(h.ctx, h.acc(std::vector<T>{T(1)}), h.acc(std::vector<T>{T(2)}),
                            h.acc(std::vector<T>{T(3)}), dout, cl, cz, ck);
    KN(router_aux_backward)(h.ctx, h.acc(std::vector<T>{T(1)}), nullptr, nullptr, dout, cl, cz, ck);
    KN(router_aux_backward_f64)(h.ctx, h.acc(std::vector<double>{1}), h.acc(std::vector<double>{2}),
                                h.acc(std::vector<double>{3}), dout, cl, cz, ck);
  });
}

std::vector<Case> cases() {
  std::vector<Case> v;
  elementwise_cases(v);
  dense_cases(v);
  attention_cases(v);
  moe_cases(v);
  router_cases(v);
  aux_loss_cases(v);
  return v;
}

}  // namespace

// Skips (exit 77) without a GPU; otherwise initialises the backend on GPU 0 and runs the cases.
int main(int argc, char** argv) {
  if (on_cpu()) {
    std::printf("ANYK_GPU_TEST_ON_CPU: the CPU table on both sides (a check of the harness)\n");
    return doctest::Context(argc, argv).run();
  }
  if (cuda::device_count() == 0) {
    std::printf("no CUDA device visible\n");
    return 77;
  }
  const cuda::DeviceInfo info = cuda::init(0, false);
  std::printf("CUDA device %d: %s (sm_%d%d)\n", info.index, info.name.c_str(), info.cc_major, info.cc_minor);
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
