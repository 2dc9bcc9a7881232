// Forward-backward-forward primal-dual iterations of the log model on an edge support (CPU).
//   min_{0 <= w <= max_w}  2 zᵀw − 1ᵀ log(K w) + ‖w‖² + c‖w − w0‖²,
//   K = "sum over incident edges" (edges -> degrees)
// (z already multiplied by θ; α = β = 1; the prior term and the cap as in GSPBox; c = 0 and
// max_w = inf give the plain model). Indices are validated by the custom op tgrep::graph_learning_fbf
// before this runs (row/col in [0, n)); the incidence CSR is built by the host code. One call runs up to `steps` iterations in place on
// (w, v) and returns [iterations done, rel. primal change, rel. dual change]; `P` receives the
// last prox output (exactly 0 on inactive edges). Twin: tgrep/kernels/reference/graph_learning.py.
#include <torch/extension.h>
#include <cmath>
#include <vector>

template <typename T>
static std::vector<double> fbf_impl(const torch::Tensor& row, const torch::Tensor& col, const torch::Tensor& z,
                                    const torch::Tensor& inc_ptr, const torch::Tensor& inc_idx, torch::Tensor& w,
                                    torch::Tensor& v, torch::Tensor& P, const torch::Tensor& w0, double c_d, double max_w_d,
                                    double gamma_d, int64_t steps, double tol, int64_t nt) {
  const int64_t E = z.numel(), n = v.numel();
  const int64_t* r = row.data_ptr<int64_t>();
  const int64_t* c = col.data_ptr<int64_t>();
  const T* zp = z.data_ptr<T>();
  const int64_t* ip = inc_ptr.data_ptr<int64_t>();
  const int64_t* ii = inc_idx.data_ptr<int64_t>();
  T* wp = w.data_ptr<T>();
  T* vp = v.data_ptr<T>();
  T* Pp = P.data_ptr<T>();
  std::vector<T> Y(E), p(n);
  const T g = T(gamma_d);
  const bool prior = w0.numel() == E && c_d > 0;
  const T* w0p = prior ? w0.data_ptr<T>() : nullptr;
  const T h2 = T(2) * T(1 + (prior ? c_d : 0.0));  // gradient of ‖w‖² + c‖w − w0‖² is h2·w − 2c·w0
  const T c2 = T(2) * T(prior ? c_d : 0.0);
  const T cap = T(max_w_d);
  double rel_p = INFINITY, rel_d = INFINITY;
  int64_t it = 0;
  for (; it < steps;) {
    // forward step + prox of f1 (positivity + linear term), per edge
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t e = 0; e < E; ++e) {
      const T lin = prior ? c2 * w0p[e] : T(0);
      const T y = wp[e] - g * (h2 * wp[e] - lin + vp[r[e]] + vp[c[e]]);
      Y[e] = y;
      const T pe = y - T(2) * g * zp[e];
      Pp[e] = pe > T(0) ? (pe < cap ? pe : cap) : T(0);
    }
    // dual: y = v + g K w, p = prox_{g f2*}(y), q = p + g K P  (per node, no atomics)
    double dn = 0, dd = 0;
#pragma omp parallel for schedule(static) reduction(+ : dn, dd) num_threads(nt) if (nt > 1)
    for (int64_t i = 0; i < n; ++i) {
      T sw = 0, sp = 0;
      for (int64_t a = ip[i]; a < ip[i + 1]; ++a) {
        sw += wp[ii[a]];
        sp += Pp[ii[a]];
      }
      const T y = vp[i] + g * sw;
      const T pi = (y - std::sqrt(y * y + T(4) * g)) / T(2);
      p[i] = pi;
      const T dv = pi + g * sp - y;
      dn += double(dv) * double(dv);
      dd += double(vp[i]) * double(vp[i]);
      vp[i] += dv;
    }
    // second forward step on the primal, per edge
    double pn = 0, pd = 0;
#pragma omp parallel for schedule(static) reduction(+ : pn, pd) num_threads(nt) if (nt > 1)
    for (int64_t e = 0; e < E; ++e) {
      const T lin = prior ? c2 * w0p[e] : T(0);
      const T q = Pp[e] - g * (h2 * Pp[e] - lin + p[r[e]] + p[c[e]]);
      const T dw = q - Y[e];
      pn += double(dw) * double(dw);
      pd += double(wp[e]) * double(wp[e]);
      wp[e] += dw;
    }
    ++it;
    rel_p = pd > 0 ? std::sqrt(pn / pd) : INFINITY;
    rel_d = dd > 0 ? std::sqrt(dn / dd) : INFINITY;
    if (rel_p < tol && rel_d < tol) break;
  }
  return {double(it), rel_p, rel_d};
}

std::vector<double> fbf_log_steps(torch::Tensor row, torch::Tensor col, torch::Tensor z, torch::Tensor inc_ptr,
                                  torch::Tensor inc_idx, torch::Tensor w, torch::Tensor v, torch::Tensor P,
                                  torch::Tensor w0, double c, double max_w, double gamma, int64_t steps, double tol,
                                  int64_t num_threads) {
  TORCH_CHECK(row.is_contiguous() && col.is_contiguous() && z.is_contiguous() && w.is_contiguous() &&
              v.is_contiguous() && P.is_contiguous() && inc_ptr.is_contiguous() && inc_idx.is_contiguous() &&
              w0.is_contiguous(), "contiguous inputs expected");
  const int64_t E = z.numel(), n = v.numel();
  TORCH_CHECK(row.numel() == E && col.numel() == E && w.numel() == E && P.numel() == E &&
              inc_ptr.numel() == n + 1 && inc_idx.numel() == 2 * E && (w0.numel() == 0 || w0.numel() == E),
              "fbf_log_steps: inconsistent sizes");
  TORCH_CHECK(row.scalar_type() == torch::kInt64 && col.scalar_type() == torch::kInt64 &&
              inc_ptr.scalar_type() == torch::kInt64 && inc_idx.scalar_type() == torch::kInt64, "int64 indices expected");
  TORCH_CHECK(num_threads >= 1, "num_threads must be >= 1");
  TORCH_CHECK(w0.numel() == 0 || w0.scalar_type() == z.scalar_type(), "w0 dtype mismatch");
  if (z.scalar_type() == torch::kFloat64) return fbf_impl<double>(row, col, z, inc_ptr, inc_idx, w, v, P, w0, c, max_w, gamma, steps, tol, num_threads);
  TORCH_CHECK(z.scalar_type() == torch::kFloat32, "float32 or float64 expected");
  return fbf_impl<float>(row, col, z, inc_ptr, inc_idx, w, v, P, w0, c, max_w, gamma, steps, tol, num_threads);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fbf_log_steps", &fbf_log_steps, "FBF primal-dual iterations of the log graph-learning model",
        py::call_guard<py::gil_scoped_release>());
}
