// The shared plan builder; see dispatch_plan.h.
#include "parallel/dispatch_plan.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "runtime/device.h"

namespace anyk {

Tensor arena_i32(Arena& a, int64_t n) {
  Tensor t;
  t.data = a.alloc_n<int32_t>(size_t(std::max<int64_t>(n, 1)));
  t.shape = {n};
  t.dtype = DType::I32;
  return t;
}

int sort_assignments(const int* ids, int N, int K, int E, int* send_tok, int* send_slot, int* counts,
                     int* next) {
  std::fill(counts, counts + E, 0);
  int64_t NK = int64_t(N) * K;
  for (int64_t i = 0; i < NK; ++i) {
    int e = ids[i];
    if (e < 0) continue;
    ANYK_CHECK(e < E, "router chose expert " << e << " but there are only " << E);
    ++counts[e];
  }
  // Exclusive prefix sums give each expert's first row; then place assignments in order.
  int run = 0;
  for (int e = 0; e < E; ++e) {
    next[e] = run;
    run += counts[e];
  }
  for (int64_t i = 0; i < NK; ++i) {
    int e = ids[i];
    if (e < 0) continue;
    int r = next[e]++;
    send_tok[r] = int(i / K);
    send_slot[r] = int(i);
  }
  return run;
}

namespace {
// offsets (n+1) = exclusive prefix sums of counts (n).
void prefix(const int* counts, int n, int* offsets) {
  offsets[0] = 0;
  for (int i = 0; i < n; ++i) offsets[i + 1] = offsets[i] + counts[i];
}
}  // namespace

Tensor plan_local(Arena& a, const Tensor& ids, int E, int P, DispatchPlan& plan) {
  ANYK_CHECK(ids.dtype == DType::I32 && ids.device == Device::CPU && ids.shape.ndim == 2,
             "dispatcher: routing ids must be an i32 (N,K) tensor in host memory, got "
                 << dtype_name(ids.dtype) << " " << ids.shape.str() << " on " << device_name(ids.device));
  const int N = int(ids.shape[0]), K = int(ids.shape[1]);
  Tensor tok = arena_i32(a, int64_t(N) * K), slot = arena_i32(a, int64_t(N) * K);
  Tensor counts = arena_i32(a, E), next = arena_i32(a, E);
  const int sent = sort_assignments(ids.ptr<int32_t>(), N, K, E, tok.ptr<int32_t>(), slot.ptr<int32_t>(),
                                    counts.ptr<int32_t>(), next.ptr<int32_t>());
  plan = DispatchPlan{};
  plan.N = N;
  plan.K = K;
  plan.sent = sent;
  tok.shape = {sent};  // the first `sent` of N*K slots are used
  slot.shape = {sent};
  plan.send_tok = tok;
  plan.send_slot = slot;
  plan.expert_counts = counts;
  if (P == 1) {  // every expert is local: send order is expert order
    plan.rows = sent;
    plan.counts = counts;
    plan.offsets = arena_i32(a, E + 1);
    prefix(counts.ptr<int32_t>(), E, plan.offsets.ptr<int32_t>());
  }
  return counts;
}

void plan_receive(Arena& a, const Tensor& expert_counts, const Tensor& recv, int P, DispatchPlan& plan) {
  const int E = int(expert_counts.numel()), El = E / P;
  const int* counts = expert_counts.ptr<int32_t>();
  const int* rv = recv.ptr<int32_t>();  // rv[s*El + e]: rows source s sends to local expert e
  // Experts [r*El, (r+1)*El) live on rank r, so the sort by expert is also a sort by destination.
  plan.send_counts = arena_i32(a, P);
  plan.recv_counts = arena_i32(a, P);
  int* sc = plan.send_counts.ptr<int32_t>();
  int* rc = plan.recv_counts.ptr<int32_t>();
  Tensor src_off_t = arena_i32(a, P + 1);
  int* src_off = src_off_t.ptr<int32_t>();
  for (int r = 0; r < P; ++r) {
    sc[r] = rc[r] = 0;
    for (int e = 0; e < El; ++e) {
      sc[r] += counts[r * El + e];
      rc[r] += rv[r * El + e];
    }
  }
  prefix(rc, P, src_off);
  const int rows = src_off[P];
  plan.rows = rows;
  plan.counts = arena_i32(a, El);
  plan.offsets = arena_i32(a, El + 1);
  int* lc = plan.counts.ptr<int32_t>();
  for (int e = 0; e < El; ++e) {
    lc[e] = 0;
    for (int s = 0; s < P; ++s) lc[e] += rv[s * El + e];
  }
  prefix(lc, El, plan.offsets.ptr<int32_t>());
  // The received buffer is source-major (and expert-major within a source); the experts want
  // expert-major. regroup[j] = source-major position of expert-major row j.
  plan.regroup = arena_i32(a, rows);
  plan.inverse = arena_i32(a, rows);
  int* regroup = plan.regroup.ptr<int32_t>();
  int* inverse = plan.inverse.ptr<int32_t>();
  plan.segments = arena_i32(a, int64_t(El) * P + 1);
  int* seg = plan.segments.ptr<int32_t>();
  int j = 0;
  for (int e = 0; e < El; ++e)
    for (int s = 0; s < P; ++s) {
      seg[e * P + s] = j;
      int p0 = src_off[s];
      for (int e2 = 0; e2 < e; ++e2) p0 += rv[s * El + e2];
      for (int i = 0; i < rv[s * El + e]; ++i, ++j) {
        regroup[j] = p0 + i;
        inverse[p0 + i] = j;
      }
    }
  seg[El * P] = j;
}

namespace {
// Fills pack (n) and its inverse unpack (n) from blocks listed in output order: block b starts
// at src[b] in the input and holds len[b] rows.
void pack_blocks(const std::vector<int>& src, const std::vector<int>& len, int* pack, int* unpack) {
  int pos = 0;
  for (size_t b = 0; b < src.size(); ++b)
    for (int i = 0; i < len[b]; ++i, ++pos) {
      pack[pos] = src[b] + i;
      unpack[src[b] + i] = pos;
    }
}
}  // namespace

void plan_hier(Arena& a, const Tensor& mid, int G, int M, DispatchPlan& plan) {
  const int P = G * M, El = int(mid.numel()) / P;
  const int* sc = plan.send_counts.ptr<int32_t>();
  const int* rc = plan.recv_counts.ptr<int32_t>();
  const int* md = mid.ptr<int32_t>();
  HierPlan& h = plan.hier;
  h.node_send = arena_i32(a, G);
  h.node_recv = arena_i32(a, G);
  h.cross_send = arena_i32(a, M);
  h.cross_recv = arena_i32(a, M);
  int *ns = h.node_send.ptr<int32_t>(), *nr = h.node_recv.ptr<int32_t>();
  int *cs = h.cross_send.ptr<int32_t>(), *cr = h.cross_recv.ptr<int32_t>();
  // Phase 1: to node rank l go the rows for local index l of every node m (destination m*G + l).
  std::vector<int> soff(P + 1), src, len;
  prefix(sc, P, soff.data());
  for (int l = 0; l < G; ++l) {
    ns[l] = 0;
    for (int m = 0; m < M; ++m) {
      ns[l] += sc[m * G + l];
      src.push_back(soff[m * G + l]);
      len.push_back(sc[m * G + l]);
    }
  }
  h.pack1 = arena_i32(a, plan.sent);
  h.unpack1 = arena_i32(a, plan.sent);
  pack_blocks(src, len, h.pack1.ptr<int32_t>(), h.unpack1.ptr<int32_t>());
  // Phase 1 delivers, from each node rank g, blocks for nodes m = 0..M-1 (c1[g*M + m] rows).
  std::vector<int> c1(size_t(G) * M, 0), off1(size_t(G) * M + 1);
  for (int i = 0; i < G * M; ++i)
    for (int e = 0; e < El; ++e) c1[i] += md[i * El + e];
  prefix(c1.data(), G * M, off1.data());
  const int mid_rows = off1[G * M];
  // Phase 2: to node m goes, from every source g of this node, the rows for node m.
  src.clear();
  len.clear();
  std::fill(nr, nr + G, 0);
  for (int m = 0; m < M; ++m) {
    cs[m] = 0;
    for (int g = 0; g < G; ++g) {
      cs[m] += c1[g * M + m];
      nr[g] += c1[g * M + m];
      src.push_back(off1[g * M + m]);
      len.push_back(c1[g * M + m]);
    }
  }
  h.pack2 = arena_i32(a, mid_rows);
  h.unpack2 = arena_i32(a, mid_rows);
  pack_blocks(src, len, h.pack2.ptr<int32_t>(), h.unpack2.ptr<int32_t>());
  // Phase 2 delivers from node n the rows of its ranks n*G .. n*G+G-1, in rank order: the flat
  // receive order.
  for (int n = 0; n < M; ++n) {
    cr[n] = 0;
    for (int g = 0; g < G; ++g) cr[n] += rc[n * G + g];
  }
}

void upload_plan(Arena& dev_arena, DispatchPlan& plan) {
  if (dev_arena.device() == Device::CPU) return;
  HierPlan& h = plan.hier;
  Tensor* idx[] = {&plan.send_tok, &plan.send_slot, &plan.regroup, &plan.inverse,
                   &h.pack1,       &h.unpack1,      &h.pack2,      &h.unpack2};
  int64_t total = 0;
  for (Tensor* t : idx)
    if (t->defined()) {
      ANYK_CHECK(t->device == Device::CPU, "upload_plan: the plan is already on " << device_name(t->device));
      total += t->numel();
    }
  std::vector<int32_t> packed(size_t(total) + 1);  // + 1: an empty index still gets a valid address
  Tensor block = dev_arena.tensor({total + 1}, DType::I32);
  int64_t at = 0;
  for (Tensor* t : idx) {
    if (!t->defined()) continue;
    const int64_t n = t->numel();
    if (n) std::memcpy(packed.data() + at, t->ptr<int32_t>(), size_t(n) * sizeof(int32_t));
    t->data = block.dev_ptr<int32_t>() + at;
    t->device = block.device;
    at += n;
  }
  from_host(block, packed.data());
}

}  // namespace anyk
