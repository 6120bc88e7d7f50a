// See memory.h.
#include "launch/memory.h"
#include "parallel/grad_tree.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace anyk::launch {

std::string gib(double bytes) {
  char buf[64];
  if (bytes >= double(1ull << 30))
    std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / double(1ull << 30));
  else
    std::snprintf(buf, sizeof buf, "%.1f MiB", bytes / double(1ull << 20));
  return buf;
}

std::string MemoryEstimate::largest_knob() const {
  const double state = params + grads + moments;
  if (activations >= state + eval_copy && activations >= data)
    return std::string(recompute ? "" : "pass --recompute layer (about one layer's activations alive), or ") +
           "lower --batch (activations grow with --batch x --seq-len, and with --seq-len squared in attention), "
           "or raise --grad-accum to keep the global batch";
  if (data > state + eval_copy) return "use a smaller corpus (the token shards are held in memory)";
  if (zero == 0 && zero_ranks > 1)  // the moments are half of the state: sharding them saves the most
    return "pass --zero 1 to shard the AdamW moments over the " + std::to_string(zero_ranks) +
           " ranks, or lower --dim, --expert-hidden or --experts";
  return "lower --dim, --expert-hidden or --experts, or spread the experts over more ranks (--ep)";
}

std::string MemoryEstimate::describe() const {
  const std::string sharded = zero ? " (--zero 1: dense 1/" + std::to_string(zero_ranks) + ")" : "";
  return gib(total()) + " (parameters " + gib(params) + ", gradients " + gib(grads) + ", AdamW moments " +
         gib(moments) + sharded + ", activations " + gib(activations) + (recompute ? " (--recompute layer)" : "") +
         ", eval copy " + gib(eval_copy) + ", data " + gib(data) + ")";
}

MemoryEstimate estimate_train_memory(const TrainOptions& o, int world, int ep, bool rank0, int64_t tokens,
                                     bool recompute_layers) {
  // Everything in double: the options may be absurd (--dim 1000000) and must not overflow here.
  const double L = o.layers, C = o.dim, E = o.experts, H = o.expert_hidden, T = o.seq_len, B = o.batch,
               NH = o.heads, V = o.vocab > 0 ? o.vocab : 256;
  const int eps = ep > 0 ? ep : world;
  const double E_local = E / std::max(1, eps);
  const bool one_k = o.k_strategy == "fixed" || o.k_strategy == "emoe";
  const double K = one_k ? o.k : (o.k_strategy == "top_p" ? std::max(o.k_max, o.k_min) : o.k_max);
  // Parameters per layer: attention 4 C^2 and two norms; router C E; experts 3 C H each.
  const double dense = V * C * 2 + C + L * (4 * C * C + 2 * C + C * E);
  const double expert_full = L * E * 3 * C * H;
  const double expert_local = L * E_local * 3 * C * H;
  MemoryEstimate m;
  m.params = 4.0 * (dense + expert_local);
  // --grad-accum A > 1: the micro-batch tree keeps up to ceil(log2 A) partial gradients
  // (parallel/grad_tree.h).
  m.grads = m.params * (1 + MicroBatchTree::copies(o.grad_accum));
  // --zero 1: a block of each region per rank of its data-parallel group (dense: every rank;
  // experts: the world / ep replicas of this rank's experts), rounded up.
  const double dp_dense = o.zero ? std::max(1, world) : 1, dp_expert = o.zero ? std::max(1, world / eps) : 1;
  m.moments = 8.0 * (std::ceil(dense / dp_dense) + std::ceil(expert_local / dp_expert));
  m.zero = o.zero;
  m.zero_ranks = std::max(1, world);
  m.recompute = recompute_layers;
  // Activations per layer and token: the dense path (norms, q/k/v before and after RoPE,
  // attention output, projection, residuals) about 14 C, the router 3 E, the routed rows
  // K (3 C + 3 H) (gathered input, w1/w3 output, SwiGLU, output). Each is stored in f32, or in
  // bf16 under --precision bf16, and has an f32 gradient. The attention probabilities (B,NH,T,T)
  // stay f32 in every layer; backward needs one more such workspace at a time. The
  // expert-parallel dispatcher adds send and receive copies of the routed rows and their
  // gradients. bf16 storage also needs a scratch for one op's widened inputs and outputs.
  const bool bf16 = o.precision == "bf16";
  const double vb = bf16 ? 2.0 : 4.0;  // bytes of one stored activation value
  const double BT = B * T, att = 4.0 * B * NH * T * T;
  const double per_layer = BT * (14 * C + 3 * E + K * (3 * C + 3 * H)) * (vb + 4) + att +
                           (eps > 1 ? 2 * BT * K * C * (vb + 4) : 0);
  const double scratch = bf16 ? 8.0 * BT * std::max({V, 6 * C, K * (2 * H + C)}) : 0;
  // --recompute layer keeps the residual stream (the embedding output and each layer's output,
  // value and f32 gradient) and the activations of the one layer being recomputed; the peak
  // follows the most loaded layer rather than the mean, hence 1.5 (docs/design.md, "Activation
  // recompute": measured against the arena at L=8, f32, bf16 and ep 2). Otherwise every layer's
  // activations stay alive.
  const double layers =
      recompute_layers ? 1.5 * per_layer + (L + 1) * BT * C * (vb + 4) : L * per_layer;
  m.activations = 1.25 * (layers + att + scratch + BT * V * (vb + 8));
  if (rank0 && (eps > 1 || o.k_strategy == "top_p")) m.eval_copy = 4.0 * (dense + expert_full);
  m.data = 2.0 * double(tokens);
  return m;
}

namespace {

namespace fs = std::filesystem;

double read_number_file(const std::string& path) {
  std::ifstream in(path);
  std::string s;
  if (!(in >> s) || s == "max") return -1;
  try {
    return std::stod(s);
  } catch (...) {
    return -1;
  }
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// limit - usage of one cgroup directory, or -1 when it sets no limit (no file, "max", or v1's
// "unlimited" of about 2^63).
double headroom_of(const fs::path& dir, bool v2) {
  const double max = read_number_file((dir / (v2 ? "memory.max" : "memory.limit_in_bytes")).string());
  if (max <= 0 || max >= 1e18) return -1;
  const double cur = std::max(0.0, read_number_file((dir / (v2 ? "memory.current" : "memory.usage_in_bytes")).string()));
  return std::max(0.0, max - cur);
}

}  // namespace

double cgroup_headroom(const std::string& proc_cgroup, const std::string& root, std::string* where) {
  double best = -1;
  std::istringstream lines(proc_cgroup);
  std::string line;
  while (std::getline(lines, line)) {
    // "hierarchy-ID:controller-list:path"; the path may itself hold ':'.
    const size_t a = line.find(':'), b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    const std::string ctl = line.substr(a + 1, b - a - 1);
    std::string path = line.substr(b + 1);
    if (path.ends_with(" (deleted)")) path.resize(path.size() - 10);
    const bool v2 = line.compare(0, a, "0") == 0 && ctl.empty();
    bool memory = false;
    for (size_t p = 0; !v2 && p <= ctl.size();) {
      const size_t e = std::min(ctl.find(',', p), ctl.size());
      memory = memory || ctl.compare(p, e - p, "memory") == 0;
      p = e + 1;
    }
    if (!v2 && !memory) continue;
    const fs::path base = v2 ? fs::path(root) : fs::path(root) / "memory";
    // The process's own cgroup, then each ancestor up to the hierarchy's root: every level's limit
    // applies. A level missing under root (a container that sees only its own subtree) is skipped.
    fs::path rel = fs::path(path).relative_path();
    while (true) {
      const fs::path dir = rel.empty() ? base : base / rel;
      const double h = headroom_of(dir, v2);
      if (h >= 0 && (best < 0 || h < best)) {
        best = h;
        if (where) *where = (dir / (v2 ? "memory.max" : "memory.limit_in_bytes")).string();
      }
      if (rel.empty()) break;
      rel = rel.parent_path();
    }
  }
  return best;
}

double available_memory(std::string* source) {
  if (const char* lim = std::getenv("ANYK_MEMORY_LIMIT")) {
    if (source) *source = "ANYK_MEMORY_LIMIT";
    return std::atof(lim);
  }
  double avail = -1;
  {
    std::ifstream in("/proc/meminfo");
    std::string key;
    double kb = 0;
    std::string unit;
    while (in >> key >> kb) {
      std::getline(in, unit);
      if (key == "MemAvailable:") {
        avail = kb * 1024.0;
        break;
      }
    }
  }
  if (source) *source = "MemAvailable";
  // This process's own cgroup and its ancestors (a job-level limit in a nested cgroup).
  std::string where;
  const double cg = cgroup_headroom(read_text("/proc/self/cgroup"), "/sys/fs/cgroup", &where);
  if (cg >= 0 && (avail < 0 || cg < avail)) {
    avail = cg;
    if (source) *source = "the cgroup memory limit (" + where + ")";
  }
  return avail;
}

}  // namespace anyk::launch
