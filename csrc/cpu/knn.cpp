// Exact kNN selection for tgrep.ops.knn (CPU): given one block of dot products G = Q·Yᵀ,
// update per-query max-heaps of the k smallest squared distances ‖q‖² + ‖y‖² − 2 q·y.
// The matmul stays in torch (BLAS); this pass is a threshold test per entry (rarely taken),
// which replaces torch.topk + merge. Twin: tgrep/kernels/reference/knn.py::knn_blocked.
#include <torch/extension.h>
#include <algorithm>
#include <limits>

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
                        const torch::Tensor& by, torch::Tensor& best_d, torch::Tensor& best_i, int64_t nt) {
  const int64_t Q = G.size(0), B = G.size(1), k = best_d.size(1);
  const T* g = G.data_ptr<T>();
  const T* qnp = qn.data_ptr<T>();
  const T* ynp = yn.data_ptr<T>();
  T* bd = best_d.data_ptr<T>();
  int64_t* bi = best_i.data_ptr<int64_t>();
  const bool use_batch = bq.numel() > 0;
  const int64_t* bqp = use_batch ? bq.data_ptr<int64_t>() : nullptr;
  const int64_t* byp = use_batch ? by.data_ptr<int64_t>() : nullptr;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t i = 0; i < Q; ++i) {
    const T* gi = g + i * B;
    T* d = bd + i * k;
    int64_t* ix = bi + i * k;
    const T qi = qnp[i];
    const int64_t self = row0 + i;
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

// best_d/best_i: [Q, k] max-heaps (initialised to +inf / -1), updated in place.
void knn_select(torch::Tensor G, torch::Tensor qn, torch::Tensor yn, int64_t col0, int64_t row0,
                bool skip_self, torch::Tensor bq, torch::Tensor by, torch::Tensor best_d,
                torch::Tensor best_i, int64_t num_threads) {
  TORCH_CHECK(G.is_contiguous() && best_d.is_contiguous() && best_i.is_contiguous(), "contiguous inputs");
  TORCH_CHECK(G.scalar_type() == best_d.scalar_type(), "dtype mismatch");
  if (G.scalar_type() == torch::kFloat64) {
    select_impl<double>(G, qn, yn, col0, row0, skip_self, bq, by, best_d, best_i, num_threads);
  } else {
    TORCH_CHECK(G.scalar_type() == torch::kFloat32, "float32 or float64 expected");
    select_impl<float>(G, qn, yn, col0, row0, skip_self, bq, by, best_d, best_i, num_threads);
  }
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // the GIL is released: the host code runs one query chunk per Python thread
  m.def("knn_select", &knn_select, "update per-row k-smallest heaps from a block of dot products",
        py::call_guard<py::gil_scoped_release>());
}
