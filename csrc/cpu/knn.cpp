// Exact kNN selection for tgrep.ops.knn (CPU): given one block of dot products G = Q·Yᵀ,
// update per-query max-heaps of the k smallest squared distances ‖q‖² + ‖y‖² − 2 q·y.
// The matmul stays in torch (BLAS); this pass is a threshold test per entry (rarely taken),
// which replaces torch.topk + merge. Twin: tgrep/kernels/reference/knn.py::knn_blocked.
#include <torch/extension.h>
#include <algorithm>
#include <limits>
#include <vector>

template <typename T>
static inline void sift_down(T* d, int64_t* ix, int64_t k) {
  // restore the max-heap after replacing the root
  int64_t i = 0;
  while (true) {
    int64_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < k && d[l] > d[m]) m = l;
    if (r < k && d[r] > d[m]) m = r;
    if (m == i) return;
    std::swap(d[i], d[m]);
    std::swap(ix[i], ix[m]);
    i = m;
  }
}

// One block row against the heap (d, ix): a vectorisable pre-test per chunk of 16 entries
// (raw distance < heap max, the same expression as the exact test, so it never rejects an entry
// the exact test takes: the clamp at 0 only raises a distance), then the exact test.
template <typename T>
static inline __attribute__((always_inline)) void select_row(const T* gi, const T* ynp, T qi, T* d, int64_t* ix,
                                                             int64_t k, int64_t B, int64_t col0, int64_t self,
                                                             bool skip_self, const int64_t* byp, int64_t bqi) {
  constexpr int64_t W = 16;
  for (int64_t j0 = 0; j0 < B; j0 += W) {
    const int64_t j1 = std::min(B, j0 + W);
    const T top = d[0];
    int any = 0;
#pragma omp simd reduction(| : any)
    for (int64_t j = j0; j < j1; ++j) any |= int(qi + ynp[j] - T(2) * gi[j] < top);
    if (!any) continue;
    for (int64_t j = j0; j < j1; ++j) {
      T dist = qi + ynp[j] - T(2) * gi[j];
      if (dist < T(0)) dist = T(0);
      if (!(dist < d[0])) continue;
      const int64_t col = col0 + j;
      if (skip_self && col == self) continue;
      if (byp && byp[j] != bqi) continue;
      d[0] = dist;
      ix[0] = col;
      sift_down(d, ix, k);
    }
  }
}

template <typename T>
static inline __attribute__((always_inline)) void select_body(
    const T* g, const T* qnp, const T* ynp, T* bd, int64_t* bi, int64_t Q, int64_t B, int64_t k, int64_t col0,
    int64_t row0, bool skip_self, const int64_t* bqp, const int64_t* byp, const int64_t* rp, int64_t nt) {
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && rp == nullptr)  // heap rows may repeat
  for (int64_t i = 0; i < Q; ++i) {
    const int64_t h = rp ? rp[i] : i;   // heap row of block row i
    select_row<T>(g + i * B, ynp, qnp[i], bd + h * k, bi + h * k, k, B, col0, row0 + h, skip_self, byp,
                  bqp ? bqp[i] : 0);
  }
}

// the same code compiled twice: for AVX2 (chosen at run time where the CPU has it) and for the
// portable baseline. AVX2 without FMA, so no contraction changes a rounding.
#if defined(__x86_64__) && defined(__GNUC__)
#define TGREP_AVX2 __attribute__((target("avx2")))
template <typename T>
TGREP_AVX2 static void select_avx2(const T* g, const T* qnp, const T* ynp, T* bd, int64_t* bi, int64_t Q, int64_t B,
                                   int64_t k, int64_t col0, int64_t row0, bool skip_self, const int64_t* bqp,
                                   const int64_t* byp, const int64_t* rp, int64_t nt) {
  select_body<T>(g, qnp, ynp, bd, bi, Q, B, k, col0, row0, skip_self, bqp, byp, rp, nt);
}
static bool have_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2");
  return yes;
}
#endif

template <typename T>
static void select_impl(const torch::Tensor& G, const torch::Tensor& qn, const torch::Tensor& yn,
                        int64_t col0, int64_t row0, bool skip_self, const torch::Tensor& bq,
                        const torch::Tensor& by, const torch::Tensor& rows, torch::Tensor& best_d,
                        torch::Tensor& best_i, int64_t nt) {
  const int64_t Q = G.size(0), B = G.size(1), k = best_d.size(1);
  const bool use_batch = bq.numel() > 0;
  const int64_t* bqp = use_batch ? bq.data_ptr<int64_t>() : nullptr;
  const int64_t* byp = use_batch ? by.data_ptr<int64_t>() : nullptr;
  const int64_t* rp = rows.numel() > 0 ? rows.data_ptr<int64_t>() : nullptr;
#if defined(__x86_64__) && defined(__GNUC__)
  if (have_avx2()) {
    select_avx2<T>(G.data_ptr<T>(), qn.data_ptr<T>(), yn.data_ptr<T>(), best_d.data_ptr<T>(),
                   best_i.data_ptr<int64_t>(), Q, B, k, col0, row0, skip_self, bqp, byp, rp, nt);
    return;
  }
#endif
  select_body<T>(G.data_ptr<T>(), qn.data_ptr<T>(), yn.data_ptr<T>(), best_d.data_ptr<T>(),
                 best_i.data_ptr<int64_t>(), Q, B, k, col0, row0, skip_self, bqp, byp, rp, nt);
}

// best_d/best_i: max-heaps (initialised to +inf / -1), updated in place: [Q, k], row i of the
// block updating heap i; or, with `rows` ([Q] int64; then sequential), heap rows[i] of [R, k] heaps
// (gathered queries: the inverted-file search by list). Query ids are row0 + heap row.
void knn_select(torch::Tensor G, torch::Tensor qn, torch::Tensor yn, int64_t col0, int64_t row0,
                bool skip_self, torch::Tensor bq, torch::Tensor by, torch::Tensor rows, torch::Tensor best_d,
                torch::Tensor best_i, int64_t num_threads) {
  TORCH_CHECK(G.is_contiguous() && best_d.is_contiguous() && best_i.is_contiguous(), "contiguous inputs");
  TORCH_CHECK(G.scalar_type() == best_d.scalar_type() && qn.scalar_type() == G.scalar_type() &&
              yn.scalar_type() == G.scalar_type() && best_i.scalar_type() == torch::kInt64, "dtype mismatch");
  TORCH_CHECK(qn.is_contiguous() && yn.is_contiguous() && bq.is_contiguous() && by.is_contiguous(), "contiguous inputs");
  // every read and write stays inside the tensors passed, whatever they are
  TORCH_CHECK(G.dim() == 2 && best_d.dim() == 2 && best_i.sizes() == best_d.sizes() && best_d.size(1) >= 1 &&
              qn.numel() == G.size(0) && yn.numel() == G.size(1), "knn_select: inconsistent sizes");
  if (rows.numel() == 0) {
    TORCH_CHECK(best_d.size(0) == G.size(0), "knn_select: one heap per block row expected");
  } else {
    TORCH_CHECK(rows.is_contiguous() && rows.scalar_type() == torch::kInt64 && rows.numel() == G.size(0),
                "knn_select: 'rows' must be int64 with one entry per block row");
    const int64_t* rp = rows.data_ptr<int64_t>();
    for (int64_t i = 0; i < rows.numel(); ++i)
      TORCH_CHECK(rp[i] >= 0 && rp[i] < best_d.size(0), "knn_select: heap row out of range");
  }
  TORCH_CHECK(bq.numel() == 0 || (bq.scalar_type() == torch::kInt64 && by.scalar_type() == torch::kInt64 &&
              bq.numel() == G.size(0) && by.numel() == G.size(1)), "knn_select: inconsistent batch vectors");
  if (G.scalar_type() == torch::kFloat64) {
    select_impl<double>(G, qn, yn, col0, row0, skip_self, bq, by, rows, best_d, best_i, num_threads);
  } else {
    TORCH_CHECK(G.scalar_type() == torch::kFloat32, "float32 or float64 expected");
    select_impl<float>(G, qn, yn, col0, row0, skip_self, bq, by, rows, best_d, best_i, num_threads);
  }
}

// Squared distances of every row to its listed neighbours, recomputed from differences:
// out[i, j] = Σ_t (x[i, t] − x[idx[i, j], t])², summed in order t = 0..d−1 (so the value is
// symmetric in i, j bit for bit and exactly 0 for duplicates); inf where idx < 0.
// Twin: tgrep/kernels/reference/knn.py::neighbor_distances. Indices are checked.
template <typename T>
static void nbr_dist_impl(const T* x, const int64_t* idx, T* out, int64_t n, int64_t d, int64_t m, int64_t nt) {
#pragma omp parallel for schedule(static, 512) num_threads(nt) if (nt > 1)
  for (int64_t i = 0; i < n; ++i) {
    const T* xi = x + i * d;
    for (int64_t j = 0; j < m; ++j) {
      const int64_t q = idx[i * m + j];
      // the neighbours' rows are scattered in memory: fetch a few ahead (the loop is latency-bound)
      const int64_t pos = i * m + j + 4;
      const int64_t ahead = pos < n * m ? idx[pos] : -1;   // checked: every id < n (and < 0 skipped)
      if (ahead >= 0) {
        const char* pf = reinterpret_cast<const char*>(x + ahead * d);
        for (int64_t o = 0; o < int64_t(d * sizeof(T)); o += 64) __builtin_prefetch(pf + o);
      }
      if (q < 0) {
        out[i * m + j] = std::numeric_limits<T>::infinity();
        continue;
      }
      const T* xq = x + q * d;
      T s = 0;
      for (int64_t t = 0; t < d; ++t) {
        const T diff = xi[t] - xq[t];
        s += diff * diff;
      }
      out[i * m + j] = s;
    }
  }
}

torch::Tensor neighbor_distances(torch::Tensor x, torch::Tensor idx, int64_t num_threads) {
  TORCH_CHECK(x.is_contiguous() && idx.is_contiguous() && x.dim() == 2 && idx.dim() == 2 &&
              idx.size(0) == x.size(0) && idx.scalar_type() == torch::kInt64, "neighbor_distances: bad inputs");
  TORCH_CHECK(num_threads >= 1, "num_threads must be >= 1");
  const int64_t n = x.size(0), d = x.size(1), m = idx.size(1);
  const int64_t* ip = idx.data_ptr<int64_t>();
  for (int64_t a = 0; a < n * m; ++a) TORCH_CHECK(ip[a] < n, "neighbor_distances: index out of range");
  torch::Tensor out = torch::empty({n, m}, x.options());
  if (x.scalar_type() == torch::kFloat64) {
    nbr_dist_impl<double>(x.data_ptr<double>(), ip, out.data_ptr<double>(), n, d, m, num_threads);
  } else {
    TORCH_CHECK(x.scalar_type() == torch::kFloat32, "float32 or float64 expected");
    nbr_dist_impl<float>(x.data_ptr<float>(), ip, out.data_ptr<float>(), n, d, m, num_threads);
  }
  return out;
}

// The inverted-file search's heaps, back in the caller's row order: heap row h (a position in
// the list order) is sorted ascending (ties by id) and written to row order[h] of (D, I), its ids
// mapped through order; an empty slot (id < 0 or an infinite distance) becomes (inf, -1).
// best_d [n, k] float32, best_i [n, k] int64 (ids are positions, in [-1, n)), order [n] int64, a
// permutation of 0..n-1. Every index is checked.
std::vector<torch::Tensor> heaps_to_lists(torch::Tensor best_d, torch::Tensor best_i, torch::Tensor order,
                                          int64_t num_threads) {
  TORCH_CHECK(best_d.is_contiguous() && best_i.is_contiguous() && order.is_contiguous() && best_d.dim() == 2 &&
              best_i.sizes() == best_d.sizes() && order.dim() == 1 && order.numel() == best_d.size(0) &&
              best_d.scalar_type() == torch::kFloat32 && best_i.scalar_type() == torch::kInt64 &&
              order.scalar_type() == torch::kInt64, "heaps_to_lists: bad inputs");
  TORCH_CHECK(num_threads >= 1, "num_threads must be >= 1");
  const int64_t n = best_d.size(0), k = best_d.size(1);
  const float* bd = best_d.data_ptr<float>();
  const int64_t* bi = best_i.data_ptr<int64_t>();
  const int64_t* op = order.data_ptr<int64_t>();
  {
    std::vector<char> seen(n, 0);
    for (int64_t h = 0; h < n; ++h) {
      TORCH_CHECK(op[h] >= 0 && op[h] < n && !seen[op[h]], "heaps_to_lists: 'order' is not a permutation");
      seen[op[h]] = 1;
    }
    for (int64_t a = 0; a < n * k; ++a) TORCH_CHECK(bi[a] >= -1 && bi[a] < n, "heaps_to_lists: id out of range");
  }
  torch::Tensor D = torch::empty({n, k}, best_d.options());
  torch::Tensor I = torch::empty({n, k}, best_i.options());
  float* dp = D.data_ptr<float>();
  int64_t* ip = I.data_ptr<int64_t>();
#pragma omp parallel num_threads(num_threads) if (num_threads > 1)
  {
    std::vector<std::pair<float, int64_t>> row(k);
#pragma omp for schedule(static, 4096)
    for (int64_t h = 0; h < n; ++h) {
      for (int64_t j = 0; j < k; ++j) {
        const int64_t id = bi[h * k + j];
        const float d = bd[h * k + j];
        row[j] = (id < 0 || !(d < std::numeric_limits<float>::infinity()))
                     ? std::make_pair(std::numeric_limits<float>::infinity(), int64_t(-1))
                     : std::make_pair(d, op[id]);
      }
      std::sort(row.begin(), row.end(), [](const auto& a, const auto& b) {
        return a.first < b.first || (a.first == b.first && a.second < b.second);   // empties (inf, -1) last
      });
      const int64_t r = op[h];
      for (int64_t j = 0; j < k; ++j) {
        dp[r * k + j] = row[j].first;
        ip[r * k + j] = row[j].second;
      }
    }
  }
  return {D, I};
}

// Rows whose search looks stuck: some row that listed i is nearer to i than `factor` times the
// nearest neighbour i found itself (its first entry not itself). D [n, k] float32 ascending,
// I [n, k] int64 (-1: empty); returns a bool [n] mask. Every index is checked.
torch::Tensor stuck_rows(torch::Tensor D, torch::Tensor I, double factor) {
  TORCH_CHECK(D.is_contiguous() && I.is_contiguous() && D.dim() == 2 && I.sizes() == D.sizes() &&
              D.scalar_type() == torch::kFloat32 && I.scalar_type() == torch::kInt64, "stuck_rows: bad inputs");
  const int64_t n = D.size(0), k = D.size(1);
  const float* dp = D.data_ptr<float>();
  const int64_t* ip = I.data_ptr<int64_t>();
  for (int64_t a = 0; a < n * k; ++a) TORCH_CHECK(ip[a] >= -1 && ip[a] < n, "stuck_rows: id out of range");
  std::vector<float> rev(n, std::numeric_limits<float>::infinity());
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < k; ++j) {
      const int64_t s = ip[i * k + j];
      if (s >= 0 && s != i && dp[i * k + j] < rev[s]) rev[s] = dp[i * k + j];   // a row finding itself says nothing
    }
  torch::Tensor out = torch::empty({n}, torch::TensorOptions().dtype(torch::kBool));
  bool* o = out.data_ptr<bool>();
  for (int64_t i = 0; i < n; ++i) {
    if (k == 0) {
      o[i] = false;
      continue;
    }
    const float nearest = (ip[i * k] == i && k > 1) ? dp[i * k + 1] : dp[i * k];
    o[i] = rev[i] < float(factor) * nearest;
  }
  return out;
}

// The p smallest entries of every row of D [m, B] float32, as column ids [m, p] int64, ascending
// (ties by column). One pass per row keeping a sorted array of p (an entry is compared with the
// p-th smallest so far, and inserted only when below it); NaN entries come last, by column.
torch::Tensor smallest_k(torch::Tensor D, int64_t p, int64_t num_threads) {
  TORCH_CHECK(D.is_contiguous() && D.dim() == 2 && D.scalar_type() == torch::kFloat32, "smallest_k: bad input");
  const int64_t m = D.size(0), B = D.size(1);
  TORCH_CHECK(p >= 1 && p <= B, "smallest_k: p must be in [1, B]");
  TORCH_CHECK(num_threads >= 1, "num_threads must be >= 1");
  const float* dp = D.data_ptr<float>();
  torch::Tensor out = torch::empty({m, p}, torch::TensorOptions().dtype(torch::kInt64));
  int64_t* op = out.data_ptr<int64_t>();
#pragma omp parallel num_threads(num_threads) if (num_threads > 1)
  {
    std::vector<float> val(p);
    std::vector<int64_t> id(p);
    std::vector<char> used(B);
#pragma omp for schedule(static, 1024)
    for (int64_t i = 0; i < m; ++i) {
      const float* di = dp + i * B;
      int64_t cnt = 0;   // filled slots (an entry is taken while cnt < p, or when below the p-th)
      for (int64_t j = 0; j < B; ++j) {
        const float v = di[j];
        if (!(v == v)) continue;                       // NaN: last
        if (cnt == p && !(v < val[p - 1])) continue;
        int64_t t = cnt < p ? cnt++ : p - 1;           // slot to fill, then shift down into place
        while (t > 0 && v < val[t - 1]) {
          val[t] = val[t - 1];
          id[t] = id[t - 1];
          --t;
        }
        val[t] = v;
        id[t] = j;
      }
      if (cnt < p) {                                   // fewer than p non-NaN entries: NaN columns, in order
        std::fill(used.begin(), used.end(), 0);
        for (int64_t t = 0; t < cnt; ++t) used[id[t]] = 1;
        for (int64_t j = 0; j < B && cnt < p; ++j)
          if (!used[j]) id[cnt++] = j;
      }
      for (int64_t j = 0; j < p; ++j) op[i * p + j] = id[j];
    }
  }
  return out;
}

// Stable counting sort of small non-negative keys: order [m] int64 (the entries by key, ties in
// input order: torch.argsort(key, stable=True)) and ptr [K+1] int64 (the offsets of every key).
// key [m] int64 in [0, K). Every key is checked.
std::vector<torch::Tensor> counting_order(torch::Tensor key, int64_t K) {
  TORCH_CHECK(key.is_contiguous() && key.dim() == 1 && key.scalar_type() == torch::kInt64, "counting_order: bad key");
  TORCH_CHECK(K >= 0, "counting_order: K must be >= 0");
  const int64_t m = key.numel();
  const int64_t* kp = key.data_ptr<int64_t>();
  torch::Tensor ptr = torch::zeros({K + 1}, torch::TensorOptions().dtype(torch::kInt64));
  int64_t* pp = ptr.data_ptr<int64_t>();
  for (int64_t a = 0; a < m; ++a) {
    TORCH_CHECK(kp[a] >= 0 && kp[a] < K, "counting_order: key out of range");
    ++pp[kp[a] + 1];
  }
  for (int64_t c = 0; c < K; ++c) pp[c + 1] += pp[c];
  std::vector<int64_t> cur(pp, pp + K);
  torch::Tensor order = torch::empty({m}, torch::TensorOptions().dtype(torch::kInt64));
  int64_t* op = order.data_ptr<int64_t>();
  for (int64_t a = 0; a < m; ++a) op[cur[kp[a]]++] = a;
  return {order, ptr};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("counting_order", &counting_order, "stable counting sort of small keys: order and offsets",
        py::call_guard<py::gil_scoped_release>());
  m.def("neighbor_distances", &neighbor_distances, "squared distances to listed neighbours, from differences",
        py::call_guard<py::gil_scoped_release>());
  m.def("smallest_k", &smallest_k, "column ids of the p smallest entries of every row, ascending",
        py::call_guard<py::gil_scoped_release>());
  m.def("heaps_to_lists", &heaps_to_lists, "inverted-file heaps -> sorted neighbour lists in row order",
        py::call_guard<py::gil_scoped_release>());
  m.def("stuck_rows", &stuck_rows, "rows whose approximate search looks stuck (a reverse neighbour is nearer)",
        py::call_guard<py::gil_scoped_release>());
  // the GIL is released: the host code runs one query chunk per Python thread
  m.def("knn_select", &knn_select, "update per-row k-smallest heaps from a block of dot products",
        py::call_guard<py::gil_scoped_release>());
}
