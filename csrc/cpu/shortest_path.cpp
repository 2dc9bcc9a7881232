// Batched (stochastic) single-source shortest paths on CPU: one Dijkstra per row, rows in
// parallel. The executable spec is tgrep/kernels/reference/shortest_path.py; this file
// reproduces it exactly (same float sums, same settled set, same predecessor edges: the heap
// orders by (distance, vertex) like the reference's heapq of tuples).
//
// * Heap: indexed 4-ary min-heap with decrease-key (at most N entries, no stale entries).
// * Per-worker buffers are allocated once and never re-initialised in O(N) per row: the heap
//   positions return to -1 as vertices are popped, tentative distances are reset through a
//   touched list, target marks use generation stamps.
// * Without targets the output row itself is the distance array (it starts at inf).
// * Sampling: edge e is present in row r iff (mix(e ^ mix(r ^ mix(seed ^ GOLDEN))) >> 8) <
//   ceil(p_e * 2^24), which equals the reference's u < p_e (u a multiple of 2^-24). The
//   hash is only evaluated for edges that would improve a distance: a sample that cannot
//   change the result need not be drawn (the result is the same function of the samples).
// * Rows are handed out dynamically (an atomic counter) to the workers at::parallel_for
//   starts, so rows that exit early do not unbalance the threads; the result of a row does
//   not depend on which worker runs it.
#include <torch/extension.h>
#include "edge_sampling.h"
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace {

// Per-call O(E) passes (packing, thresholds) run on one thread below this many edges: they
// take ~1 ms per million edges, less than waking a thread team on a busy machine.
constexpr int64_t kSerialEdges = int64_t(1) << 22;

using tgrep::mix32;

// Memory safety: whatever reaches this file (the op validates first, but the extension can be
// called directly), no read or write leaves its buffer. Every index the search dereferences is
// checked once per call by an O(N + E + B*T) pass: 'indptr' (starts at 0, non-decreasing, ends
// at E), 'indices' (in the packing pass), 'sources', 'targets'; the search loop itself then
// needs no checks. Errors are codes set inside the parallel regions and raised after them.
enum Err : int { kOk = 0, kIndptr, kIndices, kWeight, kSources, kTargets, kProb };

const char* err_message(int err) {
  switch (err) {
    case kIndptr: return "shortest_paths (C++): 'indptr' must start at 0, be non-decreasing and end at len(indices)";
    case kIndices: return "shortest_paths (C++): 'indices' has entries outside [0, N)";
    case kWeight: return "shortest_paths (C++): 'weight' must be >= 0 (no NaN)";
    case kSources: return "shortest_paths (C++): 'sources' has entries outside [0, N)";
    case kTargets: return "shortest_paths (C++): 'targets' has entries outside [0, N)";
    case kProb: return "shortest_paths (C++): 'edge_prob' must lie in [0, 1] (and not be NaN)";
    default: return "shortest_paths (C++): invalid input";
  }
}

template <typename IP>
bool indptr_ok(const at::Tensor& indptr, int64_t E) {
  const IP* ip = indptr.data_ptr<IP>();
  const int64_t n = indptr.numel() - 1;
  if (static_cast<int64_t>(ip[0]) != 0 || static_cast<int64_t>(ip[n]) != E) return false;
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) ok &= ip[i] <= ip[i + 1];
  return ok;
}

bool all_in_range(const at::Tensor& idx, int64_t n) {  // idx: contiguous int64
  const int64_t* p = idx.data_ptr<int64_t>();
  const uint64_t un = static_cast<uint64_t>(n);
  bool ok = true;
  for (int64_t i = 0, m = idx.numel(); i < m; ++i) ok &= static_cast<uint64_t>(p[i]) < un;
  return ok;
}

// Edges are repacked once per call into one array of {target, weight} so a relaxation streams
// a single record (8 bytes for float32). The sampling thresholds stay in their own array:
// they are only read for the few edges that would improve a distance.
template <typename D>
struct EdgeW {
  int32_t v;
  D w;
};

// Heap entries ordered by (distance, vertex), like the reference's heapq of tuples. For
// float32 both fit one uint64 (non-negative floats order like their bit patterns), so a
// comparison is one integer compare.
template <typename D>
struct Node;

template <>
struct Node<float> {
  uint64_t k;
  static inline Node make(float key, int32_t v) {
    uint32_t b;
    std::memcpy(&b, &key, 4);
    return Node{(static_cast<uint64_t>(b) << 32) | static_cast<uint32_t>(v)};
  }
  inline float key() const {
    uint32_t b = static_cast<uint32_t>(k >> 32);
    float f;
    std::memcpy(&f, &b, 4);
    return f;
  }
  inline int32_t v() const { return static_cast<int32_t>(static_cast<uint32_t>(k)); }
  inline bool operator<(const Node& o) const { return k < o.k; }
};

template <>
struct Node<double> {
  double key_;
  int32_t v_;
  static inline Node make(double key, int32_t v) { return Node{key, v}; }
  inline double key() const { return key_; }
  inline int32_t v() const { return v_; }
  inline bool operator<(const Node& o) const { return key_ < o.key_ || (key_ == o.key_ && v_ < o.v_); }
};

// Per-vertex search state of a worker: tentative distance and heap slot, side by side so a
// successful relaxation touches one cache line. Between rows: d = inf, pos = -1 everywhere.
template <typename D>
struct VState {
  D d;
  int32_t pos;
};

// Indexed 4-ary min-heap over (key, vertex); st[v].pos = slot of v, -1 when not in the heap.
template <typename D>
struct Heap {
  Node<D>* h = nullptr;
  VState<D>* st = nullptr;
  int32_t size = 0;

  inline void sift_up(int32_t i, Node<D> x) {
    while (i > 0) {
      int32_t p = (i - 1) >> 2;
      if (!(x < h[p])) break;
      h[i] = h[p];
      st[h[i].v()].pos = i;
      i = p;
    }
    h[i] = x;
    st[x.v()].pos = i;
  }
  inline void sift_down(int32_t i, Node<D> x) {
    for (;;) {
      int32_t c = 4 * i + 1;
      if (c >= size) break;
      int32_t best;
      if (c + 3 < size) {  // all four children: branch-free tournament
        const int32_t b01 = h[c + 1] < h[c] ? c + 1 : c;
        const int32_t b23 = h[c + 3] < h[c + 2] ? c + 3 : c + 2;
        best = h[b23] < h[b01] ? b23 : b01;
      } else {
        best = c;
        for (int32_t j = c + 1; j < size; ++j)
          if (h[j] < h[best]) best = j;
      }
      if (!(h[best] < x)) break;
      h[i] = h[best];
      st[h[i].v()].pos = i;
      i = best;
    }
    h[i] = x;
    st[x.v()].pos = i;
  }
  inline void push(D key, int32_t v) { sift_up(size++, Node<D>::make(key, v)); }
  inline void decrease(D key, int32_t v) { sift_up(st[v].pos, Node<D>::make(key, v)); }
  inline Node<D> pop() {
    Node<D> top = h[0];
    st[top.v()].pos = -1;
    --size;
    if (size > 0) sift_down(0, h[size]);
    return top;
  }
};

template <typename D, typename IP, typename Edge>
struct Problem {
  int64_t n, B, T;  // T < 0: no targets
  const IP* indptr;
  const Edge* edges;
  const int32_t* thr;  // keep edge e iff (hash >> 8) < thr[e]; nullptr: every edge present
  const int64_t* sources;
  const int64_t* targets;
  uint32_t seed_mix;
  D* out_dist;       // [B, N] or [B, T]
  int64_t* out_pred; // [B, N] (starts at -1) or nullptr
};

template <typename D>
struct Worker {
  std::vector<Node<D>> heap_store;
  std::vector<VState<D>> st;     // {inf, -1} everywhere between rows
  std::vector<uint32_t> tmark;   // generation stamps of the current row's targets
  std::vector<int32_t> touched;  // vertices whose distance left inf in the current row
  uint32_t gen = 0;

  Worker(int64_t n, bool with_targets)
      : heap_store(std::max<int64_t>(n, 1)), st(n, VState<D>{std::numeric_limits<D>::infinity(), -1}) {
    if (with_targets) tmark.assign(n, 0);
    touched.reserve(std::min<int64_t>(n, 1 << 16));
  }
};

template <typename D, typename IP, typename Edge, bool kProb>
void run_row(const Problem<D, IP, Edge>& P, Worker<D>& W, int64_t b) {
  const D inf = std::numeric_limits<D>::infinity();
  const int64_t n = P.n;
  const bool with_targets = P.T >= 0;
  const int64_t* tg = with_targets ? P.targets + b * P.T : nullptr;
  if (with_targets && P.T == 0) return;  // nothing asked: nothing searched

  D* out_full = with_targets ? nullptr : P.out_dist + b * n;  // starts at inf
  int64_t* pr = P.out_pred ? P.out_pred + b * n : nullptr;   // starts at -1
  VState<D>* __restrict__ st = W.st.data();
  Heap<D> heap;
  heap.h = W.heap_store.data();
  heap.st = st;

  int64_t remaining = 0;
  uint32_t gen = 0;
  if (with_targets) {
    if (++W.gen == 0) {  // stamps wrapped around: clear them once
      std::fill(W.tmark.begin(), W.tmark.end(), 0u);
      W.gen = 1;
    }
    gen = W.gen;
    for (int64_t t = 0; t < P.T; ++t) {
      int64_t v = tg[t];
      if (W.tmark[v] != gen) {
        W.tmark[v] = gen;
        ++remaining;
      }
    }
  }
  W.touched.clear();
  const uint32_t rh = mix32(static_cast<uint32_t>(b) ^ P.seed_mix);
  const IP* __restrict__ ip = P.indptr;
  const Edge* __restrict__ edges = P.edges;
  const int32_t* __restrict__ thr = P.thr;

  const int32_t s = static_cast<int32_t>(P.sources[b]);
  st[s].d = D(0);
  heap.push(D(0), s);
  W.touched.push_back(s);
  D bound = inf;  // D_b once every target is settled

  while (heap.size > 0) {
    if (heap.h[0].key() > bound) break;  // early exit: everything with d <= D_b is settled
    Node<D> top = heap.pop();
    const int32_t u = top.v();
    const D du = top.key();
    if (with_targets) {
      if (W.tmark[u] == gen) {
        W.tmark[u] = gen - 1;  // any value != gen
        if (--remaining == 0) bound = du;
      }
    } else {
      out_full[u] = du;
    }
    if (heap.size > 0) {  // the next vertex to settle is probably the new top: fetch its edges now
      const int32_t nx = heap.h[0].v();
      const char* a = reinterpret_cast<const char*>(edges + ip[nx]);
      const char* z = reinterpret_cast<const char*>(edges + ip[nx + 1]);
      for (; a < z; a += 64) __builtin_prefetch(a);
      if constexpr (kProb) {
        const char* ta = reinterpret_cast<const char*>(thr + ip[nx]);
        const char* tz = reinterpret_cast<const char*>(thr + ip[nx + 1]);
        for (; ta < tz; ta += 64) __builtin_prefetch(ta);
      }
    }
    const int64_t e1 = static_cast<int64_t>(ip[u + 1]);
    for (int64_t e = static_cast<int64_t>(ip[u]); e < e1; ++e) {
      const Edge ed = edges[e];
      const int32_t v = ed.v;
      const D nd = du + ed.w;
      VState<D>& sv = st[v];
      if (!(nd < sv.d)) continue;
      if constexpr (kProb) {
        if ((mix32(static_cast<uint32_t>(e) ^ rh) >> 8) >= static_cast<uint32_t>(thr[e])) continue;
      }
      sv.d = nd;
      if (sv.pos < 0) {
        W.touched.push_back(v);
        heap.push(nd, v);
      } else {
        heap.decrease(nd, v);
      }
      if (pr) pr[v] = e;
    }
  }
  // vertices left in the heap were reached but not settled: no distance, no predecessor
  for (int32_t i = 0; i < heap.size; ++i) {
    const int32_t v = heap.h[i].v();
    st[v].pos = -1;
    if (pr) pr[v] = -1;
  }
  heap.size = 0;
  if (with_targets) {
    D* out = P.out_dist + b * P.T;
    for (int64_t t = 0; t < P.T; ++t) out[t] = st[tg[t]].d;  // targets are settled or unreachable
  }
  for (int32_t v : W.touched) st[v].d = inf;
}

template <typename D, typename IP, typename Edge, bool kProb>
void run_all(const Problem<D, IP, Edge>& P) {
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), P.B));
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      Worker<D> W(P.n, P.T >= 0);
      for (int64_t b = next.fetch_add(1); b < P.B; b = next.fetch_add(1)) run_row<D, IP, Edge, kProb>(P, W, b);
    }
  });
}

template <typename D, typename IP, typename IX, bool kProb>
int launch_packed(const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& weight,
                   const at::Tensor& thr, const at::Tensor& sources, const at::Tensor& targets, uint32_t seed_mix,
                   at::Tensor& dist, at::Tensor& pred, int64_t n, int64_t T) {
  const int64_t E = indices.numel();
  using Edge = EdgeW<D>;
  std::vector<Edge> packed(E);
  const IX* ix = indices.data_ptr<IX>();
  const D* wt = weight.data_ptr<D>();
  Edge* pk = packed.data();
  // the packing pass doubles as the bounds check of 'indices' (and the sign check of
  // 'weight'): one flag per chunk, raised by the caller after the parallel region
  std::atomic<int> bad{kOk};
  const uint64_t un = static_cast<uint64_t>(n);
  at::parallel_for(0, E, kSerialEdges, [&](int64_t a, int64_t z) {
    bool bad_ix = false, bad_w = false;
    for (int64_t e = a; e < z; ++e) {
      const IX v = ix[e];
      const D w = wt[e];
      bad_ix |= static_cast<uint64_t>(static_cast<int64_t>(v)) >= un;
      bad_w |= !(w >= D(0));  // negative or NaN (+inf is allowed: an absent edge)
      pk[e].v = static_cast<int32_t>(v);
      pk[e].w = w;
    }
    if (bad_ix) bad.store(kIndices, std::memory_order_relaxed);
    else if (bad_w) bad.store(kWeight, std::memory_order_relaxed);
  });
  if (bad.load() != kOk) return bad.load();
  Problem<D, IP, Edge> P;
  P.n = n;
  P.B = sources.numel();
  P.T = T;
  P.indptr = indptr.data_ptr<IP>();
  P.edges = pk;
  P.thr = kProb ? thr.data_ptr<int32_t>() : nullptr;
  P.sources = sources.data_ptr<int64_t>();
  P.targets = targets.defined() ? targets.data_ptr<int64_t>() : nullptr;
  P.seed_mix = seed_mix;
  P.out_dist = dist.data_ptr<D>();
  P.out_pred = pred.defined() ? pred.data_ptr<int64_t>() : nullptr;
  run_all<D, IP, Edge, kProb>(P);
  return kOk;
}

template <typename D, typename IP, typename IX>
int launch(const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& weight,
            const at::Tensor& thr, const at::Tensor& sources, const at::Tensor& targets, uint32_t seed_mix,
            at::Tensor& dist, at::Tensor& pred, int64_t n, int64_t T) {
  if (thr.defined())
    return launch_packed<D, IP, IX, true>(indptr, indices, weight, thr, sources, targets, seed_mix, dist, pred, n, T);
  return launch_packed<D, IP, IX, false>(indptr, indices, weight, thr, sources, targets, seed_mix, dist, pred, n, T);
}

template <typename D, typename IP>
int dispatch_ix(const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& weight,
                 const at::Tensor& thr, const at::Tensor& sources, const at::Tensor& targets, uint32_t seed_mix,
                 at::Tensor& dist, at::Tensor& pred, int64_t n, int64_t T) {
  if (indices.scalar_type() == at::kInt)
    return launch<D, IP, int32_t>(indptr, indices, weight, thr, sources, targets, seed_mix, dist, pred, n, T);
  return launch<D, IP, int64_t>(indptr, indices, weight, thr, sources, targets, seed_mix, dist, pred, n, T);
}

template <typename D>
int dispatch_ip(const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& weight,
                 const at::Tensor& thr, const at::Tensor& sources, const at::Tensor& targets, uint32_t seed_mix,
                 at::Tensor& dist, at::Tensor& pred, int64_t n, int64_t T) {
  if (indptr.scalar_type() == at::kInt)
    return dispatch_ix<D, int32_t>(indptr, indices, weight, thr, sources, targets, seed_mix, dist, pred, n, T);
  return dispatch_ix<D, int64_t>(indptr, indices, weight, thr, sources, targets, seed_mix, dist, pred, n, T);
}

}  // namespace

// Same contract as tgrep.kernels.reference.shortest_path.shortest_paths (tgrep.ops.shortest_paths
// validates the inputs first; this function re-checks everything it dereferences, so a direct
// call with bad input raises ValueError instead of reading out of range): returns
// (dist [B, T] or [B, N], pred [B, N] int64 or None).
std::tuple<at::Tensor, c10::optional<at::Tensor>> shortest_paths(
    at::Tensor indptr, at::Tensor indices, at::Tensor weight, at::Tensor sources,
    c10::optional<at::Tensor> targets, c10::optional<at::Tensor> edge_prob, int64_t seed, bool need_pred) {
  const bool has_tg = targets.has_value() && targets->defined();
  const bool has_prob = edge_prob.has_value() && edge_prob->defined();
  for (const at::Tensor* t : {&indptr, &indices, &weight, &sources})
    TORCH_CHECK_VALUE(t->device().is_cpu() && t->layout() == at::kStrided,
                      "shortest_paths (C++): tensors must be dense and on the CPU");
  if (has_tg) TORCH_CHECK_VALUE(targets->device().is_cpu() && targets->layout() == at::kStrided,
                                "shortest_paths (C++): 'targets' must be dense and on the CPU");
  if (has_prob) TORCH_CHECK_VALUE(edge_prob->device().is_cpu() && edge_prob->layout() == at::kStrided,
                                  "shortest_paths (C++): 'edge_prob' must be dense and on the CPU");
  TORCH_CHECK_TYPE(weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kDouble,
                   "shortest_paths (C++): 'weight' must be float32 or float64");
  TORCH_CHECK_TYPE(indptr.scalar_type() == at::kInt || indptr.scalar_type() == at::kLong,
                   "shortest_paths (C++): 'indptr' must be int32 or int64");
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kInt || indices.scalar_type() == at::kLong,
                   "shortest_paths (C++): 'indices' must be int32 or int64");
  TORCH_CHECK_TYPE(!at::isFloatingType(sources.scalar_type()) && !at::isComplexType(sources.scalar_type()),
                   "shortest_paths (C++): 'sources' must be an integer tensor");
  TORCH_CHECK_VALUE(indptr.dim() == 1 && indptr.numel() >= 1, "shortest_paths (C++): 'indptr' must be [N + 1]");
  const int64_t n = indptr.numel() - 1;
  const int64_t E = indices.numel();
  TORCH_CHECK_VALUE(n < std::numeric_limits<int32_t>::max(), "shortest_paths (C++): N must be < 2^31 - 1");
  TORCH_CHECK_VALUE(E <= (int64_t(1) << 32), "shortest_paths (C++): at most 2^32 edges");
  TORCH_CHECK_VALUE(weight.numel() == E, "shortest_paths (C++): 'weight' must have len(indices) = ", E,
                    " entries, got ", weight.numel());
  indptr = indptr.contiguous();
  indices = indices.contiguous();
  weight = weight.detach().contiguous();
  sources = sources.to(at::kLong).contiguous();
  const int64_t B = sources.numel();
  const bool ip_ok = indptr.scalar_type() == at::kInt ? indptr_ok<int32_t>(indptr, E) : indptr_ok<int64_t>(indptr, E);
  TORCH_CHECK_VALUE(ip_ok, err_message(kIndptr));
  TORCH_CHECK_VALUE(all_in_range(sources, n), err_message(kSources));
  at::Tensor tg;
  int64_t T = -1;
  if (has_tg) {
    TORCH_CHECK_TYPE(!at::isFloatingType(targets->scalar_type()) && !at::isComplexType(targets->scalar_type()),
                     "shortest_paths (C++): 'targets' must be an integer tensor");
    tg = targets->to(at::kLong).contiguous();
    TORCH_CHECK_VALUE(tg.dim() == 2 && tg.size(0) == B, "shortest_paths (C++): 'targets' must be [B, T]");
    T = tg.size(1);
    TORCH_CHECK_VALUE(all_in_range(tg, n), err_message(kTargets));
  }
  at::Tensor thr;
  if (has_prob) {
    TORCH_CHECK_VALUE(edge_prob->numel() == E, "shortest_paths (C++): 'edge_prob' must have len(indices) = ", E,
                      " entries, got ", edge_prob->numel());
    // u < p  <=>  k < ceil(p * 2^24) for u = k * 2^-24 (exact in float64)
    at::Tensor p = edge_prob->detach();
    if (p.scalar_type() != at::kFloat && p.scalar_type() != at::kDouble) p = p.to(at::kFloat);  // exact
    p = p.contiguous();
    thr = at::empty({E}, p.options().dtype(at::kInt));
    int32_t* t = thr.data_ptr<int32_t>();
    std::atomic<bool> bad_p{false};
    // Branch-free so the loop vectorises (with -fno-trapping-math, tgrep/_ext.py): in p's own
    // type, c = p * 2^24 is exact (a power-of-two scaling of p in [0, 1]); ceil(c) = k + (k < c)
    // with k = trunc(c). NaN and out-of-range p are flagged (the call fails) and converted as 0,
    // so no float-to-int conversion ever sees a value out of range.
    AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "edge_thresholds", [&] {
      const scalar_t* pp = p.data_ptr<scalar_t>();
      at::parallel_for(0, E, kSerialEdges, [&](int64_t a, int64_t z) {
        int bad = 0;
        for (int64_t e = a; e < z; ++e) {
          const scalar_t q = pp[e];
          const int ok = (q >= scalar_t(0)) & (q <= scalar_t(1));  // false for NaN
          bad |= ok ^ 1;
          const scalar_t c = (ok ? q : scalar_t(0)) * scalar_t(16777216);
          const int32_t k = static_cast<int32_t>(c);
          t[e] = k + static_cast<int32_t>(static_cast<scalar_t>(k) < c);
        }
        if (bad) bad_p.store(true, std::memory_order_relaxed);
      });
    });
    TORCH_CHECK_VALUE(!bad_p.load(), err_message(kProb));
  }
  const auto fopts = weight.options();
  const double inf = std::numeric_limits<double>::infinity();
  at::Tensor dist = T >= 0 ? at::full({B, T}, inf, fopts) : at::full({B, n}, inf, fopts);
  at::Tensor pred;
  if (need_pred) pred = at::full({B, n}, -1, weight.options().dtype(at::kLong));
  const uint32_t seed_mix = tgrep::seed_key(seed);
  int err = kOk;
  if (B > 0 && n > 0) {
    pybind11::gil_scoped_release no_gil;
    if (weight.scalar_type() == at::kFloat)
      err = dispatch_ip<float>(indptr, indices, weight, thr, sources, tg, seed_mix, dist, pred, n, T);
    else
      err = dispatch_ip<double>(indptr, indices, weight, thr, sources, tg, seed_mix, dist, pred, n, T);
  }
  TORCH_CHECK_VALUE(err == kOk, err_message(err));
  c10::optional<at::Tensor> pred_out;
  if (need_pred) pred_out = pred;
  return std::make_tuple(dist, pred_out);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("shortest_paths", &shortest_paths,
        "Batched (stochastic) Dijkstra, one row per source, rows in parallel (see tgrep.ops.shortest_paths)",
        pybind11::arg("indptr"), pybind11::arg("indices"), pybind11::arg("weight"), pybind11::arg("sources"),
        pybind11::arg("targets"), pybind11::arg("edge_prob"), pybind11::arg("seed"), pybind11::arg("need_pred"));
}
