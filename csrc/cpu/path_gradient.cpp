// Backward kernels of batched shortest paths on CPU: tgrep::path_gradient (scatter a per-(row,
// target) value onto the edges of the row's returned path) and tgrep::path_sum (its transpose:
// gather an edge vector along the same paths). The executable spec is path_gradient / path_sum
// in tgrep/kernels/reference/shortest_path.py.
//
// A path is a walk over the predecessor array: from target v of row b, e = pred[b, v]; stop when
// e < 0, else the path uses edge e and continues from src(e) (the CSR row that holds e). A walk
// takes at most N + 1 steps: a valid shortest-path tree has paths of at most N - 1 edges, and a
// malformed pred with a cycle is cut there, as in the reference and the Triton kernel.
//
// Two strategies, same result up to float rounding (the order of the additions differs):
// * walk: every live (row, target) pair walks its own path, O(sum of the path lengths);
// * tree: the union of a row's paths is a forest (children -> parents by pred), so the row is
//   done in O(vertices on its paths): path_gradient accumulates subtree sums children-first
//   (Kahn order), path_sum accumulates prefix sums parents-first. Chosen when a row has many
//   targets (T >= N / 4, e.g. all N); a row whose predecessors hold a cycle falls back to walk.
//
// Memory safety, whatever the caller passes (the op validates first, but the extension can be
// called directly): shapes are checked up front; 'indptr' is checked (starts at 0,
// non-decreasing, ends at the number of edges) before src(e) is tabulated from it, so every
// src(e) lies in [0, N); 'targets' and every pred entry are checked where they are read (pred
// >= E is an error, any negative entry ends the walk). Errors are codes set inside the parallel
// region and raised after it; nothing is thrown inside it.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

enum Err : int { kOk = 0, kPred, kTargets };

const char* err_message(const char* fn, int err) {
  static thread_local std::string msg;
  msg = std::string(fn) + " (C++): ";
  switch (err) {
    case kPred: msg += "'pred' has entries >= the number of edges"; break;
    case kTargets: msg += "'targets' has entries outside [0, N)"; break;
    default: msg += "invalid input";
  }
  return msg.c_str();
}

// src(e) for every CSR edge e, or false when 'indptr' is not a valid CSR pointer array over E edges.
template <typename IP>
bool edge_sources_t(const at::Tensor& indptr, int64_t E, std::vector<int32_t>& src) {
  const IP* ip = indptr.data_ptr<IP>();
  const int64_t n = indptr.numel() - 1;
  if (static_cast<int64_t>(ip[0]) != 0 || static_cast<int64_t>(ip[n]) != E) return false;
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) ok &= ip[i] <= ip[i + 1];
  if (!ok) return false;
  src.resize(static_cast<size_t>(E));
  for (int64_t u = 0; u < n; ++u)
    for (int64_t e = static_cast<int64_t>(ip[u]), z = static_cast<int64_t>(ip[u + 1]); e < z; ++e)
      src[e] = static_cast<int32_t>(u);
  return true;
}

bool edge_sources(const at::Tensor& indptr, int64_t E, std::vector<int32_t>& src) {
  return indptr.scalar_type() == at::kInt ? edge_sources_t<int32_t>(indptr, E, src)
                                          : edge_sources_t<int64_t>(indptr, E, src);
}

struct Paths {
  int64_t n, B, T, E;
  const int64_t* pred;     // [B, N]
  const int64_t* targets;  // [B, T] or nullptr (target t = vertex t, T = N)
  const bool* live;        // [B, T] finite dist
  const int32_t* esrc;     // [E]
  int mode;                // 0 auto, 1 walk, 2 tree
};

inline bool use_tree(const Paths& P) { return P.mode == 2 || (P.mode == 0 && 4 * P.T >= P.n); }

// Per-worker scratch of the tree strategy: generation-stamped marks, so nothing is cleared in O(N) per row.
template <typename A>
struct Scratch {
  std::vector<uint32_t> mark;
  std::vector<A> acc;
  std::vector<int32_t> cnt, verts, order;
  uint32_t gen = 0;
  explicit Scratch(int64_t n) : mark(n, 0u), acc(n), cnt(n) {}
  uint32_t next() {
    if (++gen == 0) {
      std::fill(mark.begin(), mark.end(), 0u);
      gen = 1;
    }
    return gen;
  }
};

// Collects the vertices on row b's live paths in S.verts (targets first, then the parents'
// closure, each once) and the same vertices children-first in S.order (Kahn's order). With 'g'
// (path_gradient) only targets with g != 0 count and S.acc[v] starts at the sum of their g;
// 'acyclic' is false when the predecessors hold a cycle among them (the order is then incomplete).
template <typename A>
int collect(const Paths& P, int64_t b, Scratch<A>& S, const A* g, bool& acyclic) {
  const int64_t* pr = P.pred + b * P.n;
  const bool* lv = P.live + b * P.T;
  const int64_t* tg = P.targets ? P.targets + b * P.T : nullptr;
  const uint32_t gen = S.next();
  S.verts.clear();
  S.order.clear();
  auto visit = [&](int64_t v) {
    if (S.mark[v] != gen) {
      S.mark[v] = gen;
      S.acc[v] = A(0);
      S.cnt[v] = 0;
      S.verts.push_back(static_cast<int32_t>(v));
    }
  };
  for (int64_t t = 0; t < P.T; ++t) {
    if (!lv[t] || (g && g[t] == A(0))) continue;
    const int64_t v = tg ? tg[t] : t;
    if (static_cast<uint64_t>(v) >= static_cast<uint64_t>(P.n)) return kTargets;
    visit(v);
    if (g) S.acc[v] += g[t];
  }
  for (size_t i = 0; i < S.verts.size(); ++i) {  // grows while scanned
    const int64_t e = pr[S.verts[i]];
    if (e < 0) continue;
    if (e >= P.E) return kPred;
    visit(P.esrc[e]);
  }
  for (int32_t v : S.verts) {
    const int64_t e = pr[v];
    if (e >= 0) ++S.cnt[P.esrc[e]];
  }
  for (int32_t v : S.verts)
    if (S.cnt[v] == 0) S.order.push_back(v);
  for (size_t i = 0; i < S.order.size(); ++i) {
    const int64_t e = pr[S.order[i]];
    if (e >= 0 && --S.cnt[P.esrc[e]] == 0) S.order.push_back(P.esrc[e]);
  }
  acyclic = S.order.size() == S.verts.size();
  return kOk;
}

// out[e] += g on every edge of the walk from v.
template <typename A>
int walk_add(const Paths& P, const int64_t* pr, int64_t v, A g, A* out) {
  for (int64_t hop = 0; hop <= P.n; ++hop) {
    const int64_t e = pr[v];
    if (e < 0) return kOk;
    if (e >= P.E) return kPred;
    out[e] += g;
    v = P.esrc[e];
  }
  return kOk;
}

// The sum of val over the walk from v, added target end first (the reference's order).
template <typename A>
int walk_sum(const Paths& P, const int64_t* pr, int64_t v, const A* val, A& s) {
  s = A(0);
  for (int64_t hop = 0; hop <= P.n; ++hop) {
    const int64_t e = pr[v];
    if (e < 0) return kOk;
    if (e >= P.E) return kPred;
    s += val[e];
    v = P.esrc[e];
  }
  return kOk;
}

template <typename A>
int gradient_row(const Paths& P, int64_t b, const A* grad, A* out, Scratch<A>& S) {
  const int64_t* pr = P.pred + b * P.n;
  const A* g = grad + b * P.T;
  if (use_tree(P)) {
    bool acyclic = false;
    const int err = collect(P, b, S, g, acyclic);
    if (err != kOk) return err;
    if (acyclic) {
      for (int32_t v : S.order) {
        const int64_t e = pr[v];
        if (e < 0) continue;
        out[e] += S.acc[v];
        S.acc[P.esrc[e]] += S.acc[v];
      }
      return kOk;
    }
  }
  const bool* lv = P.live + b * P.T;
  const int64_t* tg = P.targets ? P.targets + b * P.T : nullptr;
  for (int64_t t = 0; t < P.T; ++t) {
    if (!lv[t] || g[t] == A(0)) continue;
    const int64_t v = tg ? tg[t] : t;
    if (static_cast<uint64_t>(v) >= static_cast<uint64_t>(P.n)) return kTargets;
    const int err = walk_add(P, pr, v, g[t], out);
    if (err != kOk) return err;
  }
  return kOk;
}

template <typename A>
int sum_row(const Paths& P, int64_t b, const A* val, A* out, Scratch<A>& S) {
  const int64_t* pr = P.pred + b * P.n;
  const bool* lv = P.live + b * P.T;
  const int64_t* tg = P.targets ? P.targets + b * P.T : nullptr;
  A* o = out + b * P.T;
  if (use_tree(P)) {
    bool acyclic = false;
    const int err = collect<A>(P, b, S, nullptr, acyclic);
    if (err != kOk) return err;
    if (acyclic) {
      for (auto it = S.order.rbegin(); it != S.order.rend(); ++it) {  // parents first
        const int64_t e = pr[*it];
        S.acc[*it] = e < 0 ? A(0) : S.acc[P.esrc[e]] + val[e];
      }
      for (int64_t t = 0; t < P.T; ++t) o[t] = lv[t] ? S.acc[tg ? tg[t] : t] : A(0);
      return kOk;
    }
  }
  for (int64_t t = 0; t < P.T; ++t) {
    o[t] = A(0);
    if (!lv[t]) continue;
    const int64_t v = tg ? tg[t] : t;
    if (static_cast<uint64_t>(v) >= static_cast<uint64_t>(P.n)) return kTargets;
    const int err = walk_sum(P, pr, v, val, o[t]);
    if (err != kOk) return err;
  }
  return kOk;
}

// Shapes and types shared by both ops; fills P (but not P.live) and returns the checked tensors.
struct Checked {
  at::Tensor pred, targets, live;
  std::vector<int32_t> esrc;
};

Checked check_paths(const char* fn, const at::Tensor& dist, const at::Tensor& pred, const at::Tensor& sources,
                    const c10::optional<at::Tensor>& targets, const at::Tensor& indptr, int64_t num_edges, int mode,
                    Paths& P) {
  const bool has_tg = targets.has_value() && targets->defined();
  for (const at::Tensor* t : {&dist, &pred, &sources, &indptr})
    TORCH_CHECK_VALUE(t->device().is_cpu() && t->layout() == at::kStrided, fn,
                      " (C++): tensors must be dense and on the CPU");
  if (has_tg)
    TORCH_CHECK_VALUE(targets->device().is_cpu() && targets->layout() == at::kStrided, fn,
                      " (C++): 'targets' must be dense and on the CPU");
  TORCH_CHECK_TYPE(pred.scalar_type() == at::kLong, fn, " (C++): 'pred' must be int64");
  TORCH_CHECK_TYPE(indptr.scalar_type() == at::kInt || indptr.scalar_type() == at::kLong, fn,
                   " (C++): 'indptr' must be int32 or int64");
  TORCH_CHECK_VALUE(pred.dim() == 2, fn, " (C++): 'pred' must be [B, N]");
  TORCH_CHECK_VALUE(mode >= 0 && mode <= 2, fn, " (C++): 'mode' must be 0 (auto), 1 (walk) or 2 (tree)");
  const int64_t B = pred.size(0), n = pred.size(1);
  TORCH_CHECK_VALUE(n < std::numeric_limits<int32_t>::max(), fn, " (C++): N must be < 2^31 - 1");
  TORCH_CHECK_VALUE(indptr.dim() == 1 && indptr.numel() == n + 1, fn, " (C++): 'indptr' must have N + 1 = ", n + 1,
                    " entries (N = pred.shape[1]), got ", indptr.numel());
  TORCH_CHECK_VALUE(sources.numel() == B, fn, " (C++): 'sources' must have B = ", B, " entries");
  TORCH_CHECK_VALUE(num_edges >= 0, fn, " (C++): 'num_edges' must be >= 0");
  Checked c;
  int64_t T = n;
  if (has_tg) {
    TORCH_CHECK_TYPE(!at::isFloatingType(targets->scalar_type()) && !at::isComplexType(targets->scalar_type()),
                     fn, " (C++): 'targets' must be an integer tensor");
    TORCH_CHECK_VALUE(targets->dim() == 2 && targets->size(0) == B, fn, " (C++): 'targets' must be [B, T]");
    T = targets->size(1);
    c.targets = targets->to(at::kLong).contiguous();
  }
  TORCH_CHECK_VALUE(dist.dim() == 2 && dist.size(0) == B && dist.size(1) == T, fn, " (C++): 'dist' must be [B, ",
                    has_tg ? "T" : "N", "] = [", B, ", ", T, "], got ", dist.sizes());
  TORCH_CHECK_VALUE(edge_sources(indptr.contiguous(), num_edges, c.esrc), fn,
                    " (C++): 'indptr' must start at 0, be non-decreasing and end at the number of edges (", num_edges,
                    ")");
  c.pred = pred.contiguous();
  c.live = at::isfinite(dist).contiguous();
  P.n = n;
  P.B = B;
  P.T = T;
  P.E = num_edges;
  P.pred = c.pred.data_ptr<int64_t>();
  P.targets = has_tg ? c.targets.data_ptr<int64_t>() : nullptr;
  P.live = c.live.data_ptr<bool>();
  P.esrc = c.esrc.data();
  P.mode = mode;
  return c;
}

// Rows split into at most num_threads contiguous chunks (one when the work is small).
int64_t num_chunks(const Paths& P) {
  const int64_t work = P.B * std::max<int64_t>(P.T, 1);
  if (work < (int64_t(1) << 15)) return 1;
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), P.B));
}

}  // namespace

// Same contract as tgrep.kernels.reference.shortest_path.path_gradient (with indptr instead of
// edge_src): out[e] = sum of grad_dist[b, t] over the live pairs whose path uses e.
at::Tensor path_gradient(at::Tensor grad_dist, at::Tensor dist, at::Tensor pred, at::Tensor sources,
                         c10::optional<at::Tensor> targets, at::Tensor indptr, int64_t num_edges, int64_t mode) {
  Paths P;
  TORCH_CHECK_VALUE(grad_dist.device().is_cpu() && grad_dist.layout() == at::kStrided,
                    "path_gradient (C++): 'grad_dist' must be dense and on the CPU");
  TORCH_CHECK_TYPE(at::isFloatingType(grad_dist.scalar_type()), "path_gradient (C++): 'grad_dist' must be floating");
  Checked c = check_paths("path_gradient", dist, pred, sources, targets, indptr, num_edges, static_cast<int>(mode), P);
  TORCH_CHECK_VALUE(grad_dist.sizes() == dist.sizes(), "path_gradient (C++): 'grad_dist' must have the shape of "
                    "'dist' ", dist.sizes(), ", got ", grad_dist.sizes());
  at::Tensor g = grad_dist.detach().contiguous();
  at::Tensor out = at::zeros({num_edges}, g.options());
  if (P.B == 0 || P.T == 0 || num_edges == 0) return out;
  const int64_t chunks = num_chunks(P);
  std::vector<int> errs(chunks, kOk);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "path_gradient", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    std::vector<std::vector<scalar_t>> part(chunks > 1 ? chunks - 1 : 0);
    {
      pybind11::gil_scoped_release no_gil;
      at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t ch = c0; ch < c1; ++ch) {
          scalar_t* o = out.data_ptr<scalar_t>();
          if (ch > 0) {
            part[ch - 1].assign(num_edges, scalar_t(0));
            o = part[ch - 1].data();
          }
          Scratch<scalar_t> S(use_tree(P) ? P.n : 0);
          for (int64_t b = ch * P.B / chunks, z = (ch + 1) * P.B / chunks; b < z && errs[ch] == kOk; ++b)
            errs[ch] = gradient_row(P, b, gp, o, S);
        }
      });
    }
    scalar_t* o = out.data_ptr<scalar_t>();
    for (auto& q : part)
      for (int64_t e = 0; e < num_edges; ++e) o[e] += q[e];
  });
  for (int err : errs) TORCH_CHECK_VALUE(err == kOk, err_message("path_gradient", err));
  return out;
}

// Same contract as tgrep.kernels.reference.shortest_path.path_sum (with indptr instead of
// edge_src): out[b, t] = sum of edge_values over row b's path to target t (0 where dist is not finite).
at::Tensor path_sum(at::Tensor edge_values, at::Tensor dist, at::Tensor pred, at::Tensor sources,
                    c10::optional<at::Tensor> targets, at::Tensor indptr, int64_t mode) {
  Paths P;
  TORCH_CHECK_VALUE(edge_values.device().is_cpu() && edge_values.layout() == at::kStrided,
                    "path_sum (C++): 'edge_values' must be dense and on the CPU");
  TORCH_CHECK_TYPE(at::isFloatingType(edge_values.scalar_type()), "path_sum (C++): 'edge_values' must be floating");
  TORCH_CHECK_VALUE(edge_values.dim() == 1, "path_sum (C++): 'edge_values' must be [E]");
  Checked c = check_paths("path_sum", dist, pred, sources, targets, indptr, edge_values.numel(),
                          static_cast<int>(mode), P);
  at::Tensor val = edge_values.detach().contiguous();
  at::Tensor out = at::zeros({P.B, P.T}, val.options());
  if (P.B == 0 || P.T == 0) return out;
  const int64_t chunks = num_chunks(P);
  std::vector<int> errs(chunks, kOk);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, val.scalar_type(), "path_sum", [&] {
    const scalar_t* vp = val.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    pybind11::gil_scoped_release no_gil;
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t ch = c0; ch < c1; ++ch) {
        Scratch<scalar_t> S(use_tree(P) ? P.n : 0);
        for (int64_t b = ch * P.B / chunks, z = (ch + 1) * P.B / chunks; b < z && errs[ch] == kOk; ++b)
          errs[ch] = sum_row(P, b, vp, o, S);
      }
    });
  });
  for (int err : errs) TORCH_CHECK_VALUE(err == kOk, err_message("path_sum", err));
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("path_gradient", &path_gradient,
        "Scatter per-(row, target) gradients onto the edges of the predecessor paths (see tgrep::path_gradient)",
        pybind11::arg("grad_dist"), pybind11::arg("dist"), pybind11::arg("pred"), pybind11::arg("sources"),
        pybind11::arg("targets"), pybind11::arg("indptr"), pybind11::arg("num_edges"), pybind11::arg("mode") = 0);
  m.def("path_sum", &path_sum,
        "Gather an edge vector along the predecessor paths (see tgrep::path_sum)", pybind11::arg("edge_values"),
        pybind11::arg("dist"), pybind11::arg("pred"), pybind11::arg("sources"), pybind11::arg("targets"),
        pybind11::arg("indptr"), pybind11::arg("mode") = 0);
}
