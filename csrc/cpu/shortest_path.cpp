// Batched (stochastic) single-source shortest paths on CPU: one Dijkstra per row, rows in
// parallel. The executable spec is tgrep/kernels/reference/shortest_path.py; this file
// reproduces it exactly (same float sums, same settled set, same predecessor edges: the heap
// orders by (distance, vertex) like the reference's heapq of tuples).
//
// * Queue, float32: a radix heap (Ahuja et al. 1990) on the packed (distance bits, vertex)
//   uint64 keys: a push is O(1) and a decrease is a push (the old entry goes stale: it no
//   longer equals the vertex's tentative distance, and is skipped when popped); pops move
//   entries to lower buckets, O(64) moves per entry at worst. It pops the exact minimum, so
//   the settle order is the reference's. float64: an indexed 4-ary min-heap with decrease-key.
// * Per-worker buffers are allocated once and never re-initialised in O(N) per row: heap
//   positions return to -1 as vertices are popped, buckets empty as they are drained,
//   tentative distances are reset through a touched list, target marks use generation stamps.
// * Without targets the output row itself is the distance array (it starts at inf).
// * Sampling: edge e is present in row r iff h * 2^-24 < p_e in p's own dtype, with
//   h = mix(e ^ mix(r ^ mix(seed ^ GOLDEN))) >> 8: the reference's u < p_e (u = h * 2^-24, a
//   multiple of 2^-24, exact in float32 and float64). The hash is only evaluated for edges
//   that would improve a distance: a sample that cannot change the result need not be drawn
//   (the result is the same function of the samples), so p is read only there.
// * Rows are handed out dynamically (an atomic counter) to the workers at::parallel_for
//   starts, so rows that exit early do not unbalance the threads; the result of a row does
//   not depend on which worker runs it.
#include <torch/extension.h>
#include "edge_sampling.h"
#include <ATen/Parallel.h>

#include <algorithm>
#include <functional>
#include <atomic>
#include <cstdint>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

namespace {

// The per-call O(E) pass (packing and checks) runs on one thread below this many edges: it
// takes ~1 ms per million edges, less than waking a thread team on a busy machine.
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

// Whether every probability of p[a, z) lies in [0, 1] (false for NaN); branch-free, it vectorises.
template <typename P>
bool probs_ok(const P* p, int64_t a, int64_t z) {
  int bad = 0;
  for (int64_t e = a; e < z; ++e) bad |= !((p[e] >= P(0)) & (p[e] <= P(1)));
  return !bad;
}

// Where a relaxation reads edge e's target and length. int64 'indices' are repacked once per
// call into one array of {target (int32), weight} records, so a relaxation streams a single
// record (8 bytes for float32) instead of 12; int32 'indices' are read in place with the
// weights (the same 8 bytes per edge, no copy to write). The edge probabilities stay in their
// own array: they are only read for the few edges that would improve a distance.
template <typename D>
struct EdgeW {
  int32_t v;
  D w;
};

// Prefetch the cache lines of the bytes [a, z).
inline void prefetch_range(const void* a, const void* z) {
  for (const char *x = static_cast<const char*>(a), *y = static_cast<const char*>(z); x < y; x += 64)
    __builtin_prefetch(x);
}

template <typename D>
struct PackedEdges {
  const EdgeW<D>* p;
  inline int32_t v(int64_t e) const { return p[e].v; }
  inline D w(int64_t e) const { return p[e].w; }
  inline void prefetch(int64_t a, int64_t z) const { prefetch_range(p + a, p + z); }
};

template <typename D>
struct SplitEdges {
  const int32_t* ix;
  const D* wt;
  inline int32_t v(int64_t e) const { return ix[e]; }
  inline D w(int64_t e) const { return wt[e]; }
  inline void prefetch(int64_t a, int64_t z) const {
    prefetch_range(ix + a, ix + z);
    prefetch_range(wt + a, wt + z);
  }
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
  inline void insert(D key, int32_t v) {  // v's distance became 'key' (smaller than before)
    if (st[v].pos < 0) push(key, v);
    else decrease(key, v);
  }
  inline bool empty() const { return size == 0; }
  inline Node<D> top() { return h[0]; }  // the next vertex to settle (not empty)
  inline Node<D> pop() {
    Node<D> top = h[0];
    st[top.v()].pos = -1;
    --size;
    if (size > 0) sift_down(0, h[size]);
    return top;
  }
  template <typename F>
  inline void drain(F&& unsettled) {  // the vertices left (reached, not settled); empties it
    for (int32_t i = 0; i < size; ++i) {
      st[h[i].v()].pos = -1;
      unsettled(h[i].v());
    }
    size = 0;
  }
};

// Radix heap over the packed float keys (Node<float>::k), lazy: 'st[v].d' is the vertex's
// current distance, an entry whose key differs from it is stale and skipped. Bucket 0 holds
// keys equal to 'last' (the last minimum), bucket i >= 1 keys whose highest bit differing
// from 'last' is bit i - 1. Dijkstra's keys never fall below the distance of the vertex being
// settled, but a zero-length edge can give (d, v) with v below the settled vertex: such keys
// (below 'last', equal distance) wait in 'low', a binary min-heap (O(log) per entry even when
// every edge has length 0), which pops first.
struct RadixHeap {
  std::vector<uint64_t>* b = nullptr;  // [65] buckets (a worker's, empty between rows)
  std::vector<uint64_t>* low = nullptr;
  const VState<float>* st = nullptr;
  uint64_t last = 0, mask = 0;  // mask bit i - 1: bucket i is non-empty

  static inline int bucket_of(uint64_t k, uint64_t last) { return k == last ? 0 : 64 - __builtin_clzll(k ^ last); }
  inline bool stale(uint64_t k) const {
    const Node<float> x{k};
    return x.key() != st[x.v()].d;
  }
  inline void insert(float key, int32_t v) {
    const uint64_t k = Node<float>::make(key, v).k;
    if (k < last) {
      low->push_back(k);
      std::push_heap(low->begin(), low->end(), std::greater<uint64_t>());
      return;
    }
    const int i = bucket_of(k, last);
    b[i].push_back(k);
    if (i) mask |= uint64_t(1) << (i - 1);
  }
  // Brings the minimum entry to the back of 'low' or into bucket 0; false when empty.
  inline bool settle_min() {
    for (;;) {
      if (!low->empty()) {
        if (!stale(low->front())) return true;
        pop_low();
        continue;
      }
      if (!b[0].empty()) {
        if (!stale(b[0].back())) return true;
        b[0].pop_back();
        continue;
      }
      if (mask == 0) return false;
      const int i = __builtin_ctzll(mask) + 1;
      auto& B = b[i];
      uint64_t m = ~uint64_t(0);
      for (uint64_t k : B) m = k < m ? k : m;  // the new minimum (entries here are >= last)
      last = m;
      for (uint64_t k : B) {
        if (stale(k)) continue;  // never live again: dropped now rather than moved
        const int j = bucket_of(k, m);  // < i: k and m agree above bit i - 1
        b[j].push_back(k);
        if (j) mask |= uint64_t(1) << (j - 1);
      }
      B.clear();
      mask &= ~(uint64_t(1) << (i - 1));
    }
  }
  inline void pop_low() {
    std::pop_heap(low->begin(), low->end(), std::greater<uint64_t>());
    low->pop_back();
  }
  inline bool empty() { return !settle_min(); }
  inline Node<float> top() { return Node<float>{low->empty() ? b[0].back() : low->front()}; }  // after empty()
  inline Node<float> pop() {  // after empty() returned false
    Node<float> x;
    if (low->empty()) {
      x.k = b[0].back();
      b[0].pop_back();
    } else {
      x.k = low->front();
      pop_low();
    }
    return x;
  }
  template <typename F>
  inline void drain(F&& unsettled) {  // calls 'unsettled' once per reached vertex not settled
    auto live = [&](uint64_t k) {
      if (!stale(k)) unsettled(Node<float>{k}.v());
    };
    for (uint64_t k : *low) live(k);
    low->clear();
    for (int i = 0; i <= 64; ++i) {
      for (uint64_t k : b[i]) live(k);
      b[i].clear();
    }
    last = mask = 0;
  }
};

// Relaxation pre-scan (float32, AVX2 where the CPU has it, chosen at run time): the offsets in
// [0, cnt) of the edges ed[i] whose du + w is below their target's current distance, in edge
// order, 8 edges per step (a gather of the targets' distances). Most scanned edges improve
// nothing; the few flagged ones are then relaxed one by one exactly as in the scalar loop. The
// flags are a superset of the improving edges (distances only fall while one vertex's edges are
// relaxed) and the same float sum and compare decide both, so the result is unchanged.
#if defined(__x86_64__) && defined(__GNUC__)
// 8 edges: flags (bit i: edge i) of du + w[i] < st[v[i]].d
__attribute__((target("avx2"))) inline unsigned flags8(__m256i vs, __m256 ws, __m256 vdu, const float* d0) {
  const __m256 dv = _mm256_i32gather_ps(d0, vs, 8);  // st[v].d (8-byte records)
  return static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_add_ps(vdu, ws), dv, _CMP_LT_OQ)));
}
__attribute__((target("avx2"))) int64_t scan_avx2(const PackedEdges<float>& E, int64_t a, int64_t cnt,
                                                  const VState<float>* st, float du, int32_t* out) {
  static_assert(sizeof(EdgeW<float>) == 8 && sizeof(VState<float>) == 8, "packed records");
  const EdgeW<float>* ed = E.p + a;
  int64_t m = 0, i = 0;
  const __m256 vdu = _mm256_set1_ps(du);
  for (; i + 8 <= cnt; i += 8) {
    const __m256 x = _mm256_loadu_ps(reinterpret_cast<const float*>(ed + i));      // v0 w0 .. v3 w3
    const __m256 y = _mm256_loadu_ps(reinterpret_cast<const float*>(ed + i + 4));  // v4 w4 .. v7 w7
    // (v0 v1 v4 v5 | v2 v3 v6 v7) -> edge order v0 .. v7, likewise w
    const __m256 vs = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(x, y, 0x88)), 0xD8));
    const __m256 ws = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(x, y, 0xDD)), 0xD8));
    for (unsigned f = flags8(_mm256_castps_si256(vs), ws, vdu, &st[0].d); f; f &= f - 1)
      out[m++] = static_cast<int32_t>(i + __builtin_ctz(f));
  }
  for (; i < cnt; ++i)
    if (du + ed[i].w < st[ed[i].v].d) out[m++] = static_cast<int32_t>(i);
  return m;
}
__attribute__((target("avx2"))) int64_t scan_avx2(const SplitEdges<float>& E, int64_t a, int64_t cnt,
                                                  const VState<float>* st, float du, int32_t* out) {
  const int32_t* ix = E.ix + a;
  const float* wt = E.wt + a;
  int64_t m = 0, i = 0;
  const __m256 vdu = _mm256_set1_ps(du);
  for (; i + 8 <= cnt; i += 8) {
    const __m256i vs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ix + i));
    for (unsigned f = flags8(vs, _mm256_loadu_ps(wt + i), vdu, &st[0].d); f; f &= f - 1)
      out[m++] = static_cast<int32_t>(i + __builtin_ctz(f));
  }
  for (; i < cnt; ++i)
    if (du + wt[i] < st[ix[i]].d) out[m++] = static_cast<int32_t>(i);
  return m;
}
bool simd_default() {
  static const bool yes = __builtin_cpu_supports("avx2");
  return yes;
}
#else
template <typename Edges>
int64_t scan_avx2(const Edges&, int64_t, int64_t, const VState<float>*, float, int32_t*) { return 0; }
bool simd_default() { return false; }
#endif
std::atomic<int> g_simd{-1};  // -1: the CPU decides; 0 / 1: set by set_simd (tests of both paths)
bool use_simd() {
  const int s = g_simd.load(std::memory_order_relaxed);
  return s < 0 ? simd_default() : (s == 1 && simd_default());
}

template <typename D, typename IP, typename Edge>
struct Problem {
  int64_t n, B, T;  // T < 0: no targets
  const IP* indptr;
  Edge edges;        // PackedEdges<D> or SplitEdges<D>
  const void* prob;  // PT[E]: keep edge e iff (hash >> 8) * 2^-24 < prob[e]; PT = void: every edge
  const int64_t* sources;
  const int64_t* targets;
  uint32_t seed_mix;
  D* out_dist;       // [B, N] or [B, T]
  int64_t* out_pred; // [B, N] (starts at -1) or nullptr
  bool simd;         // float32 relaxations pre-scanned with AVX2 (scan_avx2)
};

template <typename D>
struct Worker {
  std::vector<Node<D>> heap_store;
  std::vector<VState<D>> st;     // {inf, -1} everywhere between rows
  std::vector<uint32_t> tmark;   // generation stamps of the current row's targets
  std::vector<int32_t> touched;  // vertices whose distance left inf in the current row
  std::vector<uint64_t> buckets[65], low;  // the radix heap's (float32)
  uint32_t gen = 0;

  Worker(int64_t n, bool with_targets)
      : heap_store(std::max<int64_t>(n, 1)), st(n, VState<D>{std::numeric_limits<D>::infinity(), -1}) {
    if (with_targets) tmark.assign(n, 0);
    touched.reserve(std::min<int64_t>(n, 1 << 16));
  }
};

template <typename D, typename IP, typename Edge, typename PT>
void run_row(const Problem<D, IP, Edge>& P, Worker<D>& W, int64_t b) {
  const D inf = std::numeric_limits<D>::infinity();
  const int64_t n = P.n;
  const bool with_targets = P.T >= 0;
  const int64_t* tg = with_targets ? P.targets + b * P.T : nullptr;
  if (with_targets && P.T == 0) return;  // nothing asked: nothing searched

  D* out_full = with_targets ? nullptr : P.out_dist + b * n;  // starts at inf
  int64_t* pr = P.out_pred ? P.out_pred + b * n : nullptr;   // starts at -1
  VState<D>* __restrict__ st = W.st.data();
  std::conditional_t<std::is_same_v<D, float>, RadixHeap, Heap<D>> heap;
  if constexpr (std::is_same_v<D, float>) {
    heap.b = W.buckets;
    heap.low = &W.low;
  } else {
    heap.h = W.heap_store.data();
  }
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
  const bool simd = P.simd;
  const IP* __restrict__ ip = P.indptr;
  const Edge edges = P.edges;
  constexpr bool kSampled = !std::is_void_v<PT>;
  using PR = std::conditional_t<kSampled, PT, float>;
  const PR* __restrict__ prob = static_cast<const PR*>(P.prob);

  const int32_t s = static_cast<int32_t>(P.sources[b]);
  st[s].d = D(0);
  heap.insert(D(0), s);
  W.touched.push_back(s);
  D bound = inf;  // D_b once every target is settled

  while (!heap.empty()) {
    if (heap.top().key() > bound) break;  // early exit: everything with d <= D_b is settled
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
    if (!heap.empty()) {  // the next vertex to settle is probably the new top: fetch its edges now
      const int32_t nx = heap.top().v();
      edges.prefetch(ip[nx], ip[nx + 1]);
      // (no prefetch of the probabilities: only the few flagged edges read them)
    }
    auto relax = [&](int64_t e) {
      const int32_t v = edges.v(e);
      const D nd = du + edges.w(e);
      VState<D>& sv = st[v];
      if (!(nd < sv.d)) return;
      if constexpr (kSampled) {
        const uint32_t h = mix32(static_cast<uint32_t>(e) ^ rh) >> 8;
        if (!(static_cast<PR>(h) * PR(1.0 / 16777216.0) < prob[e])) return;  // exact: h < 2^24
      }
      if (sv.d == inf) W.touched.push_back(v);  // nd < sv.d: a settled vertex never gets here
      sv.d = nd;
      heap.insert(nd, v);
      if (pr) pr[v] = e;
    };
    const int64_t e0 = static_cast<int64_t>(ip[u]), e1 = static_cast<int64_t>(ip[u + 1]);
    if constexpr (std::is_same_v<D, float>) {
      if (simd && e1 - e0 >= 16) {
        int32_t flagged[256];
        for (int64_t a = e0; a < e1; a += 256) {
          const int64_t m = scan_avx2(edges, a, std::min<int64_t>(256, e1 - a), st, du, flagged);
          for (int64_t j = 0; j < m; ++j) relax(a + flagged[j]);
        }
        continue;
      }
    }
    for (int64_t e = e0; e < e1; ++e) relax(e);
  }
  // vertices left in the heap were reached but not settled: no distance, no predecessor
  heap.drain([&](int32_t v) {
    if (pr) pr[v] = -1;
  });
  if (with_targets) {
    D* out = P.out_dist + b * P.T;
    for (int64_t t = 0; t < P.T; ++t) out[t] = st[tg[t]].d;  // targets are settled or unreachable
  }
  for (int32_t v : W.touched) st[v].d = inf;
}

template <typename D, typename IP, typename Edge, typename PT>
void run_all(const Problem<D, IP, Edge>& P) {
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), P.B));
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      Worker<D> W(P.n, P.T >= 0);
      for (int64_t b = next.fetch_add(1); b < P.B; b = next.fetch_add(1)) run_row<D, IP, Edge, PT>(P, W, b);
    }
  });
}

template <typename D, typename IP, typename IX, typename PT>
int launch_edges(const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& weight,
                 const at::Tensor& prob, const at::Tensor& sources, const at::Tensor& targets, uint32_t seed_mix,
                 at::Tensor& dist, at::Tensor& pred, int64_t n, int64_t T) {
  constexpr bool kSampled = !std::is_void_v<PT>;
  constexpr bool kSplit = std::is_same_v<IX, int32_t>;  // read in place; int64: packed
  using PR = std::conditional_t<kSampled, PT, float>;
  using Edge = std::conditional_t<kSplit, SplitEdges<D>, PackedEdges<D>>;
  const int64_t E = indices.numel();
  std::unique_ptr<EdgeW<D>[]> packed(kSplit ? nullptr : new EdgeW<D>[std::max<int64_t>(E, 1)]);  // not zero-filled
  const IX* ix = indices.data_ptr<IX>();
  const D* wt = weight.data_ptr<D>();
  const PR* pp = kSampled ? prob.data_ptr<PR>() : nullptr;
  EdgeW<D>* pk = packed.get();
  // one pass: the bounds check of 'indices', the sign check of 'weight' (and the packing of
  // int64 indices), then the range check of 'edge_prob'; one flag per chunk, raised after the
  // parallel region. Each loop of its own vectorises.
  std::atomic<int> bad{kOk};
  const uint64_t un = static_cast<uint64_t>(n);
  at::parallel_for(0, E, kSerialEdges, [&](int64_t a, int64_t z) {
    int bad_ix = 0, bad_w = 0;
    if constexpr (kSplit) {
      for (int64_t e = a; e < z; ++e) bad_ix |= static_cast<uint32_t>(ix[e]) >= un;  // negative: huge
      for (int64_t e = a; e < z; ++e) bad_w |= !(wt[e] >= D(0));  // negative or NaN (+inf: an absent edge)
    } else {
      for (int64_t e = a; e < z; ++e) {
        const IX v = ix[e];
        const D w = wt[e];
        bad_ix |= static_cast<uint64_t>(static_cast<int64_t>(v)) >= un;
        bad_w |= !(w >= D(0));
        pk[e].v = static_cast<int32_t>(v);
        pk[e].w = w;
      }
    }
    bool bad_p = false;
    if constexpr (kSampled) bad_p = !probs_ok(pp, a, z);
    if (bad_ix) bad.store(kIndices, std::memory_order_relaxed);
    else if (bad_w) bad.store(kWeight, std::memory_order_relaxed);
    else if (bad_p) bad.store(kProb, std::memory_order_relaxed);
  });
  if (bad.load() != kOk) return bad.load();
  Problem<D, IP, Edge> P;
  P.n = n;
  P.B = sources.numel();
  P.T = T;
  P.indptr = indptr.data_ptr<IP>();
  if constexpr (kSplit) P.edges = Edge{ix, wt};
  else P.edges = Edge{pk};
  P.prob = pp;
  P.simd = use_simd();
  P.sources = sources.data_ptr<int64_t>();
  P.targets = targets.defined() ? targets.data_ptr<int64_t>() : nullptr;
  P.seed_mix = seed_mix;
  P.out_dist = dist.data_ptr<D>();
  P.out_pred = pred.defined() ? pred.data_ptr<int64_t>() : nullptr;
  run_all<D, IP, Edge, PT>(P);
  return kOk;
}

template <typename D, typename IP, typename IX>
int launch(const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& weight,
            const at::Tensor& prob, const at::Tensor& sources, const at::Tensor& targets, uint32_t seed_mix,
            at::Tensor& dist, at::Tensor& pred, int64_t n, int64_t T) {
  if (!prob.defined())
    return launch_edges<D, IP, IX, void>(indptr, indices, weight, prob, sources, targets, seed_mix, dist, pred, n, T);
  if (prob.scalar_type() == at::kDouble)
    return launch_edges<D, IP, IX, double>(indptr, indices, weight, prob, sources, targets, seed_mix, dist, pred, n, T);
  return launch_edges<D, IP, IX, float>(indptr, indices, weight, prob, sources, targets, seed_mix, dist, pred, n, T);
}

template <typename D, typename IP>
int dispatch_ix(const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& weight,
                 const at::Tensor& prob, const at::Tensor& sources, const at::Tensor& targets, uint32_t seed_mix,
                 at::Tensor& dist, at::Tensor& pred, int64_t n, int64_t T) {
  if (indices.scalar_type() == at::kInt)
    return launch<D, IP, int32_t>(indptr, indices, weight, prob, sources, targets, seed_mix, dist, pred, n, T);
  return launch<D, IP, int64_t>(indptr, indices, weight, prob, sources, targets, seed_mix, dist, pred, n, T);
}

template <typename D>
int dispatch_ip(const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& weight,
                 const at::Tensor& prob, const at::Tensor& sources, const at::Tensor& targets, uint32_t seed_mix,
                 at::Tensor& dist, at::Tensor& pred, int64_t n, int64_t T) {
  if (indptr.scalar_type() == at::kInt)
    return dispatch_ix<D, int32_t>(indptr, indices, weight, prob, sources, targets, seed_mix, dist, pred, n, T);
  return dispatch_ix<D, int64_t>(indptr, indices, weight, prob, sources, targets, seed_mix, dist, pred, n, T);
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
  at::Tensor prob;  // edge_prob, float32 or float64
  if (has_prob) {
    TORCH_CHECK_VALUE(edge_prob->numel() == E, "shortest_paths (C++): 'edge_prob' must have len(indices) = ", E,
                      " entries, got ", edge_prob->numel());
    // sampled in p's own dtype (other dtypes convert exactly to float32); the range check
    // runs in the packing pass
    prob = edge_prob->detach();
    if (prob.scalar_type() != at::kFloat && prob.scalar_type() != at::kDouble) prob = prob.to(at::kFloat);
    prob = prob.contiguous();
  }
  const auto fopts = weight.options();
  const double inf = std::numeric_limits<double>::infinity();
  at::Tensor dist = T >= 0 ? at::full({B, T}, inf, fopts) : at::full({B, n}, inf, fopts);
  at::Tensor pred;
  if (need_pred) pred = at::full({B, n}, -1, weight.options().dtype(at::kLong));
  const uint32_t seed_mix = tgrep::seed_key(seed);
  int err = kOk;
  if (has_prob && (B == 0 || n == 0)) {  // no search, so no packing pass: check the range here
    AT_DISPATCH_FLOATING_TYPES(prob.scalar_type(), "edge_prob_range", [&] {
      if (!probs_ok(prob.data_ptr<scalar_t>(), 0, E)) err = kProb;
    });
  }
  if (B > 0 && n > 0) {
    pybind11::gil_scoped_release no_gil;
    if (weight.scalar_type() == at::kFloat)
      err = dispatch_ip<float>(indptr, indices, weight, prob, sources, tg, seed_mix, dist, pred, n, T);
    else
      err = dispatch_ip<double>(indptr, indices, weight, prob, sources, tg, seed_mix, dist, pred, n, T);
  }
  TORCH_CHECK_VALUE(err == kOk, err_message(err));
  c10::optional<at::Tensor> pred_out;
  if (need_pred) pred_out = pred;
  return std::make_tuple(dist, pred_out);
}

// Tests: run the portable relaxation loop (false) or the AVX2 pre-scan where the CPU has it
// (true, the default); returns whether the pre-scan is now in use.
bool set_simd(bool on) {
  g_simd.store(on ? 1 : 0);
  return use_simd();
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("set_simd", &set_simd, "Use the AVX2 relaxation pre-scan where the CPU has it (tests)", pybind11::arg("on"));
  m.def("shortest_paths", &shortest_paths,
        "Batched (stochastic) Dijkstra, one row per source, rows in parallel (see tgrep.ops.shortest_paths)",
        pybind11::arg("indptr"), pybind11::arg("indices"), pybind11::arg("weight"), pybind11::arg("sources"),
        pybind11::arg("targets"), pybind11::arg("edge_prob"), pybind11::arg("seed"), pybind11::arg("need_pred"));
}
