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

template <typename T>
static void select_impl(const torch::Tensor& G, const torch::Tensor& qn, const torch::Tensor& yn,
                        int64_t col0, int64_t row0, bool skip_self, const torch::Tensor& bq,
                        const torch::Tensor& by, const torch::Tensor& rows, torch::Tensor& best_d,
                        torch::Tensor& best_i, int64_t nt) {
  const int64_t Q = G.size(0), B = G.size(1), k = best_d.size(1);
  const T* g = G.data_ptr<T>();
  const T* qnp = qn.data_ptr<T>();
  const T* ynp = yn.data_ptr<T>();
  T* bd = best_d.data_ptr<T>();
  int64_t* bi = best_i.data_ptr<int64_t>();
  const bool use_batch = bq.numel() > 0;
  const int64_t* bqp = use_batch ? bq.data_ptr<int64_t>() : nullptr;
  const int64_t* byp = use_batch ? by.data_ptr<int64_t>() : nullptr;
  const int64_t* rp = rows.numel() > 0 ? rows.data_ptr<int64_t>() : nullptr;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && rows.numel() == 0)  // heap rows may repeat
  for (int64_t i = 0; i < Q; ++i) {
    const T* gi = g + i * B;
    const int64_t h = rp ? rp[i] : i;   // heap row of block row i
    T* d = bd + h * k;
    int64_t* ix = bi + h * k;
    const T qi = qnp[i];
    const int64_t self = row0 + h;
    for (int64_t j = 0; j < B; ++j) {
      T dist = qi + ynp[j] - T(2) * gi[j];
      if (dist < T(0)) dist = T(0);
      if (!(dist < d[0])) continue;
      const int64_t col = col0 + j;
      if (skip_self && col == self) continue;
      if (use_batch && byp[j] != bqp[i]) continue;
      d[0] = dist;
      ix[0] = col;
      sift_down(d, ix, k);
    }
  }
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

// Probe lists of the inverted-file search: for every row, the p centroids nearest to it among
// the m candidates cnbr[home[i]] (the centroids nearest to its own centroid, itself first),
// its own centroid first, the rest by distance (ties by candidate order). x [n, d], cent [c, d]
// float32; home [n], cnbr [c, m] int64; returns [n, p] int64. Every index is checked.
torch::Tensor centroid_probes(torch::Tensor x, torch::Tensor cent, torch::Tensor home, torch::Tensor cnbr, int64_t p,
                              int64_t num_threads) {
  TORCH_CHECK(x.is_contiguous() && cent.is_contiguous() && home.is_contiguous() && cnbr.is_contiguous(),
              "centroid_probes: contiguous inputs expected");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && cent.scalar_type() == torch::kFloat32 &&
              home.scalar_type() == torch::kInt64 && cnbr.scalar_type() == torch::kInt64, "centroid_probes: dtypes");
  TORCH_CHECK(x.dim() == 2 && cent.dim() == 2 && cnbr.dim() == 2 && x.size(1) == cent.size(1) &&
              home.numel() == x.size(0) && cnbr.size(0) == cent.size(0) && p >= 1 && p <= cnbr.size(1),
              "centroid_probes: inconsistent sizes");
  TORCH_CHECK(num_threads >= 1, "num_threads must be >= 1");
  const int64_t n = x.size(0), d = x.size(1), c = cent.size(0), m = cnbr.size(1);
  const float* xp = x.data_ptr<float>();
  const float* cp = cent.data_ptr<float>();
  const int64_t* hp = home.data_ptr<int64_t>();
  const int64_t* np_ = cnbr.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) TORCH_CHECK(hp[i] >= 0 && hp[i] < c, "centroid_probes: home out of range");
  for (int64_t i = 0; i < c * m; ++i) TORCH_CHECK(np_[i] >= 0 && np_[i] < c, "centroid_probes: cnbr out of range");
  torch::Tensor out = torch::empty({n, p}, torch::TensorOptions().dtype(torch::kInt64));
  int64_t* op = out.data_ptr<int64_t>();
#pragma omp parallel num_threads(num_threads) if (num_threads > 1)
  {
    std::vector<float> dist(m);
    std::vector<int64_t> idx(m);
#pragma omp for schedule(static, 1024)
    for (int64_t i = 0; i < n; ++i) {
      const float* xi = xp + i * d;
      const int64_t* cand = np_ + hp[i] * m;
      for (int64_t j = 0; j < m; ++j) {
        const float* cj = cp + cand[j] * d;
        float s = 0.f;
        for (int64_t t = 0; t < d; ++t) {
          const float diff = xi[t] - cj[t];
          s += diff * diff;
        }
        dist[j] = cand[j] == hp[i] ? -1.f : s;   // its own centroid first
        idx[j] = j;
      }
      std::partial_sort(idx.begin(), idx.begin() + p, idx.end(), [&](int64_t a, int64_t b) {
        return dist[a] < dist[b] || (dist[a] == dist[b] && a < b);
      });
      for (int64_t j = 0; j < p; ++j) op[i * p + j] = cand[idx[j]];
    }
  }
  return out;
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

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("neighbor_distances", &neighbor_distances, "squared distances to listed neighbours, from differences",
        py::call_guard<py::gil_scoped_release>());
  m.def("centroid_probes", &centroid_probes, "probe lists of the inverted-file search (nearest centroids per row)",
        py::call_guard<py::gil_scoped_release>());
  // the GIL is released: the host code runs one query chunk per Python thread
  m.def("knn_select", &knn_select, "update per-row k-smallest heaps from a block of dot products",
        py::call_guard<py::gil_scoped_release>());
}
