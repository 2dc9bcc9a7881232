// Forward-backward-forward primal-dual iterations of the log model on an edge support (CPU).
//   min_{0 <= w <= max_w}  2 zᵀw − 1ᵀ log(K w) + ‖w‖² + c‖w − w0‖²,
//   K = "sum over incident edges" (edges -> degrees)
// (z already multiplied by θ; α = β = 1; the prior term and the cap as in GSPBox; c = 0 and
// max_w = inf give the plain model).
//
// Layout: the support as a symmetric CSR (`build_csr`): every undirected edge has a slot in
// the row of each endpoint, nodes renumbered breadth-first, neighbour ids int32, values
// float32/float64. Both slots of an
// edge compute bit-identical updates (v_i + v_j == v_j + v_i in IEEE arithmetic), so the
// two copies never drift apart, and every per-node sum (K w, K P) is a sequential row sum:
// no atomics, no incidence gathers. One iteration is two passes over the rows:
//   A: Y = w − τ(h2 w − 2c w0 + v_i + v_j), P = clip(Y − 2τz), then per node
//      y = v + σ_i Kw, p = (y − √(y² + 4σ_i)) / 2, v' = p + σ_i KP − σ_i Kw   (dual, stored aside)
//   B: w += P − τ(h2 P − 2c w0 + p_i + p_j) − Y     (Y recomputed from w and the old v)
// Diagonal preconditioning: primal step τ_g on every edge of graph g, dual step
// σ_i = s_g / deg_i at node i (deg_i = its CSR row length), (τ_g, s_g) from
// reference.graph_learning.graph_steps. Graphs of a batch (`gptr`: node ranges) are
// independent problems: each has its own steps and its own stopping test, exactly as if it
// were solved alone; a single graph runs its
// rows in parallel, a batch runs its graphs in parallel. Indices are validated by the custom
// op tgrep::graph_learning_fbf before this runs; `build_csr` bounds-checks them again.
// Twin: tgrep/kernels/reference/graph_learning.py (log_model).
#include <torch/extension.h>
#include <cmath>
#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

// CSR of the symmetric support, nodes renumbered in breadth-first order (neighbours get nearby
// ids, so the per-slot gathers v[j], p[j] hit the cache; BFS never leaves a connected component
// and starts from the smallest unvisited id, so the node ranges of a batch's graphs are kept):
// ptr [n+1] int64 and nbr [2E] int32 in the new numbering, eid [2E] (edge of each slot),
// first [E] (a slot of every edge; both slots of an edge hold the same value); eid and first
// are int32 when 2E < 2^31 (they are only gathered with), else int64. The scratch arrays are
// left uninitialised where every entry is written before it is read (at 1M nodes they are
// ~1 GB: fresh pages, each faulted in once).
// The slot offsets of the symmetric CSR of the edges (r[e], c[e]): ptr[v] = the number of edge
// ends at vertices below v (every id checked: 'fn: index out of range').
static std::vector<int64_t> end_offsets(const int64_t* r, const int64_t* c, int64_t E, int64_t n, const char* fn) {
  std::vector<int64_t> ptr(n + 1, 0);
  for (int64_t e = 0; e < E; ++e) {
    TORCH_CHECK(r[e] >= 0 && r[e] < n && c[e] >= 0 && c[e] < n, fn, ": index out of range");
    ++ptr[r[e] + 1];
    ++ptr[c[e] + 1];
  }
  for (int64_t i = 0; i < n; ++i) ptr[i + 1] += ptr[i];
  return ptr;
}

template <typename I>
static std::vector<torch::Tensor> build_csr_impl(const int64_t* r, const int64_t* c, int64_t E, int64_t n,
                                                 torch::ScalarType idt) {
  std::vector<int64_t> op = end_offsets(r, c, E, n, "build_csr");
  std::vector<int64_t> cur(op.begin(), op.end() - 1);
  std::unique_ptr<int32_t[]> onb(new int32_t[2 * E]);   // every slot written by the loop below
  std::unique_ptr<I[]> oei(new I[2 * E]);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t a = cur[r[e]]++, b = cur[c[e]]++;
    onb[a] = int32_t(c[e]);
    oei[a] = I(e);
    onb[b] = int32_t(r[e]);
    oei[b] = I(e);
  }
  // breadth-first order: perm[new] = old, inv[old] = new
  std::vector<int32_t> perm;
  perm.reserve(n);
  std::vector<int32_t> inv(n, -1);
  for (int64_t s = 0; s < n; ++s) {
    if (inv[s] >= 0) continue;
    size_t head = perm.size();
    inv[s] = int32_t(perm.size());
    perm.push_back(int32_t(s));
    while (head < perm.size()) {
      const int32_t u = perm[head++];
      for (int64_t a = op[u]; a < op[u + 1]; ++a) {
        const int32_t j = onb[a];
        if (inv[j] < 0) {
          inv[j] = int32_t(perm.size());
          perm.push_back(j);
        }
      }
    }
  }
  torch::Tensor ptr = torch::empty({n + 1}, torch::TensorOptions().dtype(torch::kInt64));
  torch::Tensor nbr = torch::empty({2 * E}, torch::TensorOptions().dtype(torch::kInt32));
  torch::Tensor eid = torch::empty({2 * E}, torch::TensorOptions().dtype(idt));
  torch::Tensor first = torch::empty({E}, torch::TensorOptions().dtype(idt));
  int64_t* pp = ptr.data_ptr<int64_t>();
  int32_t* nb = nbr.data_ptr<int32_t>();
  I* ei = eid.data_ptr<I>();
  I* fs = first.data_ptr<I>();
  int64_t k = 0;
  pp[0] = 0;
  for (int64_t u = 0; u < n; ++u) {
    const int32_t i = perm[u];
    for (int64_t a = op[i]; a < op[i + 1]; ++a, ++k) {
      nb[k] = inv[onb[a]];
      ei[k] = oei[a];
      fs[oei[a]] = I(k);
    }
    pp[u + 1] = k;
  }
  return {ptr, nbr, eid, first};
}

std::vector<torch::Tensor> build_csr(torch::Tensor row, torch::Tensor col, int64_t n) {
  TORCH_CHECK(row.is_contiguous() && col.is_contiguous() && row.scalar_type() == torch::kInt64 &&
              col.scalar_type() == torch::kInt64 && row.numel() == col.numel(), "build_csr: int64 row/col expected");
  TORCH_CHECK(n >= 0 && n < (int64_t(1) << 31), "build_csr: num_nodes must be < 2^31");
  const int64_t E = row.numel();
  const int64_t* r = row.data_ptr<int64_t>();
  const int64_t* c = col.data_ptr<int64_t>();
  if (2 * E < (int64_t(1) << 31)) return build_csr_impl<int32_t>(r, c, E, n, torch::kInt32);
  return build_csr_impl<int64_t>(r, c, E, n, torch::kInt64);
}

// Starting point of the solver on the CSR (twin: reference.graph_learning.warm_start): every
// node's closed-form solution of its own problem over its row (Theorem 2 / Algorithm 1 of
// Kalofolias & Perraudin 2019: w = max(0, λ_i − z), λ_i from the sorted distances), every
// slot the mean of its two endpoints' values (capped at max_w), and v_i = −1/(Kw)_i (0 at a
// node without edges). Returns {w [S], v [n]} in the dtype of z.
template <typename T>
static void warm_impl(const int64_t* ptr, const int32_t* nbr, const T* z, int64_t n, double max_w, T* w, T* v,
                      int64_t nt) {
  std::vector<double> lam(n, 0.0);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    std::vector<double> zs;
#pragma omp for schedule(dynamic, 256)
    for (int64_t i = 0; i < n; ++i) {
      const int64_t lo = ptr[i], D = ptr[i + 1] - lo;
      if (D == 0) continue;
      zs.assign(z + lo, z + lo + D);
      std::sort(zs.begin(), zs.end());
      double b = 0, last = 0;
      for (int64_t p = 0; p < D; ++p) {
        b += zs[p];
        const double k = double(p + 1);
        const double l = (b + std::sqrt(b * b + 4 * k)) / (2 * k);
        if (p > 0 && l <= zs[p]) break;   // Algorithm 1: the first rank where λ <= z ends the support
        last = l;
      }
      lam[i] = last;
    }
#pragma omp for schedule(dynamic, 256)
    for (int64_t i = 0; i < n; ++i) {
      double d = 0;
      for (int64_t a = ptr[i]; a < ptr[i + 1]; ++a) {
        const double za = double(z[a]);
        double wa = 0.5 * (std::max(0.0, lam[i] - za) + std::max(0.0, lam[nbr[a]] - za));
        if (wa > max_w) wa = max_w;
        w[a] = T(wa);
        d += wa;
      }
      v[i] = d > 0 ? T(-1.0 / d) : T(0);
    }
  }
}

std::vector<torch::Tensor> warm_start_csr(torch::Tensor ptr, torch::Tensor nbr, torch::Tensor z, double max_w,
                                          int64_t num_threads) {
  TORCH_CHECK(ptr.is_contiguous() && nbr.is_contiguous() && z.is_contiguous(), "warm_start_csr: contiguous inputs");
  TORCH_CHECK(ptr.scalar_type() == torch::kInt64 && nbr.scalar_type() == torch::kInt32, "warm_start_csr: index dtypes");
  TORCH_CHECK(num_threads >= 1, "num_threads must be >= 1");
  const int64_t n = ptr.numel() - 1, S = z.numel();
  TORCH_CHECK(n >= 0 && nbr.numel() == S, "warm_start_csr: inconsistent sizes");
  const int64_t* pp = ptr.data_ptr<int64_t>();
  const int32_t* nb = nbr.data_ptr<int32_t>();
  TORCH_CHECK(pp[0] == 0 && pp[n] == S, "warm_start_csr: bad ptr");
  for (int64_t i = 0; i < n; ++i) TORCH_CHECK(pp[i] <= pp[i + 1], "warm_start_csr: ptr not monotone");
  for (int64_t a = 0; a < S; ++a) TORCH_CHECK(nb[a] >= 0 && nb[a] < n, "warm_start_csr: neighbour out of range");
  torch::Tensor w = torch::empty_like(z), v = torch::empty({n}, z.options());
  if (z.scalar_type() == torch::kFloat64) {
    warm_impl<double>(pp, nb, z.data_ptr<double>(), n, max_w, w.data_ptr<double>(), v.data_ptr<double>(), num_threads);
  } else {
    TORCH_CHECK(z.scalar_type() == torch::kFloat32, "float32 or float64 expected");
    warm_impl<float>(pp, nb, z.data_ptr<float>(), n, max_w, w.data_ptr<float>(), v.data_ptr<float>(), num_threads);
  }
  return {w, v};
}

template <typename T>
struct Problem {
  const int64_t* ptr;
  const int32_t* nbr;
  const T* z;
  const T* w0;  // nullptr: no prior
  T* w;
  T* P;
  T* v;
  T* p;
  T* vn;
  T h2, c2, cap;
};

// one FBF iteration on the nodes [lo, hi) (a whole graph); returns the four squared norms
template <typename T>
static void iterate(const Problem<T>& q, int64_t lo, int64_t hi, T g, T s, bool par, int64_t nt, double* out) {
  double dn = 0, dd = 0, pn = 0, pd = 0;
  const int64_t* ptr = q.ptr;
  const int32_t* nbr = q.nbr;
#pragma omp parallel for schedule(static, 256) reduction(+ : dn, dd) num_threads(nt) if (par && nt > 1)
  for (int64_t i = lo; i < hi; ++i) {
    const T vi = q.v[i];
    T sw = 0, sp = 0;
    for (int64_t a = ptr[i]; a < ptr[i + 1]; ++a) {
      const T lin = q.w0 ? q.c2 * q.w0[a] : T(0);
      const T wa = q.w[a];
      const T y = wa - g * (q.h2 * wa - lin + (vi + q.v[nbr[a]]));
      const T pe = y - T(2) * g * q.z[a];
      const T Pa = pe > T(0) ? (pe < q.cap ? pe : q.cap) : T(0);
      q.P[a] = Pa;
      sw += wa;
      sp += Pa;
    }
    const int64_t deg = ptr[i + 1] - ptr[i];
    const T sg = s / T(deg > 0 ? deg : 1);
    const T y = vi + sg * sw;
    const T pi = (y - std::sqrt(y * y + T(4) * sg)) / T(2);
    q.p[i] = pi;
    const T dv = pi + sg * sp - y;
    dn += double(dv) * double(dv);
    dd += double(vi) * double(vi);
    q.vn[i] = vi + dv;
  }
#pragma omp parallel for schedule(static, 256) reduction(+ : pn, pd) num_threads(nt) if (par && nt > 1)
  for (int64_t i = lo; i < hi; ++i) {
    const T vi = q.v[i], pi = q.p[i];
    for (int64_t a = ptr[i]; a < ptr[i + 1]; ++a) {
      const int32_t j = nbr[a];
      const T lin = q.w0 ? q.c2 * q.w0[a] : T(0);
      const T wa = q.w[a], Pa = q.P[a];
      const T Y = wa - g * (q.h2 * wa - lin + (vi + q.v[j]));
      const T Q = Pa - g * (q.h2 * Pa - lin + (pi + q.p[j]));
      const T dw = Q - Y;
      pn += double(dw) * double(dw);
      pd += double(wa) * double(wa);
      q.w[a] = wa + dw;
    }
  }
  for (int64_t i = lo; i < hi; ++i) q.v[i] = q.vn[i];
  out[0] = pn;
  out[1] = pd;
  out[2] = dn;
  out[3] = dd;
}

// up to `steps` more iterations of every unfinished graph; state [G, 4] float64 per graph:
// iterations done, rel. primal change, rel. dual change, finished (0/1). Updated in place.
template <typename T>
static void fbf_impl(const torch::Tensor& ptr, const torch::Tensor& nbr, const torch::Tensor& z, torch::Tensor& w,
                     torch::Tensor& P, torch::Tensor& v, const torch::Tensor& w0, const torch::Tensor& gptr,
                     const torch::Tensor& gamma, torch::Tensor& state, double c_d, double max_w_d, int64_t steps,
                     double tol, int64_t nt) {
  const int64_t n = v.numel(), G = gptr.numel() - 1;
  std::vector<T> p(n), vn(n);
  const bool prior = w0.numel() == z.numel() && c_d > 0;
  Problem<T> q{ptr.data_ptr<int64_t>(), nbr.data_ptr<int32_t>(), z.data_ptr<T>(), prior ? w0.data_ptr<T>() : nullptr,
               w.data_ptr<T>(), P.data_ptr<T>(), v.data_ptr<T>(), p.data(), vn.data(),
               T(2) * T(1 + (prior ? c_d : 0.0)), T(2) * T(prior ? c_d : 0.0), T(max_w_d)};
  const int64_t* gp = gptr.data_ptr<int64_t>();
  const double* gam = gamma.data_ptr<double>();
  double* st = state.data_ptr<double>();
  const int64_t* pp = q.ptr;
  auto run = [&](int64_t gi, bool par) {
    double* s = st + 4 * gi;
    if (s[3] != 0) return;
    const int64_t lo = gp[gi], hi = gp[gi + 1];
    if (pp[hi] == pp[lo]) {  // no edge: nothing to learn
      s[1] = s[2] = 0;
      s[3] = 1;
      return;
    }
    const T g = T(gam[2 * gi]), sg = T(gam[2 * gi + 1]);
    double nrm[4];
    for (int64_t it = 0; it < steps; ++it) {
      iterate(q, lo, hi, g, sg, par, nt, nrm);
      s[0] += 1;
      s[1] = nrm[1] > 0 ? std::sqrt(nrm[0] / nrm[1]) : INFINITY;
      s[2] = nrm[3] > 0 ? std::sqrt(nrm[2] / nrm[3]) : INFINITY;
      if (s[1] < tol && s[2] < tol) {
        s[3] = 1;
        return;
      }
    }
  };
  if (G == 1) {
    run(0, true);
  } else {
#pragma omp parallel for schedule(dynamic, 4) num_threads(nt) if (nt > 1)
    for (int64_t gi = 0; gi < G; ++gi) run(gi, false);
  }
}

void fbf_csr_steps(torch::Tensor ptr, torch::Tensor nbr, torch::Tensor z, torch::Tensor w, torch::Tensor P,
                   torch::Tensor v, torch::Tensor w0, torch::Tensor gptr, torch::Tensor gamma, torch::Tensor state,
                   double c, double max_w, int64_t steps, double tol, int64_t num_threads) {
  for (const auto* t : {&ptr, &nbr, &z, &w, &P, &v, &w0, &gptr, &gamma, &state})
    TORCH_CHECK(t->is_contiguous(), "fbf_csr_steps: contiguous inputs expected");
  const int64_t S = z.numel(), n = v.numel(), G = gptr.numel() - 1;
  TORCH_CHECK(ptr.numel() == n + 1 && nbr.numel() == S && w.numel() == S && P.numel() == S &&
              (w0.numel() == 0 || w0.numel() == S) && G >= 1 && gamma.numel() == 2 * G && state.numel() == 4 * G,
              "fbf_csr_steps: inconsistent sizes");
  TORCH_CHECK(ptr.scalar_type() == torch::kInt64 && nbr.scalar_type() == torch::kInt32 &&
              gptr.scalar_type() == torch::kInt64 && gamma.scalar_type() == torch::kFloat64 &&
              state.scalar_type() == torch::kFloat64, "fbf_csr_steps: index/state dtypes");
  TORCH_CHECK(num_threads >= 1, "num_threads must be >= 1");
  const int64_t* pp = ptr.data_ptr<int64_t>();
  const int64_t* gp = gptr.data_ptr<int64_t>();
  TORCH_CHECK(pp[0] == 0 && pp[n] == S && gp[0] == 0 && gp[G] == n, "fbf_csr_steps: bad ptr/gptr");
  for (int64_t i = 0; i < n; ++i) TORCH_CHECK(pp[i] <= pp[i + 1], "fbf_csr_steps: ptr not monotone");
  for (int64_t g = 0; g < G; ++g) TORCH_CHECK(gp[g] <= gp[g + 1], "fbf_csr_steps: gptr not monotone");
  const int32_t* nb = nbr.data_ptr<int32_t>();
  bool ok = true;
  // every neighbour of a node of graph g lies in graph g (so parallel graphs never share data)
  for (int64_t g = 0; g < G && ok; ++g)
    for (int64_t a = pp[gp[g]]; a < pp[gp[g + 1]]; ++a)
      if (nb[a] < gp[g] || nb[a] >= gp[g + 1]) { ok = false; break; }
  TORCH_CHECK(ok, "fbf_csr_steps: an edge leaves its graph (or an index is out of range)");
  TORCH_CHECK(w0.numel() == 0 || w0.scalar_type() == z.scalar_type(), "w0 dtype mismatch");
  TORCH_CHECK(w.scalar_type() == z.scalar_type() && P.scalar_type() == z.scalar_type() &&
              v.scalar_type() == z.scalar_type(), "fbf_csr_steps: dtype mismatch");
  if (z.scalar_type() == torch::kFloat64) {
    fbf_impl<double>(ptr, nbr, z, w, P, v, w0, gptr, gamma, state, c, max_w, steps, tol, num_threads);
  } else {
    TORCH_CHECK(z.scalar_type() == torch::kFloat32, "float32 or float64 expected");
    fbf_impl<float>(ptr, nbr, z, w, P, v, w0, gptr, gamma, state, c, max_w, steps, tol, num_threads);
  }
}

// The undirected pairs of a list of (src, dst) entries, each once: key = min * n + max, sorted
// ascending, and inverse [E] (the pair of every entry) -- what torch.unique(key,
// return_inverse=True) gives (twin: reference.graph_learning.undirected_pairs), in O(E + n)
// plus one small sort per smaller endpoint (a counting sort by it first). Indices are checked.
std::vector<torch::Tensor> undirected_pairs(torch::Tensor src, torch::Tensor dst, int64_t n, int64_t nt) {
  TORCH_CHECK(src.is_contiguous() && dst.is_contiguous() && src.scalar_type() == torch::kInt64 &&
              dst.scalar_type() == torch::kInt64 && src.numel() == dst.numel(), "undirected_pairs: int64 src/dst");
  TORCH_CHECK(n >= 0 && n < (int64_t(1) << 31), "undirected_pairs: num_nodes must be < 2^31");
  TORCH_CHECK(nt >= 1, "num_threads must be >= 1");
  const int64_t E = src.numel();
  TORCH_CHECK(E < (int64_t(1) << 31), "undirected_pairs: fewer than 2^31 entries expected");
  const int64_t* s = src.data_ptr<int64_t>();
  const int64_t* d = dst.data_ptr<int64_t>();
  std::vector<int64_t> ptr(n + 1, 0);
  for (int64_t e = 0; e < E; ++e) {
    TORCH_CHECK(s[e] >= 0 && s[e] < n && d[e] >= 0 && d[e] < n, "undirected_pairs: index out of range");
    ++ptr[std::min(s[e], d[e]) + 1];
  }
  for (int64_t i = 0; i < n; ++i) ptr[i + 1] += ptr[i];
  std::vector<int64_t> cur(ptr.begin(), ptr.end() - 1);
  std::vector<std::pair<int32_t, int32_t>> slot(E);   // (larger endpoint, entry), bucketed by the smaller
  for (int64_t e = 0; e < E; ++e) {
    const int64_t a = std::min(s[e], d[e]), b = std::max(s[e], d[e]);
    slot[cur[a]++] = {int32_t(b), int32_t(e)};
  }
  std::vector<int64_t> uniq(n + 1, 0);   // distinct pairs per bucket, then their offsets
#pragma omp parallel for schedule(dynamic, 1024) num_threads(nt) if (nt > 1)
  for (int64_t a = 0; a < n; ++a) {
    std::sort(slot.begin() + ptr[a], slot.begin() + ptr[a + 1]);
    int64_t u = 0;
    for (int64_t t = ptr[a]; t < ptr[a + 1]; ++t) u += (t == ptr[a] || slot[t].first != slot[t - 1].first);
    uniq[a + 1] = u;
  }
  for (int64_t a = 0; a < n; ++a) uniq[a + 1] += uniq[a];
  auto opt = torch::TensorOptions().dtype(torch::kInt64);
  torch::Tensor key = torch::empty({uniq[n]}, opt);
  torch::Tensor inv = torch::empty({E}, opt);
  int64_t* kp = key.data_ptr<int64_t>();
  int64_t* ip = inv.data_ptr<int64_t>();
#pragma omp parallel for schedule(dynamic, 1024) num_threads(nt) if (nt > 1)
  for (int64_t a = 0; a < n; ++a) {
    int64_t u = uniq[a] - 1;
    for (int64_t t = ptr[a]; t < ptr[a + 1]; ++t) {
      if (t == ptr[a] || slot[t].first != slot[t - 1].first) kp[++u] = a * n + slot[t].first;
      ip[slot[t].second] = u;
    }
  }
  return {key, inv};
}

// Both directions of a list of edges (row_e, col_e), sorted by source then target (ties by
// edge): a counting sort by source, then one small sort per source. Returns edge_index [2, 2E]
// int64 and which [2E] int64 (the edge of every entry). Twin:
// reference.graph_learning.both_directions. Indices are checked.
std::vector<torch::Tensor> both_directions(torch::Tensor row, torch::Tensor col, int64_t n, int64_t nt) {
  TORCH_CHECK(row.is_contiguous() && col.is_contiguous() && row.scalar_type() == torch::kInt64 &&
              col.scalar_type() == torch::kInt64 && row.numel() == col.numel(), "both_directions: int64 row/col");
  TORCH_CHECK(n >= 0 && n < (int64_t(1) << 31), "both_directions: num_nodes must be < 2^31");
  TORCH_CHECK(nt >= 1, "num_threads must be >= 1");
  const int64_t E = row.numel(), S = 2 * E;
  TORCH_CHECK(E < (int64_t(1) << 31), "both_directions: fewer than 2^31 edges expected");
  const int64_t* r = row.data_ptr<int64_t>();
  const int64_t* c = col.data_ptr<int64_t>();
  std::vector<int64_t> ptr = end_offsets(r, c, E, n, "both_directions");
  std::vector<int64_t> cur(ptr.begin(), ptr.end() - 1);
  std::unique_ptr<std::pair<int32_t, int32_t>[]> slot(new std::pair<int32_t, int32_t>[S]);   // (target, edge)
  for (int64_t e = 0; e < E; ++e) {
    slot[cur[r[e]]++] = {int32_t(c[e]), int32_t(e)};
    slot[cur[c[e]]++] = {int32_t(r[e]), int32_t(e)};
  }
  torch::Tensor ei = torch::empty({2, S}, torch::TensorOptions().dtype(torch::kInt64));
  torch::Tensor which = torch::empty({S}, torch::TensorOptions().dtype(torch::kInt64));
  int64_t* sp = ei.data_ptr<int64_t>();
  int64_t* dp = sp + S;
  int64_t* wp = which.data_ptr<int64_t>();
#pragma omp parallel for schedule(dynamic, 1024) num_threads(nt) if (nt > 1)
  for (int64_t i = 0; i < n; ++i) {
    std::sort(slot.get() + ptr[i], slot.get() + ptr[i + 1]);
    for (int64_t a = ptr[i]; a < ptr[i + 1]; ++a) {
      sp[a] = i;
      dp[a] = slot[a].first;
      wp[a] = slot[a].second;
    }
  }
  return {ei, which};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("both_directions", &both_directions, "both directions of an edge list, sorted by source then target",
        py::call_guard<py::gil_scoped_release>());
  m.def("undirected_pairs", &undirected_pairs, "each undirected pair of an entry list once, sorted, and the inverse",
        py::call_guard<py::gil_scoped_release>());
  m.def("build_csr", &build_csr, "symmetric CSR of an undirected edge list (each edge once)",
        py::call_guard<py::gil_scoped_release>());
  m.def("warm_start_csr", &warm_start_csr, "starting point of the FBF solver (per-node closed forms) on the CSR",
        py::call_guard<py::gil_scoped_release>());
  m.def("fbf_csr_steps", &fbf_csr_steps, "FBF primal-dual iterations of the log graph-learning model (CSR)",
        py::call_guard<py::gil_scoped_release>());
}
