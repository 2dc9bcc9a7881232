// REINFORCE coefficients of a stochastic shortest-path search (PRODIGE, eq. 3-4) on CPU.
// Spec: tgrep/kernels/reference/reinforce.py
//
//   coef[e] = sum over rows b that settled src(e) of adv[b] * (present(seed, b, e) - p[e])
//
// Work is split by source vertex u (so every thread owns the out-edges of its vertices and no
// two threads write the same coef[e]); the settled flags are first transposed to [N, B] bytes
// so the inner loops read contiguous memory. present() is the counter-based hash shared by every
// backend: u = (mix(e ^ mix(b ^ mix(seed ^ GOLDEN))) >> 8) * 2^-24 < p_e.
#include <torch/extension.h>
#include "edge_sampling.h"
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

using tgrep::mix32;

}  // namespace

// Memory safety: tgrep.ops.reinforce_coefficients validates first, but this function re-checks
// everything it dereferences (shapes, 'indptr' start/end/monotone, 'sources' in [0, N),
// probabilities), so a direct call with bad input raises ValueError instead of reading or
// writing out of range; the checks inside parallel regions set a flag that is raised after.
at::Tensor reinforce_coefficients(at::Tensor indptr, at::Tensor pred, at::Tensor sources, int64_t seed,
                                  at::Tensor edge_prob, at::Tensor advantage) {
  for (const at::Tensor* t : {&indptr, &pred, &sources, &edge_prob, &advantage})
    TORCH_CHECK_VALUE(t->device().is_cpu() && t->layout() == at::kStrided,
                      "reinforce_coefficients (C++): tensors must be dense and on the CPU");
  TORCH_CHECK_VALUE(pred.dim() == 2, "reinforce_coefficients (C++): 'pred' must be [B, N]");
  for (const at::Tensor* t : {&indptr, &pred, &sources})
    TORCH_CHECK_TYPE(!at::isFloatingType(t->scalar_type()) && !at::isComplexType(t->scalar_type()),
                     "reinforce_coefficients (C++): 'indptr', 'pred' and 'sources' must be integer tensors");
  const int64_t B = pred.size(0), n = pred.size(1), E = edge_prob.numel();
  TORCH_CHECK_VALUE(indptr.dim() == 1 && indptr.numel() == n + 1,
                    "reinforce_coefficients (C++): 'indptr' must have N + 1 = ", n + 1, " entries");
  TORCH_CHECK_VALUE(sources.numel() == B && advantage.numel() == B,
                    "reinforce_coefficients (C++): 'sources' and 'advantage' must have B = ", B, " entries");
  indptr = indptr.to(at::kLong).contiguous();
  pred = pred.to(at::kLong).contiguous();
  sources = sources.to(at::kLong).contiguous();
  at::Tensor p = edge_prob.detach().to(at::kDouble).contiguous();
  at::Tensor adv = advantage.detach().to(at::kDouble).contiguous();
  const int64_t* ip = indptr.data_ptr<int64_t>();
  {
    bool ok = ip[0] == 0 && ip[n] == E;
    for (int64_t u = 0; u < n; ++u) ok &= ip[u] <= ip[u + 1];
    TORCH_CHECK_VALUE(ok, "reinforce_coefficients (C++): 'indptr' must start at 0, be non-decreasing and end at "
                      "len(edge_prob) = ", E);
  }
  const double* pp = p.data_ptr<double>();
  // u < p  <=>  k < ceil(p * 2^24) for u = k * 2^-24 (exact in float64)
  std::vector<int64_t> thr(static_cast<size_t>(E));
  {
    bool ok = true;
    for (int64_t e = 0; e < E; ++e) {
      ok &= pp[e] >= 0.0 && pp[e] <= 1.0;
      thr[e] = static_cast<int64_t>(std::ceil(std::min(std::max(pp[e], 0.0), 1.0) * 16777216.0));
    }
    TORCH_CHECK_VALUE(ok, "reinforce_coefficients (C++): 'edge_prob' must lie in [0, 1] (and not be NaN)");
  }
  at::Tensor coef = at::zeros({E}, p.options());
  if (B == 0 || n == 0 || E == 0) return coef;
  const int64_t* pr = pred.data_ptr<int64_t>();
  const int64_t* src = sources.data_ptr<int64_t>();
  const int64_t* th = thr.data();
  const double* ad = adv.data_ptr<double>();
  double* out = coef.data_ptr<double>();
  const uint32_t s = tgrep::seed_key(seed);
  std::atomic<bool> bad_src{false};
  {
    pybind11::gil_scoped_release no_gil;
    std::vector<uint8_t> settled(static_cast<size_t>(n) * B, 0);  // [N, B]
    at::parallel_for(0, B, 64, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t* row = pr + b * n;
        for (int64_t v = 0; v < n; ++v)
          if (row[v] >= 0) settled[static_cast<size_t>(v) * B + b] = 1;
        if (static_cast<uint64_t>(src[b]) >= static_cast<uint64_t>(n)) {
          bad_src.store(true, std::memory_order_relaxed);
          continue;
        }
        settled[static_cast<size_t>(src[b]) * B + b] = 1;
      }
    });
    if (!bad_src.load()) {
      std::vector<uint32_t> rowmix(B);
      for (int64_t b = 0; b < B; ++b) rowmix[b] = mix32(static_cast<uint32_t>(b) ^ s);
      at::parallel_for(0, n, 16, [&](int64_t u0, int64_t u1) {
        for (int64_t u = u0; u < u1; ++u) {
          const int64_t e0 = ip[u], e1 = ip[u + 1];
          if (e0 == e1) continue;
          const uint8_t* st = settled.data() + static_cast<size_t>(u) * B;
          for (int64_t b = 0; b < B; ++b) {
            if (!st[b]) continue;
            const double a = ad[b];
            const uint32_t rm = rowmix[b];
            for (int64_t e = e0; e < e1; ++e) {
              const int64_t k = static_cast<int64_t>(mix32(static_cast<uint32_t>(e) ^ rm) >> 8);
              out[e] += a * ((k < th[e] ? 1.0 : 0.0) - pp[e]);
            }
          }
        }
      });
    }
  }
  TORCH_CHECK_VALUE(!bad_src.load(), "reinforce_coefficients (C++): 'sources' has entries outside [0, N)");
  return coef;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("reinforce_coefficients", &reinforce_coefficients,
        "PRODIGE REINFORCE coefficients over the edges each row's search read (see tgrep.ops.reinforce_coefficients)",
        pybind11::arg("indptr"), pybind11::arg("pred"), pybind11::arg("sources"), pybind11::arg("seed"),
        pybind11::arg("edge_prob"), pybind11::arg("advantage"));
}
