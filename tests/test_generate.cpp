// Generation with a KV cache against the full recompute: every cached step's logits equal the
// full forward's row at that position (f64 to 1e-12, f32 to 1e-5), for several K, per-layer
// schedules and per-token top-p K, also when sequences of different lengths share a pass; greedy
// generation equals re-running LM::forward over the whole context at every step, including past
// the context window (the slide rule re-implemented here); the routed experts counted by the
// decoder equal the training forward's; sampling is a pure function of (logits, seed, step); and
// `anyk generate` through the binary: its text is the library's, and bad input is one clear line.
#include <doctest/doctest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "io/weights.h"
#include "model/generate.h"
#include "test_util.h"

using namespace anyk;
using namespace anyk::test;
namespace fs = std::filesystem;

namespace {

ModelConfig small(DType dt, int vocab = 64, int seq_len = 16) {
  ModelConfig c;
  c.vocab = vocab;
  c.dim = 32;
  c.layers = 3;
  c.heads = 4;
  c.experts = 4;
  c.expert_hidden = 24;
  c.seq_len = seq_len;
  c.init_std = 0.15;  // logits of order one: arg-max decisions are far from ties
  c.dtype = dt;
  return c;
}

// An LM owning its dispatcher.
struct Model {
  LocalDispatcher disp;
  LM lm;
  Model(const ModelConfig& c, uint64_t seed) : disp(c.experts), lm(c, disp) { lm.init(seed); }
};

// Logits (T,V) of the full forward over tokens, at forced K per layer (or top-p per token when
// the model's config says so).
std::vector<double> full_logits(const LM& lm, const std::vector<int>& toks, const std::vector<int>& k,
                                ForwardStats* st = nullptr) {
  Arena arena(1 << 22);
  Tape tape(arena);
  tape.set_grad_enabled(false);
  Var lg = lm.forward(tape, toks.data(), nullptr, 1, int(toks.size()), k, st);
  return read(lg.val);
}

std::vector<int> tokens(int n, int vocab, uint64_t seed) {
  CounterRng r(seed, 3);
  std::vector<int> t(static_cast<size_t>(n));
  for (auto& v : t) v = int(r.next() % uint64_t(vocab));
  return t;
}

std::vector<double> row(const std::vector<double>& m, int r, int V) {
  return std::vector<double>(m.begin() + int64_t(r) * V, m.begin() + int64_t(r + 1) * V);
}

int argmax(const std::vector<double>& v) {
  int b = 0;
  for (int i = 1; i < int(v.size()); ++i)
    if (v[size_t(i)] > v[size_t(b)]) b = i;
  return b;
}

// Prefill `p` tokens (checking every prompt row), then decode the rest one at a time; each
// cached row is compared with the full forward's row at its position. Returns the worst error.
double cached_vs_full(const LM& lm, const std::vector<int>& seq, int p, const InferenceK& k) {
  const int V = lm.config().vocab;
  auto full = full_logits(lm, seq, k.k);
  KVDecoder dec(lm, 1);
  std::vector<double> lg;
  Segment s{0, seq.data(), p};
  dec.forward({&s, 1}, k, lg, true);
  double worst = 0;
  for (int t = 0; t < p; ++t) worst = std::max(worst, rel_err(row(lg, t, V), row(full, t, V)));
  for (int t = p; t < int(seq.size()); ++t) {
    Segment d{0, seq.data() + t, 1};
    dec.forward({&d, 1}, k, lg);
    worst = std::max(worst, rel_err(lg, row(full, t, V)));
  }
  CHECK(dec.length(0) == int(seq.size()));
  return worst;
}

// The model with the same weights but a per-token top-p router (for the reference forward).
struct TopPModel {
  LocalDispatcher disp;
  LM lm;
  TopPModel(const LM& src, double p) : disp(src.config().experts), lm(with_top_p(src.config(), p), disp) {
    const ParamStore& a = src.params();
    for (Region r : {Region::Dense, Region::Expert})
      std::memcpy(lm.params().region_data(r), a.region_data(r),
                  size_t(a.region_numel(r)) * dtype_size(a.dtype()));
  }
  static ModelConfig with_top_p(ModelConfig c, double p) {
    c.router.top_p = p;
    c.router.k_min = 1;
    return c;
  }
};

// Greedy generation by recomputing the whole context at every step, with the window rule:
// when the context grows past W it restarts at its last W/2 tokens.
std::vector<int> greedy_reference(const LM& lm, const std::vector<int>& prompt, int max_new,
                                  const std::vector<int>& k, int W) {
  std::vector<int> hist = prompt, out;
  size_t start = 0;
  for (int i = 0; i < max_new; ++i) {
    std::vector<int> ctx(hist.begin() + int64_t(start), hist.end());
    auto lg = full_logits(lm, ctx, k);
    int t = argmax(row(lg, int(ctx.size()) - 1, lm.config().vocab));
    hist.push_back(t);
    out.push_back(t);
    if (hist.size() - start > size_t(W)) start = hist.size() - size_t(W / 2);
  }
  return out;
}

}  // namespace

TEST_CASE("cached steps give the full forward's logits (f64 to 1e-12, f32 to 1e-5)") {
  const std::vector<std::vector<int>> schedules = {{1, 1, 1}, {2, 2, 2}, {4, 4, 4}, {4, 2, 1}, {1, 3, 2}};
  for (DType dt : {DType::F64, DType::F32}) {
    Model m(small(dt), 11);
    auto seq = tokens(16, 64, 5);  // the whole context
    for (const auto& k : schedules) {
      CAPTURE(k[0]);
      CAPTURE(k[1]);
      CAPTURE(k[2]);
      for (int p : {1, 5, 16}) {
        double err = cached_vs_full(m.lm, seq, p, InferenceK{k, 0});
        CHECK(err < (dt == DType::F64 ? 1e-12 : 1e-5));
      }
    }
  }
}

TEST_CASE("per-token top-p K in the cache matches the top-p router of the training forward") {
  for (double p : {0.3, 0.6, 0.9}) {
    Model m(small(DType::F64), 12);
    TopPModel ref(m.lm, p);
    auto seq = tokens(14, 64, 6);
    InferenceK k{{4, 4, 4}, p};
    // Reference logits and routed assignments from the training forward with a top-p router.
    ForwardStats st;
    auto full = full_logits(ref.lm, seq, k.k, &st);
    int64_t routed = 0;
    for (const auto& l : st.layers) routed += l.assignments;
    KVDecoder dec(m.lm, 1);
    std::vector<double> lg;
    Segment s{0, seq.data(), 6};
    dec.forward({&s, 1}, k, lg, true);
    double worst = 0;
    for (int t = 0; t < 6; ++t) worst = std::max(worst, rel_err(row(lg, t, 64), row(full, t, 64)));
    for (int t = 6; t < 14; ++t) {
      Segment d{0, seq.data() + t, 1};
      dec.forward({&d, 1}, k, lg);
      worst = std::max(worst, rel_err(lg, row(full, t, 64)));
    }
    CAPTURE(p);
    CHECK(worst < 1e-12);
    CHECK(dec.assignments() == routed);
    CHECK(dec.token_layers() == 14 * 3);
    const double mean_k = double(dec.assignments()) / double(dec.token_layers());
    CHECK(mean_k >= 1.0);
    CHECK(mean_k <= 4.0);
  }
}

TEST_CASE("sequences of different lengths in one pass: each gets its own full-forward logits") {
  Model m(small(DType::F64), 13);
  const std::vector<int> k = {2, 1, 3};
  std::vector<std::vector<int>> seqs = {tokens(9, 64, 1), tokens(3, 64, 2), tokens(12, 64, 3)};
  KVDecoder dec(m.lm, 3);
  // Prompts of 4, 1 and 7 tokens in one pass, then a mixed pass (one decode, one multi-token
  // extension, one decode), then single decodes to the end of each.
  std::vector<int> done = {0, 0, 0};
  auto pass = [&](std::vector<int> n) {
    std::vector<Segment> segs;
    for (int i = 0; i < 3; ++i)
      if (n[i] > 0) segs.push_back(Segment{i, seqs[i].data() + done[i], n[i]});
    std::vector<double> lg;
    dec.forward(segs, InferenceK{k, 0}, lg);
    int r = 0;
    for (int i = 0; i < 3; ++i) {
      if (n[i] == 0) continue;
      done[i] += n[i];
      std::vector<int> prefix(seqs[i].begin(), seqs[i].begin() + done[i]);
      auto full = full_logits(m.lm, prefix, k);
      CHECK(rel_err(row(lg, r, 64), row(full, done[i] - 1, 64)) < 1e-12);
      ++r;
    }
  };
  pass({4, 1, 7});
  pass({1, 2, 1});
  pass({1, 0, 1});
  pass({3, 0, 3});
  CHECK(done == std::vector<int>{9, 3, 12});
  CHECK(dec.length(1) == 3);
}

TEST_CASE("greedy generation with the cache equals recomputing the whole context each step") {
  Model m(small(DType::F64, 64, 16), 21);
  const int W = 16;
  CHECK(window_keep(W) == W / 2);
  const std::vector<std::vector<int>> schedules = {{1, 1, 1}, {2, 2, 2}, {4, 4, 4}, {4, 2, 1}, {1, 4, 2}};
  const std::vector<std::vector<int>> prompts = {tokens(3, 64, 7), tokens(16, 64, 8), tokens(1, 64, 9)};
  for (const auto& k : schedules) {
    GenerateOptions o;
    o.k = InferenceK{k, 0};
    o.max_new = 30;  // past the window: every prompt slides at least once
    GenerateStats st;
    auto outs = generate(m.lm, prompts, o, {}, &st);
    CHECK(st.slides >= 3);
    CHECK(st.generated == 90);
    CHECK(st.mean_k == doctest::Approx((k[0] + k[1] + k[2]) / 3.0));
    for (size_t i = 0; i < prompts.size(); ++i) {
      CAPTURE(i);
      CAPTURE(k[0]);
      CAPTURE(k[1]);
      CAPTURE(k[2]);
      CHECK(outs[i] == greedy_reference(m.lm, prompts[i], 30, k, W));
    }
  }
}

TEST_CASE("streaming callback, batching and seeds: a prompt's text depends only on (prompt, options)") {
  Model m(small(DType::F32, 64, 16), 22);
  const std::vector<std::vector<int>> prompts = {tokens(5, 64, 1), tokens(2, 64, 2), tokens(9, 64, 3)};
  GenerateOptions o;
  o.k = InferenceK{{2, 2, 2}, 0};
  o.max_new = 20;
  o.sample = SampleOptions{0.9, 12, 7};
  std::vector<std::vector<int>> streamed(3);
  auto a = generate(m.lm, prompts, o, [&](int i, int t) { streamed[size_t(i)].push_back(t); });
  auto b = generate(m.lm, prompts, o);
  CHECK(a == b);  // same seed, same text
  CHECK(streamed == a);
  for (int i = 0; i < 3; ++i) CHECK(generate(m.lm, {prompts[size_t(i)]}, o)[0] == a[size_t(i)]);
  o.sample.seed = 8;
  auto c = generate(m.lm, prompts, o);
  CHECK(c != a);  // 60 draws at temperature 0.9 over 12 candidates: equal only by a fluke
  for (const auto& s : c)
    for (int t : s) CHECK((t >= 0 && t < 64));
}

TEST_CASE("a model file's seq_len does not size the caches: seq_len 2^30 generates the seq_len-64 text") {
  // seq_len sizes no parameter, so the two models have the same weights. Before the caches were
  // sized from the request, seq_len 2^30 asked for 3 layers x 2 x 2^30 x 32 floats of KV cache
  // (768 GiB) and failed.
  Model a(small(DType::F32, 64, 64), 31), b(small(DType::F32, 64, 1 << 30), 31);
  const std::vector<std::vector<int>> prompts = {tokens(6, 64, 4), tokens(3, 64, 5)};
  GenerateOptions o;
  o.k = InferenceK{{2, 1, 3}, 0};
  o.max_new = 12;
  o.sample = SampleOptions{0.8, 0, 3};
  const auto ta = generate(a.lm, prompts, o);
  CHECK(ta[0].size() == 12);
  CHECK(generate(b.lm, prompts, o) == ta);
}

namespace {

// One request of the continuous-batching case below: its prompt, its own K, when it joins.
struct Req {
  std::vector<int> prompt;
  InferenceK k;
  int join = 0, steps = 0;  // the pass it joins at, greedy tokens after its prompt pass
};

// Greedy logits of each pass of req alone in a one-slot decoder (prompt pass, then one token per
// pass), row-invariant like a server's decode steps; routed experts per layer into routed.
std::vector<std::vector<double>> solo_run(const LM& lm, const Req& q, bool row_invariant, std::vector<int64_t>& routed) {
  KVDecoder dec(lm, 1);
  dec.set_row_invariant(row_invariant);
  const InferenceK other{std::vector<int>(q.k.k.size(), 1), 0};  // the forward's K: the segment's must win
  std::vector<int> hist = q.prompt;
  std::vector<std::vector<double>> out;
  routed.assign(q.k.k.size(), 0);
  Segment s{0, hist.data(), int(hist.size()), &q.k, routed.data()};
  for (int i = 0; i <= q.steps; ++i) {
    std::vector<double> lg;
    dec.forward({&s, 1}, other, lg);
    out.push_back(lg);
    hist.push_back(argmax(lg));
    s.tokens = hist.data() + hist.size() - 1, s.n = 1;
  }
  return out;
}

}  // namespace

TEST_CASE("per-request K in one pass: each request's logits are bit-identical to its solo run") {
  // Four requests at different K (uniform, per-layer, top-p under a cap) join a shared decoder at
  // different passes and leave when done; each pass carries whoever is active (a prompt pass of
  // one beside the decode rows of others). Every request's logits at every pass, its greedy
  // tokens and its routed-expert counts equal those of the same request run alone.
  for (DType dt : {DType::F32, DType::F64}) {
    Model m(small(dt, 64, 32), 41);
    std::vector<Req> reqs = {{tokens(5, 64, 1), InferenceK{{1, 1, 1}, 0}, 0, 14},
                             {tokens(3, 64, 2), InferenceK{{4, 4, 4}, 0}, 0, 9},
                             {tokens(7, 64, 3), InferenceK{{2, 4, 1}, 0}, 3, 12},
                             {tokens(2, 64, 4), InferenceK{{4, 3, 4}, 0.6}, 5, 10}};
    const int R = int(reqs.size());
    KVDecoder dec(m.lm, R);
    dec.set_row_invariant(true);
    std::vector<std::vector<int>> hist(static_cast<size_t>(R));
    std::vector<std::vector<std::vector<double>>> got(static_cast<size_t>(R));
    std::vector<std::vector<int64_t>> routed(static_cast<size_t>(R), std::vector<int64_t>(3, 0));
    const InferenceK base{{2, 2, 2}, 0};
    for (int pass = 0; pass < 40; ++pass) {
      std::vector<Segment> segs;
      std::vector<int> who;
      for (int i = 0; i < R; ++i) {
        const Req& q = reqs[size_t(i)];
        if (pass < q.join || int(got[size_t(i)].size()) > q.steps) continue;
        if (pass == q.join) hist[size_t(i)] = q.prompt;
        const int n = pass == q.join ? int(q.prompt.size()) : 1;
        segs.push_back(Segment{i, hist[size_t(i)].data() + hist[size_t(i)].size() - size_t(n), n, &q.k,
                               routed[size_t(i)].data()});
        who.push_back(i);
      }
      if (segs.empty()) continue;
      std::vector<double> lg;
      dec.forward(segs, base, lg);
      for (size_t j = 0; j < who.size(); ++j) {
        auto r = row(lg, int(j), 64);
        got[size_t(who[j])].push_back(r);
        hist[size_t(who[j])].push_back(argmax(r));
      }
    }
    for (int i = 0; i < R; ++i) {
      CAPTURE(i);
      std::vector<int64_t> solo_routed;
      auto solo = solo_run(m.lm, reqs[size_t(i)], true, solo_routed);
      REQUIRE(got[size_t(i)].size() == solo.size());
      for (size_t t = 0; t < solo.size(); ++t) {
        CAPTURE(t);
        CHECK(got[size_t(i)][t] == solo[t]);  // bit for bit
      }
      CHECK(routed[size_t(i)] == solo_routed);
      const Req& q = reqs[size_t(i)];
      const int64_t rows = int64_t(q.prompt.size()) + q.steps;
      for (int l = 0; l < 3; ++l) {
        if (q.k.top_p == 0) CHECK(routed[size_t(i)][size_t(l)] == rows * q.k.k[size_t(l)]);
        else CHECK((routed[size_t(i)][size_t(l)] >= rows && routed[size_t(i)][size_t(l)] <= rows * q.k.k[size_t(l)]));
      }
    }
    // The top-p request really used fewer experts than its cap somewhere (else the case is weak).
    CHECK(routed[3][0] < (2 + 10) * 4);
  }
}

TEST_CASE("per-request K: the row-invariant pass gives the ordinary pass's greedy text") {
  // A request alone through the ordinary pass (GEMM on its prompt when long) and through the
  // row-invariant one: the same greedy tokens, logits within f32 rounding.
  Model m(small(DType::F32, 64, 32), 42);
  Req q{tokens(20, 64, 9), InferenceK{{3, 1, 2}, 0}, 0, 10};
  std::vector<int64_t> ra, rb;
  auto a = solo_run(m.lm, q, false, ra);
  auto b = solo_run(m.lm, q, true, rb);
  for (size_t t = 0; t < a.size(); ++t) {
    CHECK(argmax(a[t]) == argmax(b[t]));
    CHECK(rel_err(a[t], b[t]) < 1e-5);
  }
  CHECK(ra == rb);
}

TEST_CASE("sample_token: nucleus (top_p) keeps the most likely tokens whose mass first reaches p") {
  // Probabilities at temperature 1: softmax of log(0.5, 0.3, 0.15, 0.05) = exactly those.
  const std::vector<double> lg = {std::log(0.15), std::log(0.5), std::log(0.05), std::log(0.3)};
  for (double p : {0.4, 0.7, 0.9, 1.0}) {
    std::vector<int> keep = p <= 0.5 ? std::vector<int>{1} : p <= 0.8 ? std::vector<int>{1, 3}
                                     : p <= 0.95 ? std::vector<int>{0, 1, 3} : std::vector<int>{0, 1, 2, 3};
    double z = 0;
    for (int v : keep) z += std::exp(lg[size_t(v)]);
    const int M = 100000;
    std::vector<int> count(4, 0);
    SampleOptions o{1.0, 0, 0, p};
    for (int i = 0; i < M; ++i) ++count[size_t(sample_token(lg.data(), 4, o, (i + 0.5) / M))];
    for (int v = 0; v < 4; ++v) {
      bool in = std::find(keep.begin(), keep.end(), v) != keep.end();
      CAPTURE(p);
      CAPTURE(v);
      CHECK(std::abs(double(count[size_t(v)]) / M - (in ? std::exp(lg[size_t(v)]) / z : 0.0)) < 1e-4);
    }
  }
}

TEST_CASE("sample_token: greedy, top-k and the softmax it draws from") {
  const std::vector<double> lg = {0.5, 2.0, -1.0, 2.0, 1.0};
  CHECK(sample_token(lg.data(), 5, SampleOptions{0, 0, 0}, 0.7) == 1);  // ties: lower id
  CHECK(sample_token(lg.data(), 5, SampleOptions{1.0, 1, 0}, 0.99) == 1);
  // Over an even grid of u, each token is drawn in proportion to softmax(logits / temperature).
  for (double temp : {0.5, 1.0, 2.0}) {
    for (int top_k : {0, 3}) {
      const int M = 200000;
      std::vector<int> count(5, 0);
      for (int i = 0; i < M; ++i) ++count[size_t(sample_token(lg.data(), 5, SampleOptions{temp, top_k, 0}, (i + 0.5) / M))];
      // The reference distribution: top-k candidates by logit (ties: lower id), softmax over them.
      std::vector<int> keep = top_k == 3 ? std::vector<int>{1, 3, 4} : std::vector<int>{0, 1, 2, 3, 4};
      double z = 0;
      for (int v : keep) z += std::exp(lg[size_t(v)] / temp);
      for (int v = 0; v < 5; ++v) {
        bool in = std::find(keep.begin(), keep.end(), v) != keep.end();
        double want = in ? std::exp(lg[size_t(v)] / temp) / z : 0.0;
        CAPTURE(temp);
        CAPTURE(top_k);
        CAPTURE(v);
        CHECK(std::abs(double(count[size_t(v)]) / M - want) < 1e-4);
      }
    }
  }
  CHECK(sample_uniform(3, 4) == sample_uniform(3, 4));
  CHECK(sample_uniform(3, 4) != sample_uniform(3, 5));
  CHECK(sample_uniform(3, 4) != sample_uniform(4, 4));
}

TEST_CASE("decoder refusals") {
  Model m(small(DType::F64), 1);
  KVDecoder dec(m.lm, 2);
  auto seq = tokens(17, 64, 1);
  std::vector<double> lg;
  Segment s{0, seq.data(), 17};
  CHECK_THROWS_WITH_AS(dec.forward({&s, 1}, InferenceK{{1, 1, 1}, 0}, lg), doctest::Contains("the cache holds 16"),
                       Error);
  Segment ok{0, seq.data(), 4};
  CHECK_THROWS_WITH_AS(dec.forward({&ok, 1}, InferenceK{{1, 5, 1}, 0}, lg), doctest::Contains("outside [1, E=4]"),
                       Error);
  Segment two[2] = {ok, ok};
  CHECK_THROWS_WITH_AS(dec.forward(two, InferenceK{{1, 1, 1}, 0}, lg), doctest::Contains("appears twice"), Error);
  GenerateOptions o;
  o.k = InferenceK{{1, 1, 1}, 0};
  CHECK_THROWS_WITH_AS(generate(m.lm, {seq}, o), doctest::Contains("context is 16 tokens"), Error);
  CHECK_THROWS_WITH_AS(generate(m.lm, {std::vector<int>{}}, o), doctest::Contains("is empty"), Error);
}

namespace {

struct Cli {
  TempDir tmp{"test_generate"};
  fs::path dir = tmp.path;
  RunResult last;
  int sh(const std::string& args, const std::string& stdin_text = "") {
    last = run_anyk(args, {.cwd = dir, .timeout_s = 120, .stdin_text = stdin_text});
    return last.rc;
  }
  std::string out() const { return last.out; }
  std::string err() const { return last.err; }
};

ModelConfig byte_model() {
  ModelConfig c = small(DType::F32, 256, 32);
  c.layers = 2;
  return c;
}

}  // namespace

TEST_CASE("anyk generate: the library's text, streamed, and one-line errors") {
  Cli cli;
  Model m(byte_model(), 31);
  io::save_weights((cli.dir / "w.h5").string(), m.lm);
  const std::string w = "generate --weights w.h5 --threads 1 ";

  // Greedy at K=1 and a per-layer schedule: stdout is the prompt then the library's tokens.
  for (const std::string& kopt : {std::string("--k 1"), std::string("--layer-k 3,1")}) {
    CAPTURE(kopt);
    REQUIRE(cli.sh(w + "--prompt 'Hello' --max-new 40 " + kopt) == 0);
    GenerateOptions o;
    o.k = InferenceK{kopt == "--k 1" ? std::vector<int>{1, 1} : std::vector<int>{3, 1}, 0};
    o.max_new = 40;
    auto toks = generate(m.lm, {{'H', 'e', 'l', 'l', 'o'}}, o)[0];
    std::string want = "Hello";
    for (int t : toks) want += char(t);
    CHECK(cli.out() == want + "\n");
    CHECK(cli.err().find("new tokens at") != std::string::npos);
    CHECK(cli.err().find(kopt == "--k 1" ? "mean K 1.00" : "mean K 2.00") != std::string::npos);
  }
  // stdin, a prompt file, and a batch file.
  REQUIRE(cli.sh(w + "--max-new 3", "abc\n") == 0);
  CHECK(cli.out().substr(0, 3) == "abc");
  CHECK(cli.out().size() == 3 + 3 + 1);
  std::ofstream(cli.dir / "p.txt") << "xyz\n";
  REQUIRE(cli.sh(w + "--prompt-file p.txt --max-new 2 --temperature 1 --seed 4") == 0);
  CHECK(cli.out().size() == 3 + 2 + 1);
  std::string first = cli.out();
  REQUIRE(cli.sh(w + "--prompt-file p.txt --max-new 2 --temperature 1 --seed 4") == 0);
  CHECK(cli.out() == first);
  std::ofstream(cli.dir / "many.txt") << "one\n\ntwo\nthree\n";
  REQUIRE(cli.sh(w + "--prompts many.txt --max-new 4 --expert-top-p 0.6") == 0);
  CHECK(cli.out().find("--- 3 ---\nthree") != std::string::npos);
  CHECK(cli.err().find("3 prompts") != std::string::npos);

  // Exit status 2 for a bad option value, 1 for bad input (docs/cli.md).
  auto fails = [&](const std::string& args, const std::string& needle, const std::string& in = "", int rc = 1) {
    CAPTURE(args);
    CHECK(cli.sh(args, in) == rc);
    std::string e = cli.err();
    CHECK(e.rfind("anyk: error: ", 0) == 0);
    CHECK(std::count(e.begin(), e.end(), '\n') == 1);
    CHECK(e.find(needle) != std::string::npos);
  };
  fails(w + "--prompt hi --k 5", "--k 5 is outside [1, experts=4]", "", 2);
  fails(w + "--prompt hi --layer-k 1,2,3", "--layer-k has 3 values but the model has 2 layers", "", 2);
  fails(w + "--prompt ''", "the prompt is empty");
  fails(w, "the prompt is empty", "");
  fails(w + "--prompt-file nope.txt", "--prompt-file nope.txt does not exist");
  fails(w + "--prompts nope.txt", "--prompts nope.txt does not exist");
  fails(w + "--prompt " + std::string(33, 'a'), "is 33 bytes but the model's context is 32 tokens");
  fails(w + "--prompt hi --budget 2", "--budget needs --data", "", 2);
  fails(w + "--prompt hi --precision bf16", "--precision bf16 needs --device cuda", "", 2);
  fails("generate --weights missing.h5 --prompt hi", "missing.h5 not found");
  // A run dir whose config.ini describes another model than its model.h5.
  fs::create_directories(cli.dir / "run");
  fs::copy_file(cli.dir / "w.h5", cli.dir / "run" / "model.h5");
  std::ofstream(cli.dir / "run" / "config.ini")
      << "layers = 2\ndim = 64\nheads = 4\nexperts = 4\nexpert-hidden = 24\nseq-len = 32\n";
  fails("generate --run-dir run --prompt hi", "is a model with --dim 32 but run/config.ini says --dim 64");
}

TEST_CASE("anyk generate --device checked prints the CPU's text bit for bit") {
  // The checked device runs the CPU kernels on memory the host cannot touch: equal output means
  // the decoder reached its caches, scratch and parameters through the device seam only.
  Cli cli;
  Model m(byte_model(), 37);
  io::save_weights((cli.dir / "w.h5").string(), m.lm);
  std::ofstream(cli.dir / "many.txt") << "one\ntwo two\nthree\n";
  const std::string w = "generate --weights w.h5 --threads 1 ";
  const std::vector<std::string> cases = {
      "--prompt 'Hello' --max-new 40 --k 1",                                    // greedy, window slides
      "--prompt 'Hello' --max-new 24 --layer-k 3,1 --temperature 0.9 --top-k 30 --seed 2",
      "--prompts many.txt --max-new 12 --expert-top-p 0.6 --temperature 1 --seed 4",  // a batch, per-token K
  };
  for (const std::string& c : cases) {
    CAPTURE(c);
    REQUIRE(cli.sh(w + c) == 0);
    const std::string cpu_out = cli.out(), cpu_err = cli.err();
    REQUIRE(cli.sh(w + c + " --device checked") == 0);
    CHECK(cli.err().rfind("device: checked", 0) == 0);
    CHECK(cli.out() == cpu_out);
    CHECK(cpu_out.size() > 12);
    auto mean_k = [](const std::string& e) { return e.substr(e.find("mean K"), 12); };
    CHECK(mean_k(cli.err()) == mean_k(cpu_err));
  }
}

TEST_CASE("anyk generate --decode-weights: bf16 prints the library's bf16 text; f32 is the default; bad values") {
  Cli cli;
  Model m(byte_model(), 41);
  io::save_weights((cli.dir / "w.h5").string(), m.lm);
  const std::string w = "generate --weights w.h5 --threads 1 --prompt 'Hello' --max-new 30 --k 2 --temperature 1 ";
  REQUIRE(cli.sh(w + "--decode-weights bf16") == 0);
  GenerateOptions o;
  o.k = InferenceK{{2, 2}, 0};
  o.max_new = 30;
  o.sample.temperature = 1;
  o.sample.seed = 1;  // the CLI's default seed
  o.weights = DecodeWeights::bf16;
  std::string want = "Hello";
  const auto toks = generate(m.lm, {{'H', 'e', 'l', 'l', 'o'}}, o)[0];
  for (int t : toks) want += char(t);
  CHECK(cli.out() == want + "\n");
  // --logits-out: the library decoder's bf16 logits bit for bit, and not the f32 ones.
  auto logits_out = [&](const std::string& opt) {
    REQUIRE(cli.sh("generate --weights w.h5 --threads 1 --prompt 'Hello' --k 2 --logits-out l.bin " + opt) == 0);
    std::ifstream in(cli.dir / "l.bin", std::ios::binary);
    std::vector<double> v(5 * 256);
    in.read(reinterpret_cast<char*>(v.data()), std::streamsize(v.size() * sizeof(double)));
    CHECK(in.gcount() == std::streamsize(v.size() * sizeof(double)));
    return v;
  };
  auto lib_logits = [&](DecodeWeights dw) {
    KVDecoder dec(m.lm, 1, 0, dw);
    const std::vector<int> p{'H', 'e', 'l', 'l', 'o'};
    std::vector<double> lg;
    Segment seg{0, p.data(), 5};
    dec.forward({&seg, 1}, InferenceK{{2, 2}, 0}, lg, true);
    return lg;
  };
  const auto b16 = logits_out("--decode-weights bf16"), f32 = logits_out("");
  CHECK(b16 == lib_logits(DecodeWeights::bf16));
  CHECK(f32 == lib_logits(DecodeWeights::f32));
  CHECK(b16 != f32);
  REQUIRE(cli.sh(w) == 0);
  const std::string dflt = cli.out();
  REQUIRE(cli.sh(w + "--decode-weights f32") == 0);
  CHECK(cli.out() == dflt);
  for (const std::string& bad : {std::string("--decode-weights fp8"), std::string("--decode-weights bf16 --device checked")}) {
    CAPTURE(bad);
    CHECK(cli.sh(w + bad) == 2);
    const std::string e = cli.err();
    CHECK(e.rfind("anyk: error: ", 0) == 0);
    CHECK(std::count(e.begin(), e.end(), '\n') == 1);
    CHECK(e.find("--decode-weights") != std::string::npos);
  }
}
