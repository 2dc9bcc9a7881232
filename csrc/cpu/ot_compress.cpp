// Mirror Prox for OT graph compression (Garg & Jaakkola, NeurIPS 2019), CPU kernel.
//
// The same iteration as tgrep/kernels/reference/ot_solver.py::mirror_prox (plain torch over
// the whole batch), run here one graph per OpenMP task, each graph stopping on its own
// duality-gap estimate. Memory safety does not depend on the caller: every index is checked
// here (graph ids sorted and in range, edge ends in range and inside one graph, shapes),
// and a violation raises ValueError naming the argument.
#include <torch/extension.h>

#include <algorithm>
#include <functional>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace {

using Vec = std::vector<double>;
constexpr double INF = std::numeric_limits<double>::infinity();

struct Graph {
  int64_t n, E;
  const int64_t *src, *dst;  // local indices
  const double *cost, *rho0;
  double lam;
};

// exact projection onto {0 <= x <= 1, sum x <= k}, sort-based (same as the reference)
void capped(const Vec &y, double k, Vec &x, std::vector<std::pair<double, int>> &pts) {
  const size_t n = y.size();
  double s = 0;
  for (size_t i = 0; i < n; ++i) {
    x[i] = std::min(1.0, std::max(0.0, y[i]));
    s += x[i];
  }
  if (k <= 0) {
    std::fill(x.begin(), x.end(), 0.0);
    return;
  }
  if (s <= k) return;
  pts.resize(2 * n);
  for (size_t i = 0; i < n; ++i) {
    pts[i] = {y[i], (int)i};               // top breakpoint
    pts[n + i] = {y[i] - 1, -(int)i - 1};  // saturation breakpoint
  }
  std::sort(pts.begin(), pts.end(), [](auto &a, auto &b) { return a.first > b.first; });
  double A = 0, Sat = 0, Sy = 0, fprev = 0, bprev = 0;
  double theta = pts.back().first;
  for (size_t j = 0; j < 2 * n; ++j) {
    const auto &p = pts[j];
    if (p.second >= 0) {
      A += 1;
      Sy += y[p.second];
    } else {
      Sat += 1;
      Sy -= y[-p.second - 1];
    }
    double b = p.first, f = Sy - b * (A - Sat) + Sat;
    if (f >= k && j >= 1) {
      double denom = f - fprev;
      theta = denom != 0 ? b + (f - k) * (bprev - b) / denom : b;
      break;
    }
    fprev = f;
    bprev = b;
  }
  theta = std::max(theta, 0.0);
  for (size_t i = 0; i < n; ++i) x[i] = std::min(1.0, std::max(0.0, y[i] - theta));
}

// argmax_zeta psi(eps, t, zeta): root of sum eps (t + zeta)_+ = lam
double best_zeta(const Vec &eps, const Vec &t, double lam, std::vector<int> &order) {
  const size_t n = t.size();
  order.resize(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return t[a] > t[b]; });
  double se = 0, st = 0, best = INF;
  for (size_t j = 0; j < n; ++j) {
    int i = order[j];
    double w = eps[i] > 0 ? eps[i] : 0.0;
    se += w;
    st += w * t[i];
    double cand = (lam - st) / std::max(se, 1e-300);
    if (se > 0 && t[i] + cand >= -1e-15 * (1 + std::fabs(t[i]))) best = cand;
  }
  return best;
}

double psi(const Graph &g, const Vec &eps, const Vec &t, double z) {
  double v = z;
  for (int64_t i = 0; i < g.n; ++i) {
    double r = std::max(0.0, t[i] + z);
    v += t[i] * g.rho0[i] - eps[i] * r * r / (2 * g.lam);
  }
  return v;
}

void proj_T(const Graph &g, const Vec &y, Vec &out, Vec &mu, Vec &z, Vec &munew, Vec &tt, double step, int iters) {
  if (g.E == 0) {
    out = y;
    return;
  }
  z = mu;
  double tk = 1;
  for (int it = 0; it < iters; ++it) {
    tt = y;
    for (int64_t e = 0; e < g.E; ++e) {
      tt[g.src[e]] -= z[e];
      tt[g.dst[e]] += z[e];
    }
    double tk_new = (1 + std::sqrt(1 + 4 * tk * tk)) / 2, mom = (tk - 1) / tk_new;
    for (int64_t e = 0; e < g.E; ++e) {
      double m = std::max(0.0, z[e] - step * (g.cost[e] - (tt[g.src[e]] - tt[g.dst[e]])));
      munew[e] = m;
      z[e] = m + mom * (m - mu[e]);
      mu[e] = m;
    }
    tk = tk_new;
  }
  out = y;
  for (int64_t e = 0; e < g.E; ++e) {
    out[g.src[e]] -= mu[e];
    out[g.dst[e]] += mu[e];
  }
}

struct Out {
  double *eps, *rho1, *eps_last, *t_last, *zeta_last, *mu_last, *gap;
  int64_t *iters;
};

void solve(const Graph &g, int64_t kk, int num_iters, double tol, int lip_iters, double s, const Out &o) {
  const int64_t n = g.n;
  const double lam = g.lam, kf = (double)kk;
  Vec eps(n, n ? kf / n : 0.0), t(n, 0.0), gt(n), ge(n), eh(n), th(n), y(n), esum(n, 0.0), tsum(n, 0.0), tbar(n),
      ebar(n), rb(n), tmp(n);
  Vec mu(g.E, 0.0), zz(g.E), mn(g.E), tt(n);
  std::vector<std::pair<double, int>> pts;
  std::vector<int> order;
  double zeta = best_zeta(eps, t, lam, order);
  if (!std::isfinite(zeta)) zeta = 0;
  // per-graph Lipschitz bound of the incidence operator
  std::vector<double> deg(n, 0.0);
  for (int64_t e = 0; e < g.E; ++e) {
    deg[g.src[e]] += 1;
    deg[g.dst[e]] += 1;
  }
  double L = 0;
  for (int64_t e = 0; e < g.E; ++e) L = std::max(L, deg[g.src[e]] + deg[g.dst[e]]);
  const double lstep = 1.0 / std::max(L, 1.0);
  const double beta = 0.5 * lam * s, gamma = 0.5 * lam * s / std::max(kf, 1.0);
  double asum = 0, zsum = 0, gap = INF;
  int it = 0;
  auto grads = [&](const Vec &e_, const Vec &t_, double z_, Vec &ge_, Vec &gt_) {
    double srho = 0;
    for (int64_t i = 0; i < n; ++i) {
      double r = std::max(0.0, t_[i] + z_);
      double rho1 = e_[i] * r / lam;
      ge_[i] = -r * r / (2 * lam);
      gt_[i] = g.rho0[i] - rho1;
      srho += rho1;
    }
    return 1 - srho;
  };
  for (it = 1; it <= num_iters; ++it) {
    double gz = grads(eps, t, zeta, ge, gt);
    double rmax2 = 0, r2sum = 0;
    for (int64_t i = 0; i < n; ++i) {
      double r = std::max(0.0, t[i] + zeta);
      rmax2 = std::max(rmax2, r * r);
      r2sum += r * r;
    }
    double alpha = 0.5 * s * lam * lam / std::max(std::max(beta * rmax2, gamma * r2sum), 1e-300);
    for (int64_t i = 0; i < n; ++i) y[i] = eps[i] - alpha * ge[i];
    capped(y, kf, eh, pts);
    for (int64_t i = 0; i < n; ++i) y[i] = t[i] + beta * gt[i];
    proj_T(g, y, th, mu, zz, mn, tt, lstep, lip_iters);
    double zh = zeta + gamma * gz;
    gz = grads(eh, th, zh, ge, gt);
    for (int64_t i = 0; i < n; ++i) y[i] = eps[i] - alpha * ge[i];
    capped(y, kf, eps, pts);
    for (int64_t i = 0; i < n; ++i) y[i] = t[i] + beta * gt[i];
    proj_T(g, y, t, mu, zz, mn, tt, lstep, lip_iters);
    zeta = zeta + gamma * gz;
    for (int64_t i = 0; i < n; ++i) {
      esum[i] += alpha * eh[i];
      tsum[i] += th[i];
    }
    asum += alpha;
    zsum += zh;
    if (it % 10 == 0 || it == num_iters) {
      for (int64_t i = 0; i < n; ++i) {
        ebar[i] = esum[i] / std::max(asum, 1e-300);
        tbar[i] = tsum[i] / it;
      }
      double zbar = zsum / it;
      double z1 = best_zeta(ebar, tbar, lam, order), z2 = best_zeta(ebar, t, lam, order);
      if (!std::isfinite(z1)) z1 = 0;
      if (!std::isfinite(z2)) z2 = 0;
      double up = std::max(psi(g, ebar, tbar, z1), psi(g, ebar, t, z2));
      // exact min over eps in E_k of psi(., tbar, zbar): eps = 1 on the k largest r
      for (int64_t i = 0; i < n; ++i) rb[i] = std::max(0.0, tbar[i] + zbar);
      order.resize(n);
      std::iota(order.begin(), order.end(), 0);
      int64_t kk2 = std::min<int64_t>(std::max<int64_t>(kk, 0), n);
      std::partial_sort(order.begin(), order.begin() + kk2, order.end(), [&](int a, int b) { return rb[a] > rb[b]; });
      std::fill(tmp.begin(), tmp.end(), 0.0);
      for (int64_t j = 0; j < kk2; ++j) tmp[order[j]] = 1.0;
      double lo = psi(g, tmp, tbar, zbar);
      gap = up - lo;
      if (gap <= tol * std::max(std::fabs(up), 1e-12) || kk <= 0 || kk >= n) break;
    }
  }
  if (it > num_iters) it = num_iters;
  double zbar = zsum / std::max(it, 1);
  for (int64_t i = 0; i < n; ++i) {
    double eb = esum[i] / std::max(asum, 1e-300), tb = tsum[i] / std::max(it, 1);
    o.eps[i] = eb;
    o.rho1[i] = eb * std::max(0.0, tb + zbar) / lam;
    o.eps_last[i] = eps[i];
    o.t_last[i] = t[i];
  }
  for (int64_t e = 0; e < g.E; ++e) o.mu_last[e] = mu[e];
  *o.zeta_last = zeta;
  *o.gap = gap;
  *o.iters = it;
}

}  // namespace

std::vector<torch::Tensor> mirror_prox(torch::Tensor edge_index, torch::Tensor cost, torch::Tensor rho0,
                                       torch::Tensor batch, torch::Tensor k, double lam, int64_t num_iters, double tol,
                                       int64_t lip_iters, double step_scale) {
  TORCH_CHECK_VALUE(edge_index.dim() == 2 && edge_index.size(0) == 2, "'edge_index' must have shape [2, E]");
  TORCH_CHECK_VALUE(rho0.dim() == 1 && batch.dim() == 1 && cost.dim() == 1 && k.dim() == 1,
                    "'rho0', 'batch', 'cost' and 'k' must be 1-D");
  const int64_t N = rho0.numel(), E = edge_index.size(1), B = k.numel();
  TORCH_CHECK_VALUE(batch.numel() == N, "'batch' must have one entry per node (", N, "), got ", batch.numel());
  TORCH_CHECK_VALUE(cost.numel() == E, "'cost' must have one entry per edge (", E, "), got ", cost.numel());
  TORCH_CHECK_VALUE(num_iters >= 1 && lip_iters >= 1, "'num_iters' and 'lip_iters' must be >= 1");
  TORCH_CHECK_VALUE(std::isfinite(lam) && lam > 0, "'lam' must be finite and > 0, got ", lam);
  auto ei = edge_index.contiguous().to(torch::kLong);
  auto bt = batch.contiguous().to(torch::kLong);
  cost = cost.contiguous().to(torch::kDouble);
  rho0 = rho0.contiguous().to(torch::kDouble);
  k = k.contiguous().to(torch::kLong);
  const int64_t *S = ei.data_ptr<int64_t>(), *D = S + E, *G = bt.data_ptr<int64_t>(), *K = k.data_ptr<int64_t>();
  // graph ranges from the sorted batch (checked), then edges grouped by graph (counting sort)
  std::vector<int64_t> P(B + 1, 0), EP(B + 1, 0);
  for (int64_t i = 0; i < N; ++i) {
    TORCH_CHECK_VALUE(G[i] >= 0 && G[i] < B, "'batch' has graph id ", G[i], " outside [0, ", B, ")");
    TORCH_CHECK_VALUE(i == 0 || G[i] >= G[i - 1], "'batch' must be sorted (nodes of one graph contiguous)");
    ++P[G[i] + 1];
  }
  for (int64_t g = 0; g < B; ++g) P[g + 1] += P[g];
  for (int64_t e = 0; e < E; ++e) {
    TORCH_CHECK_VALUE(S[e] >= 0 && S[e] < N && D[e] >= 0 && D[e] < N, "'edge_index' has entries outside [0, ", N,
                      "): edge ", e, " = (", S[e], ", ", D[e], ")");
    TORCH_CHECK_VALUE(G[S[e]] == G[D[e]], "'edge_index' has an edge joining two graphs of 'batch': edge ", e, " = (",
                      S[e], ", ", D[e], ") in graphs ", G[S[e]], " and ", G[D[e]]);
    ++EP[G[S[e]] + 1];
  }
  for (int64_t g = 0; g < B; ++g) EP[g + 1] += EP[g];
  std::vector<int64_t> slot(EP.begin(), EP.end() - 1), eorder(E), ls(E), ld(E);
  std::vector<double> lc(E);
  const double *C = cost.data_ptr<double>(), *R = rho0.data_ptr<double>();
  for (int64_t e = 0; e < E; ++e) {
    const int64_t g = G[S[e]], j = slot[g]++;
    eorder[j] = e;
    ls[j] = S[e] - P[g];
    ld[j] = D[e] - P[g];
    lc[j] = C[e];
  }
  auto opt = torch::TensorOptions().dtype(torch::kDouble);
  auto eps = torch::zeros({N}, opt), rho1 = torch::zeros({N}, opt), eps_last = torch::zeros({N}, opt),
       t_last = torch::zeros({N}, opt), zeta_last = torch::zeros({B}, opt), gap = torch::zeros({B}, opt);
  std::vector<double> mu_sorted(E, 0.0);
  auto iters = torch::zeros({B}, torch::kLong);
  double *EO = eps.data_ptr<double>(), *RO = rho1.data_ptr<double>(), *EL = eps_last.data_ptr<double>(),
         *TL = t_last.data_ptr<double>(), *ZL = zeta_last.data_ptr<double>(), *GO = gap.data_ptr<double>();
  int64_t *IO = iters.data_ptr<int64_t>();
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t g = 0; g < B; ++g) {
    Graph gr{P[g + 1] - P[g], EP[g + 1] - EP[g], ls.data() + EP[g], ld.data() + EP[g], lc.data() + EP[g], R + P[g], lam};
    Out o{EO + P[g], RO + P[g], EL + P[g], TL + P[g], ZL + g, mu_sorted.data() + EP[g], GO + g, IO + g};
    solve(gr, K[g], (int)num_iters, tol, (int)lip_iters, step_scale, o);
  }
  auto mu_last = torch::zeros({E}, opt);
  double *ML = mu_last.data_ptr<double>();
  for (int64_t j = 0; j < E; ++j) ML[eorder[j]] = mu_sorted[j];
  return {eps, rho1, eps_last, t_last, zeta_last, mu_last, gap, iters};
}


// ----------------------------------------------------------------------------- exact support cost
// Twin of tgrep/kernels/reference/ot.py::support_cost_dense (FISTA with adaptive restart on
// the transport plan, duality-gap stop), one problem per OpenMP task.
namespace {

void proj_rows(const double *Y, double r, const char *allowed, int k, double *X, std::vector<double> &buf) {
  buf.clear();
  for (int j = 0; j < k; ++j)
    if (allowed[j]) buf.push_back(Y[j]);
  if (buf.empty()) {
    for (int j = 0; j < k; ++j) X[j] = 0;
    return;
  }
  std::sort(buf.begin(), buf.end(), std::greater<double>());
  double cs = 0, theta = 0;
  int rho = 0;
  double cs_rho = 0;
  for (size_t j = 0; j < buf.size(); ++j) {
    cs += buf[j];
    if (buf[j] - (cs - r) / (double)(j + 1) > 0) {
      rho = (int)j + 1;
      cs_rho = cs;
    }
  }
  if (rho == 0) {
    rho = 1;
    cs_rho = buf[0];
  }
  theta = (cs_rho - r) / rho;
  for (int j = 0; j < k; ++j) X[j] = allowed[j] ? std::max(0.0, Y[j] - theta) : 0.0;
}

}  // namespace

std::vector<torch::Tensor> support_cost(torch::Tensor D, torch::Tensor rho0, torch::Tensor support, double lam,
                                        int64_t max_iters, double tol, int64_t check_every, torch::Tensor pi0,
                                        bool return_plan) {
  TORCH_CHECK_VALUE(D.dim() == 3 && D.size(1) == D.size(2), "'D' must have shape [P, n, n]");
  const int64_t P = D.size(0), n = D.size(1);
  TORCH_CHECK_VALUE(rho0.dim() == 2 && rho0.size(0) == P && rho0.size(1) == n, "'rho0' must have shape [P, n]");
  TORCH_CHECK_VALUE(support.dim() == 2 && support.size(0) == P && support.size(1) == n,
                    "'support' must have shape [P, n]");
  TORCH_CHECK_VALUE(pi0.numel() == 0 || (pi0.dim() == 3 && pi0.size(0) == P && pi0.size(1) == n && pi0.size(2) == n),
                    "'pi0' must be empty or have shape [P, n, n]");
  TORCH_CHECK_VALUE(std::isfinite(lam) && lam > 0, "'lam' must be finite and > 0, got ", lam);
  TORCH_CHECK_VALUE(check_every >= 1 && max_iters >= 0, "'check_every' must be >= 1 and 'max_iters' >= 0");
  D = D.contiguous().to(torch::kDouble);
  rho0 = rho0.contiguous().to(torch::kDouble);
  support = support.contiguous().to(torch::kBool);
  const bool warm = pi0.numel() > 0;
  if (warm) pi0 = pi0.contiguous().to(torch::kDouble);
  auto cost = torch::zeros({P}, torch::kDouble), gapt = torch::zeros({P}, torch::kDouble);
  auto mout = torch::zeros({P, n}, torch::kDouble);
  auto plan = return_plan ? torch::zeros({P, n, n}, torch::kDouble) : torch::zeros({0}, torch::kDouble);
  const double *Dp = D.data_ptr<double>(), *Rp = rho0.data_ptr<double>();
  const bool *Sp = support.data_ptr<bool>();
  const double *W = warm ? pi0.data_ptr<double>() : nullptr;
  double *Cp = cost.data_ptr<double>(), *Gp = gapt.data_ptr<double>(), *Mp = mout.data_ptr<double>();
  double *PLp = return_plan ? plan.data_ptr<double>() : nullptr;
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t q = 0; q < P; ++q) {
    const double *Dq = Dp + q * n * n, *r = Rp + q * n;
    const bool *S = Sp + q * n;
    std::vector<int> cols;
    for (int j = 0; j < n; ++j)
      if (S[j]) cols.push_back(j);
    const int k = std::max<int>((int)cols.size(), 1);
    std::vector<char> al(n * k, 0);
    std::vector<double> Dm(n * k, 0.0), pi(n * k, 0.0), z(n * k), nw(n * k), y(n * k), m(k), buf;
    bool feasible = true;
    int rows = 0;
    for (int u = 0; u < n; ++u) {
      double best = INF;
      int bj = -1;
      for (int j = 0; j < (int)cols.size(); ++j) {
        double d = Dq[u * n + cols[j]];
        if (std::isfinite(d)) {
          al[u * k + j] = 1;
          Dm[u * k + j] = d;
          if (d < best) {
            best = d;
            bj = j;
          }
        }
      }
      double ru = std::max(0.0, r[u]);
      if (ru > 0) ++rows;
      if (bj < 0 && ru > 0) feasible = false;
      if (bj >= 0) pi[u * k + bj] = ru;
      if (warm && bj >= 0) {
        for (int j = 0; j < (int)cols.size(); ++j) y[u * k + j] = W[q * n * n + u * n + cols[j]];
        proj_rows(&y[u * k], ru, &al[u * k], (int)cols.size(), &pi[u * k], buf);
      }
    }
    const int kc = (int)cols.size();
    const double step = 1.0 / (lam * std::max(rows, 1));
    auto colsum = [&](const std::vector<double> &p, std::vector<double> &mm) {
      std::fill(mm.begin(), mm.end(), 0.0);
      for (int u = 0; u < n; ++u)
        for (int j = 0; j < kc; ++j) mm[j] += p[u * k + j];
    };
    auto fval = [&](const std::vector<double> &p, std::vector<double> &mm) {
      colsum(p, mm);
      double f = 0;
      for (int i = 0; i < n * k; ++i) f += Dm[i] * p[i];
      for (int j = 0; j < kc; ++j) f += 0.5 * lam * mm[j] * mm[j];
      return f;
    };
    auto gval = [&](const std::vector<double> &mm) {
      double g = 0;
      for (int u = 0; u < n; ++u) {
        double ru = std::max(0.0, r[u]);
        if (ru <= 0) continue;
        double v = INF;
        for (int j = 0; j < kc; ++j)
          if (al[u * k + j]) v = std::min(v, Dm[u * k + j] + lam * mm[j]);
        g += ru * v;
      }
      for (int j = 0; j < kc; ++j) {
        double t = std::max(0.0, lam * mm[j]);
        g -= t * t / (2 * lam);
      }
      return g;
    };
    double f = fval(pi, m), gap = f - gval(m);
    int64_t it = 0;
    bool active = feasible;
    while (active && it < max_iters) {
      z = pi;
      double tk = 1, fprev = fval(pi, m);
      for (int64_t c = 0; c < check_every; ++c) {
        colsum(z, m);
        for (int u = 0; u < n; ++u) {
          for (int j = 0; j < kc; ++j) y[u * k + j] = z[u * k + j] - step * (Dm[u * k + j] + lam * m[j]);
          proj_rows(&y[u * k], std::max(0.0, r[u]), &al[u * k], kc, &nw[u * k], buf);
        }
        double tk_new = (1 + std::sqrt(1 + 4 * tk * tk)) / 2;
        double fnew = fval(nw, m);
        double mom = fnew > fprev ? 0.0 : (tk - 1) / tk_new;
        if (fnew > fprev) tk_new = 1;
        for (int i = 0; i < n * k; ++i) z[i] = nw[i] + mom * (nw[i] - pi[i]);
        pi.swap(nw);
        tk = tk_new;
        fprev = fnew;
        ++it;
      }
      f = fval(pi, m);
      gap = f - gval(m);
      active = gap > tol * std::max(f, 1e-12);
    }
    f = fval(pi, m);
    gap = f - gval(m);
    Cp[q] = feasible ? f : INF;
    Gp[q] = gap;
    for (int j = 0; j < kc; ++j) Mp[q * n + cols[j]] = m[j];
    if (return_plan)
      for (int u = 0; u < n; ++u)
        for (int j = 0; j < kc; ++j) PLp[q * n * n + u * n + cols[j]] = al[u * k + j] ? pi[u * k + j] : 0.0;
  }
  return {cost, mout, gapt, plan};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("mirror_prox", &mirror_prox, "Mirror Prox for OT graph compression, one graph per task (CPU)");
  m.def("support_cost", &support_cost, "exact objective of supports (dense FISTA), one problem per task (CPU)");
}
