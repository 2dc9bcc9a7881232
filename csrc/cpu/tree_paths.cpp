// Path sums over given shortest-path trees on CPU: tgrep::predecessor_trees, tgrep::tree_order,
// tgrep::tree_path_sum and its transpose tgrep::tree_path_gradient. The executable spec is
// tgrep/kernels/reference/tree_path.py.
//
// Row b holds a forest over N vertices (int32): parent[b, v] is v's parent vertex, v itself for
// a root and -1 for a vertex outside the forest (both "terminal"); edge[b, v] is the index into
// 'weight' of the edge from parent[b, v] to v (read only for non-terminal v). The walk from v
// follows parent until a terminal vertex;
//
//   out[b, v] = sum of weight[edge[b, x]] over the non-terminal x on the walk from v
//
// (0 for terminal v). tree_path_gradient is the transpose: grad_weight[e] = sum of g[b, v] over
// the (b, v) whose walk passes an x with edge[b, x] = e.
//
// tree_order lists each row's vertices parents first (a memoised walk: each vertex pushed once
// on a stack; a walk longer than N vertices is a cycle, an error). tree_path_sum runs one pass
// over that order (out[v] = out[parent[v]] + weight[edge[v]]), tree_path_gradient one pass over
// its reverse (subtree sums), both checking as they go that the order is a parents-first
// permutation. predecessor_trees builds (edge, parent, order) from a search's CSR predecessors.
//
// Memory safety, whatever the caller passes: shapes are checked up front; every index read
// (parent in [-1, N), edge in [0, E), order in [0, N), pred, sources, edge_src, edge_map) is
// checked before use. Errors are codes set inside the parallel region and raised after it;
// nothing is thrown inside it.
#include <torch/extension.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

namespace {

enum Err : int { kOk = 0, kParent, kEdge, kCycle, kOrder, kSource, kPred, kEdgeSrc, kEdgeMap };

std::string err_message(const char* fn, int err) {
  std::string msg = std::string(fn) + " (C++): ";
  switch (err) {
    case kParent: return msg + "'parent' has entries outside [-1, N)";
    case kEdge: return msg + "'edge' has entries outside [0, len(weight)) (tree_path_table: len(weight) + len(extra)) on a non-terminal vertex";
    case kCycle: return msg + "'parent' holds a cycle (not a forest)";
    case kOrder: return msg + "'order' must list every vertex of its row once, each after its parent";
    case kSource: return msg + "'sources' has entries outside [0, N)";
    case kPred: return msg + "'pred' has entries outside [-1, len(edge_src))";
    case kEdgeSrc: return msg + "'edge_src' has entries outside [0, N)";
    case kEdgeMap: return msg + "'edge_map' has entries outside [0, num_weights)";
    default: return msg + "invalid input";
  }
}

struct Scratch {
  std::vector<uint32_t> mark;  // generation stamps: mark[v] == gen <=> v finalised in this row
  std::vector<int32_t> stack, order;
  uint32_t gen = 0;
  explicit Scratch(int64_t n) : mark(n, 0u) {
    stack.reserve(64);
    order.reserve(n);
  }
  uint32_t next() {
    if (++gen == 0) {
      std::fill(mark.begin(), mark.end(), 0u);
      gen = 1;
    }
    return gen;
  }
};

// Finalises row b's vertices parents first: calls leaf(v) for terminal v and step(v, u, e) for
// non-terminal v with parent u (already finalised) and edge e; with kOrder, appends every vertex
// to S.order (parents first).
template <bool kOrder, typename Leaf, typename Step>
int traverse(int64_t n, int64_t E, const int32_t* par, const int32_t* edge, Scratch& S, Leaf leaf, Step step) {
  const uint32_t gen = S.next();
  if (kOrder) S.order.clear();
  for (int64_t v0 = 0; v0 < n; ++v0) {
    if (S.mark[v0] == gen) continue;
    S.stack.clear();
    int64_t u = v0;
    for (;;) {  // climb until a finalised or terminal vertex
      const int64_t p = par[u];
      if (p < -1 || p >= n) return kParent;
      if (p == -1 || p == u) {
        leaf(u);
        S.mark[u] = gen;
        if (kOrder) S.order.push_back(static_cast<int32_t>(u));
        break;
      }
      S.stack.push_back(static_cast<int32_t>(u));
      if (static_cast<int64_t>(S.stack.size()) > n) return kCycle;
      if (S.mark[p] == gen) break;
      u = p;
    }
    for (auto it = S.stack.rbegin(); it != S.stack.rend(); ++it) {  // unwind: parents first
      const int64_t x = *it, e = edge ? edge[x] : -1;
      if (edge && (e < 0 || e >= E)) return kEdge;
      step(x, par[x], e);
      S.mark[x] = gen;
      if (kOrder) S.order.push_back(static_cast<int32_t>(x));
    }
  }
  return kOk;
}

void check_trees(const char* fn, const at::Tensor& edge, const at::Tensor& parent) {
  for (const at::Tensor* t : {&edge, &parent}) {
    TORCH_CHECK_VALUE(t->device().is_cpu() && t->layout() == at::kStrided, fn,
                      " (C++): tensors must be dense and on the CPU");
    TORCH_CHECK_TYPE(t->scalar_type() == at::kInt, fn, " (C++): 'edge' and 'parent' must be int32");
  }
  TORCH_CHECK_VALUE(parent.dim() == 2 && edge.sizes() == parent.sizes(), fn,
                    " (C++): 'edge' and 'parent' must both be [B, N], got ", edge.sizes(), " and ", parent.sizes());
  TORCH_CHECK_VALUE(parent.size(1) < std::numeric_limits<int32_t>::max(), fn, " (C++): N must be < 2^31 - 1");
}

int64_t num_chunks(int64_t B, int64_t n) {
  if (B * n < (int64_t(1) << 15)) return 1;
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), B));
}

}  // namespace

// Parents-first order of every row's vertices (the memoised walk); what the two ops below take.
at::Tensor tree_order(at::Tensor parent) {
  check_trees("tree_order", parent, parent);
  const int64_t B = parent.size(0), n = parent.size(1);
  at::Tensor pa = parent.contiguous();
  at::Tensor out = at::empty({B, n}, pa.options());
  if (B == 0 || n == 0) return out;
  const int64_t chunks = num_chunks(B, n);
  std::vector<int> errs(chunks, kOk);
  const int32_t* pp = pa.data_ptr<int32_t>();
  int32_t* op = out.data_ptr<int32_t>();
  {
    pybind11::gil_scoped_release no_gil;
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t ch = c0; ch < c1; ++ch) {
        Scratch S(n);
        for (int64_t b = ch * B / chunks, z = (ch + 1) * B / chunks; b < z && errs[ch] == kOk; ++b) {
          errs[ch] = traverse<true>(n, -1, pp + b * n, nullptr, S, [](int64_t) {}, [](int64_t, int64_t, int64_t) {});
          if (errs[ch] == kOk) std::copy(S.order.begin(), S.order.end(), op + b * n);
        }
      }
    });
  }
  for (int err : errs) TORCH_CHECK_VALUE(err == kOk, err_message("tree_order", err));
  return out;
}

// The trees of searches from their CSR predecessors, as the two ops below take them, in one
// pass: out[0] = edge (edge_map[pred], or num_weights: the virtual edge of an unreached vertex),
// out[1] = parent (edge_src[pred]; the source for itself and for unreached vertices),
// out[2] = the parents-first order. With 'fallback' ([2, B, N] int32 edge and parent, e.g. the
// row's previous tree), an unreached vertex keeps its fallback edge and parent instead.
namespace {

// Checks shared by predecessor_trees and update_trees; returns contiguous (pred, sources,
// edge_src, edge_map).
std::array<at::Tensor, 4> check_predecessors(const char* fn, const at::Tensor& pred, const at::Tensor& sources,
                                             const at::Tensor& edge_src, const at::Tensor& edge_map,
                                             int64_t num_weights) {
  for (const at::Tensor* t : {&pred, &sources, &edge_src, &edge_map}) {
    TORCH_CHECK_VALUE(t->device().is_cpu() && t->layout() == at::kStrided, fn,
                      " (C++): tensors must be dense and on the CPU");
    TORCH_CHECK_TYPE(t->scalar_type() == at::kLong || ((t == &edge_src || t == &edge_map) && t->scalar_type() == at::kInt),
                     fn, " (C++): 'pred' and 'sources' must be int64, 'edge_src' and 'edge_map' int32 or int64");
  }
  TORCH_CHECK_TYPE(edge_src.scalar_type() == edge_map.scalar_type(), fn,
                   " (C++): 'edge_src' and 'edge_map' must have the same dtype");
  TORCH_CHECK_VALUE(pred.dim() == 2 && sources.dim() == 1 && sources.numel() == pred.size(0), fn,
                    " (C++): 'pred' must be [B, N] and 'sources' [B]");
  TORCH_CHECK_VALUE(edge_src.dim() == 1 && edge_map.dim() == 1 && edge_src.numel() == edge_map.numel(), fn,
                    " (C++): 'edge_src' and 'edge_map' must both be [E]");
  TORCH_CHECK_VALUE(num_weights >= 0 && num_weights < std::numeric_limits<int32_t>::max(), fn,
                    " (C++): 'num_weights' must lie in [0, 2^31 - 1)");
  TORCH_CHECK_VALUE(pred.size(1) < std::numeric_limits<int32_t>::max(), fn, " (C++): N must be < 2^31 - 1");
  return {pred.contiguous(), sources.contiguous(), edge_src.contiguous(), edge_map.contiguous()};
}

// The trees of the B searches into 'out' ([3, R, N] int32: edge, parent, order), search b into
// row row_of[b] (b without row_of); an unreached vertex keeps the fallback's edge and parent of
// that row (fb: [2 or 3, RF, N], edge rows first, then parent rows) or, without fb, hangs from
// the source by the virtual edge num_weights. Errors: codes, raised by the caller.
int trees_into(const at::Tensor& pr, const at::Tensor& so, const at::Tensor& es, const at::Tensor& em,
               int64_t num_weights, const int32_t* fb, int64_t RF, int32_t* op, int64_t R, const int64_t* row_of) {
  const int64_t B = pr.size(0), n = pr.size(1), E = es.numel();
  if (B == 0 || n == 0) return kOk;
  const int64_t chunks = num_chunks(B, n);
  std::vector<int> errs(chunks, kOk);
  const int64_t *pp = pr.data_ptr<int64_t>(), *sp = so.data_ptr<int64_t>();
  // int32 'edge_src' / 'edge_map' (half the bytes of the random lookups) or int64
  auto run = [&](auto* esp, auto* emp) {
    pybind11::gil_scoped_release no_gil;
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t ch = c0; ch < c1; ++ch) {
        Scratch S(n);
        for (int64_t b = ch * B / chunks, z = (ch + 1) * B / chunks; b < z && errs[ch] == kOk; ++b) {
          const int64_t s = sp[b];
          if (s < 0 || s >= n) { errs[ch] = kSource; break; }
          const int64_t r = row_of ? row_of[b] : b;  // checked by the caller
          int32_t* edge = op + r * n;
          int32_t* par = op + (R + r) * n;
          int32_t* ord = op + (2 * R + r) * n;
          const int32_t* fb_edge = fb ? fb + r * n : nullptr;
          const int32_t* fb_par = fb ? fb + (RF + r) * n : nullptr;
          const int64_t* prow = pp + b * n;
          for (int64_t v = 0; v < n && errs[ch] == kOk; ++v) {
            const int64_t e = prow[v];
            if (e < -1 || e >= E) { errs[ch] = kPred; break; }
            if (e < 0) {
              if (fb && v != s) {  // unreached: the fallback tree's edge and parent (checked where read)
                edge[v] = fb_edge[v];
                par[v] = fb_par[v];
              } else {
                par[v] = static_cast<int32_t>(s);
                edge[v] = static_cast<int32_t>(num_weights);
              }
              continue;
            }
            const int64_t u = esp[e], m = emp[e];
            if (u < 0 || u >= n) errs[ch] = kEdgeSrc;
            else if (m < 0 || m >= num_weights) errs[ch] = kEdgeMap;
            par[v] = static_cast<int32_t>(u);
            edge[v] = static_cast<int32_t>(m);
          }
          if (errs[ch] != kOk) break;
          errs[ch] = traverse<true>(n, -1, par, nullptr, S, [](int64_t) {}, [](int64_t, int64_t, int64_t) {});
          if (errs[ch] == kOk) std::copy(S.order.begin(), S.order.end(), ord);
        }
      }
    });
  };
  if (es.scalar_type() == at::kInt) run(es.data_ptr<int32_t>(), em.data_ptr<int32_t>());
  else run(es.data_ptr<int64_t>(), em.data_ptr<int64_t>());
  for (int err : errs)
    if (err != kOk) return err;
  return kOk;
}

}  // namespace

at::Tensor predecessor_trees(at::Tensor pred, at::Tensor sources, at::Tensor edge_src, at::Tensor edge_map,
                             int64_t num_weights, c10::optional<at::Tensor> fallback) {
  auto [pr, so, es, em] = check_predecessors("predecessor_trees", pred, sources, edge_src, edge_map, num_weights);
  const int64_t B = pr.size(0), n = pr.size(1);
  const bool has_fb = fallback.has_value() && fallback->defined();
  at::Tensor fb;
  if (has_fb) {
    TORCH_CHECK_VALUE(fallback->device().is_cpu() && fallback->layout() == at::kStrided,
                      "predecessor_trees (C++): 'fallback' must be dense and on the CPU");
    TORCH_CHECK_TYPE(fallback->scalar_type() == at::kInt, "predecessor_trees (C++): 'fallback' must be int32");
    TORCH_CHECK_VALUE(fallback->dim() == 3 && fallback->size(0) == 2 && fallback->size(1) == B &&
                      fallback->size(2) == n, "predecessor_trees (C++): 'fallback' must be [2, B, N]");
    fb = fallback->contiguous();
  }
  at::Tensor out = at::empty({3, B, n}, pr.options().dtype(at::kInt));
  const int err = trees_into(pr, so, es, em, num_weights, has_fb ? fb.data_ptr<int32_t>() : nullptr, B,
                             out.data_ptr<int32_t>(), B, nullptr);
  TORCH_CHECK_VALUE(err == kOk, err_message("predecessor_trees", err));
  return out;
}

// A copy of the cached trees 'trees' ([3, K, N] int32) whose rows 'rows' ([B], distinct) are the
// trees of the searches (predecessor_trees with each row's own cached edge and parent as the
// fallback): one pass instead of a gather of the fallback, the trees and a copy of the cache.
at::Tensor update_trees(at::Tensor trees, at::Tensor rows, at::Tensor pred, at::Tensor sources, at::Tensor edge_src,
                        at::Tensor edge_map, int64_t num_weights) {
  auto [pr, so, es, em] = check_predecessors("update_trees", pred, sources, edge_src, edge_map, num_weights);
  TORCH_CHECK_VALUE(trees.device().is_cpu() && trees.layout() == at::kStrided && rows.device().is_cpu() &&
                    rows.layout() == at::kStrided, "update_trees (C++): tensors must be dense and on the CPU");
  TORCH_CHECK_TYPE(trees.scalar_type() == at::kInt, "update_trees (C++): 'trees' must be int32");
  TORCH_CHECK_TYPE(rows.scalar_type() == at::kLong, "update_trees (C++): 'rows' must be int64");
  const int64_t B = pr.size(0), n = pr.size(1);
  TORCH_CHECK_VALUE(trees.dim() == 3 && trees.size(0) == 3 && trees.size(2) == n,
                    "update_trees (C++): 'trees' must be [3, K, N] with N = pred.size(1) = ", n);
  TORCH_CHECK_VALUE(rows.dim() == 1 && rows.numel() == B, "update_trees (C++): 'rows' must be [B] with B = ", B);
  const int64_t K = trees.size(1);
  at::Tensor rw = rows.contiguous();
  const int64_t* rp = rw.data_ptr<int64_t>();
  std::vector<char> seen(K, 0);
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_VALUE(rp[b] >= 0 && rp[b] < K && !seen[rp[b]],
                      "update_trees (C++): 'rows' must be distinct rows of 'trees' (in [0, K))");
    seen[rp[b]] = 1;
  }
  at::Tensor src = trees.contiguous();
  at::Tensor out = src.clone();
  const int err = trees_into(pr, so, es, em, num_weights, src.data_ptr<int32_t>(), K, out.data_ptr<int32_t>(), K, rp);
  TORCH_CHECK_VALUE(err == kOk, err_message("update_trees", err));
  return out;
}

namespace {

void check_order(const char* fn, const at::Tensor& order, const at::Tensor& parent) {
  TORCH_CHECK_VALUE(order.device().is_cpu() && order.layout() == at::kStrided, fn,
                    " (C++): tensors must be dense and on the CPU");
  TORCH_CHECK_TYPE(order.scalar_type() == at::kInt, fn, " (C++): 'order' must be int32");
  TORCH_CHECK_VALUE(order.sizes() == parent.sizes(), fn, " (C++): 'order' must have the shape of 'parent' ",
                    parent.sizes(), ", got ", order.sizes());
}

}  // namespace

namespace {

// One row's path sums into o[0, n): weights wp[0, E) then xp[0, X) (edge ids E .. E + X - 1),
// parents first along qr. Returns an error code.
template <typename T>
int row_path_sums(int64_t n, int64_t E, int64_t X, const T* wp, const T* xp, const int32_t* pr, const int32_t* er,
                  const int32_t* qr, T* o, Scratch& S) {
  const uint32_t gen = S.next();
  for (int64_t i = 0; i < n; ++i) {  // parents first: o[parent] is final
    const int64_t v = qr[i];
    if (v < 0 || v >= n || S.mark[v] == gen) return kOrder;
    const int64_t u = pr[v];
    if (u < -1 || u >= n) return kParent;
    if (u == -1 || u == v) {
      o[v] = T(0);
    } else {
      const int64_t e = er[v];
      if (S.mark[u] != gen) return kOrder;
      if (e < 0 || e >= E + X) return kEdge;
      o[v] = o[u] + (e < E ? wp[e] : xp[e - E]);
    }
    S.mark[v] = gen;
  }
  return kOk;
}

// One row's transpose: acc[0, n) holds the row's per-vertex values on entry (overwritten by
// subtree sums); each edge's sum is added to o[e], e in [0, E), children first (reverse of qr).
template <typename A>
int row_path_gradient(int64_t n, int64_t E, const int32_t* pr, const int32_t* er, const int32_t* qr, A* acc, A* o,
                      Scratch& S) {
  const uint32_t gen = S.next();
  for (int64_t i = n - 1; i >= 0; --i) {  // children first: acc[v] is v's subtree sum
    const int64_t v = qr[i];
    if (v < 0 || v >= n || S.mark[v] == gen) return kOrder;
    S.mark[v] = gen;
    const int64_t u = pr[v];
    if (u < -1 || u >= n) return kParent;
    if (u == -1 || u == v) continue;
    const int64_t e = er[v];
    if (S.mark[u] == gen) return kOrder;  // the parent must come earlier in 'order'
    if (e < 0 || e >= E) return kEdge;
    o[e] += acc[v];
    acc[u] += acc[v];
  }
  return kOk;
}

// Path sums of every row into out [B, N] (weights w, then x from edge id len(w) on): the shared
// body of tree_path_sum and tree_path_table.
template <typename T>
void path_sums(const char* fn, const at::Tensor& w, const at::Tensor& x, const at::Tensor& ed, const at::Tensor& pa,
               const at::Tensor& od, T* out) {
  const int64_t B = pa.size(0), n = pa.size(1), E = w.numel(), X = x.defined() ? x.numel() : 0;
  if (B == 0 || n == 0) return;
  const int64_t chunks = num_chunks(B, n);
  std::vector<int> errs(chunks, kOk);
  const T* wp = w.data_ptr<T>();
  const T* xp = X ? x.data_ptr<T>() : nullptr;
  const int32_t *ep = ed.data_ptr<int32_t>(), *pp = pa.data_ptr<int32_t>(), *qp = od.data_ptr<int32_t>();
  {
    pybind11::gil_scoped_release no_gil;
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t ch = c0; ch < c1; ++ch) {
        Scratch S(n);
        for (int64_t b = ch * B / chunks, z = (ch + 1) * B / chunks; b < z; ++b) {
          const int err = row_path_sums(n, E, X, wp, xp, pp + b * n, ep + b * n, qp + b * n, out + b * n, S);
          if (err != kOk) { errs[ch] = err; break; }
        }
      }
    });
  }
  for (int err : errs) TORCH_CHECK_VALUE(err == kOk, err_message(fn, err));
}

// The transpose of path_sums into out [E] (zeros): init(b, acc) fills row b's per-vertex values.
template <typename T, typename Init>
void path_gradient(const char* fn, const at::Tensor& ed, const at::Tensor& pa, const at::Tensor& od, at::Tensor& out,
                   Init init) {
  using acc_t = at::opmath_type<T>;
  const int64_t B = pa.size(0), n = pa.size(1), E = out.numel();
  if (B == 0 || n == 0) return;
  const int64_t chunks = num_chunks(B, n);
  std::vector<int> errs(chunks, kOk);
  const int32_t *ep = ed.data_ptr<int32_t>(), *pp = pa.data_ptr<int32_t>(), *qp = od.data_ptr<int32_t>();
  // one chunk accumulating in the output's own type: straight into 'out' (same sums, same
  // order); else one [E] accumulator per chunk, summed below in chunk order
  constexpr bool kSameType = std::is_same_v<acc_t, T>;
  const bool direct = kSameType && chunks == 1;
  std::vector<std::vector<acc_t>> part(direct ? 0 : chunks);
  {
    pybind11::gil_scoped_release no_gil;
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t ch = c0; ch < c1; ++ch) {
        acc_t* o;
        if (direct) {
          o = reinterpret_cast<acc_t*>(out.data_ptr<T>());  // zeros; acc_t is T here
        } else {
          part[ch].assign(E, acc_t(0));
          o = part[ch].data();
        }
        std::vector<acc_t> acc(n);
        Scratch S(n);
        for (int64_t b = ch * B / chunks, z = (ch + 1) * B / chunks; b < z; ++b) {
          init(b, acc.data());
          const int err = row_path_gradient(n, E, pp + b * n, ep + b * n, qp + b * n, acc.data(), o, S);
          if (err != kOk) { errs[ch] = err; break; }
        }
      }
    });
  }
  if (!direct) {
    T* op = out.data_ptr<T>();
    for (int64_t e = 0; e < E; ++e) {
      acc_t s = acc_t(0);
      for (const auto& q : part) s += q[e];
      op[e] = static_cast<T>(s);
    }
  }
  for (int err : errs) TORCH_CHECK_VALUE(err == kOk, err_message(fn, err));
}

void check_weight(const char* fn, const at::Tensor& weight, const char* name) {
  TORCH_CHECK_VALUE(weight.device().is_cpu() && weight.layout() == at::kStrided && weight.dim() == 1, fn,
                    " (C++): '", name, "' must be a dense 1-D CPU tensor");
  TORCH_CHECK_TYPE(at::isFloatingType(weight.scalar_type()), fn, " (C++): '", name, "' must be floating");
}

void check_grad(const char* fn, const at::Tensor& grad, at::IntArrayRef shape, int64_t num_edges) {
  TORCH_CHECK_VALUE(grad.device().is_cpu() && grad.layout() == at::kStrided, fn,
                    " (C++): 'grad' must be dense and on the CPU");
  TORCH_CHECK_TYPE(at::isFloatingType(grad.scalar_type()), fn, " (C++): 'grad' must be floating");
  TORCH_CHECK_VALUE(grad.sizes() == shape, fn, " (C++): 'grad' must have shape ", shape, ", got ", grad.sizes());
  TORCH_CHECK_VALUE(num_edges >= 0, fn, " (C++): 'num_edges' must be >= 0");
}

}  // namespace

at::Tensor tree_path_sum(at::Tensor weight, at::Tensor edge, at::Tensor parent, at::Tensor order) {
  check_trees("tree_path_sum", edge, parent);
  check_order("tree_path_sum", order, parent);
  check_weight("tree_path_sum", weight, "weight");
  at::Tensor w = weight.detach().contiguous();
  at::Tensor out = at::empty({parent.size(0), parent.size(1)}, w.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "tree_path_sum", [&] {
    path_sums<scalar_t>("tree_path_sum", w, at::Tensor(), edge.contiguous(), parent.contiguous(), order.contiguous(),
                        out.data_ptr<scalar_t>());
  });
  return out;
}

// [R, B]: the path sums of vertices 0 .. R-1 of every row, transposed (row v holds vertex v's
// sum in each tree), under the lengths 'weight' then 'extra' (edge ids E .. E + X - 1):
// tree_path_sum(cat([weight, extra]))[:, :R].T, without the concatenated or [B, N] copies.
at::Tensor tree_path_table(at::Tensor weight, at::Tensor extra, at::Tensor edge, at::Tensor parent, at::Tensor order,
                           int64_t num_rows) {
  check_trees("tree_path_table", edge, parent);
  check_order("tree_path_table", order, parent);
  check_weight("tree_path_table", weight, "weight");
  check_weight("tree_path_table", extra, "extra");
  TORCH_CHECK_TYPE(extra.scalar_type() == weight.scalar_type(),
                   "tree_path_table (C++): 'extra' must have the dtype of 'weight'");
  const int64_t B = parent.size(0), n = parent.size(1);
  TORCH_CHECK_VALUE(num_rows >= 0 && num_rows <= n, "tree_path_table (C++): 'num_rows' must lie in [0, N]");
  at::Tensor w = weight.detach().contiguous(), x = extra.detach().contiguous();
  at::Tensor out = at::empty({num_rows, B}, w.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "tree_path_table", [&] {
    // the rows' sums side by side ([B, N], as tree_path_sum), then transposed in blocks of 64
    // vertices (a store per vertex and row straight into [R, B] strides a cache line per store)
    at::Tensor rows = at::empty({B, n}, w.options());  // every entry written by path_sums: not zero-filled
    path_sums<scalar_t>("tree_path_table", w, x, edge.contiguous(), parent.contiguous(), order.contiguous(),
                        rows.data_ptr<scalar_t>());
    const scalar_t* sums = rows.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    for (int64_t v0 = 0; v0 < num_rows; v0 += 64) {
      const int64_t v1 = std::min<int64_t>(num_rows, v0 + 64);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t v = v0; v < v1; ++v) op[v * B + b] = sums[b * n + v];
    }
  });
  return out;
}

at::Tensor tree_path_gradient(at::Tensor grad, at::Tensor edge, at::Tensor parent, at::Tensor order,
                              int64_t num_edges) {
  check_trees("tree_path_gradient", edge, parent);
  check_order("tree_path_gradient", order, parent);
  check_grad("tree_path_gradient", grad, parent.sizes(), num_edges);
  const int64_t n = parent.size(1);
  at::Tensor g = grad.detach().contiguous();
  at::Tensor out = at::zeros({num_edges}, g.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "tree_path_gradient", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = g.data_ptr<scalar_t>();
    path_gradient<scalar_t>("tree_path_gradient", edge.contiguous(), parent.contiguous(), order.contiguous(), out,
                            [&](int64_t b, acc_t* acc) {
                              for (int64_t v = 0; v < n; ++v) acc[v] = static_cast<acc_t>(gp[b * n + v]);
                            });
  });
  return out;
}

// The transpose of tree_path_table: grad [R, B] (vertex v's value in row b at grad[v, b]; the
// vertices from R on contribute nothing) onto the num_edges edges (weight's E then extra's X).
at::Tensor tree_path_table_gradient(at::Tensor grad, at::Tensor edge, at::Tensor parent, at::Tensor order,
                                    int64_t num_edges) {
  check_trees("tree_path_table_gradient", edge, parent);
  check_order("tree_path_table_gradient", order, parent);
  const int64_t B = parent.size(0), n = parent.size(1);
  TORCH_CHECK_VALUE(grad.dim() == 2 && grad.size(0) <= n, "tree_path_table_gradient (C++): 'grad' must be [R, B] "
                    "with R <= N = ", n, ", got ", grad.sizes());
  const int64_t R = grad.size(0);
  check_grad("tree_path_table_gradient", grad, {R, B}, num_edges);
  at::Tensor g = grad.detach().contiguous();
  at::Tensor out = at::zeros({num_edges}, g.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "tree_path_table_gradient", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = g.data_ptr<scalar_t>();
    path_gradient<scalar_t>("tree_path_table_gradient", edge.contiguous(), parent.contiguous(), order.contiguous(),
                            out, [&](int64_t b, acc_t* acc) {
                              for (int64_t v = 0; v < R; ++v) acc[v] = static_cast<acc_t>(gp[v * B + b]);
                              std::fill(acc + R, acc + n, acc_t(0));
                            });
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("predecessor_trees", &predecessor_trees,
        "Trees (edge, parent, order) of searches from their predecessors (see tgrep::predecessor_trees)",
        pybind11::arg("pred"), pybind11::arg("sources"), pybind11::arg("edge_src"), pybind11::arg("edge_map"),
        pybind11::arg("num_weights"), pybind11::arg("fallback") = pybind11::none());
  m.def("update_trees", &update_trees,
        "The cached trees with some rows replaced by the trees of new searches (see tgrep::update_trees)",
        pybind11::arg("trees"), pybind11::arg("rows"), pybind11::arg("pred"), pybind11::arg("sources"),
        pybind11::arg("edge_src"), pybind11::arg("edge_map"), pybind11::arg("num_weights"));
  m.def("tree_order", &tree_order, "Parents-first vertex order of each row's forest (see tgrep::tree_order)",
        pybind11::arg("parent"));
  m.def("tree_path_sum", &tree_path_sum, "Sums of edge weights along given trees (see tgrep::tree_path_sum)",
        pybind11::arg("weight"), pybind11::arg("edge"), pybind11::arg("parent"), pybind11::arg("order"));
  m.def("tree_path_gradient", &tree_path_gradient,
        "Transpose of tree_path_sum: per-vertex values scattered onto the tree edges (see tgrep::tree_path_gradient)",
        pybind11::arg("grad"), pybind11::arg("edge"), pybind11::arg("parent"), pybind11::arg("order"),
        pybind11::arg("num_edges"));
  m.def("tree_path_table", &tree_path_table,
        "Path sums of the first rows' vertices, transposed, under two weight vectors (see tgrep::tree_path_table)",
        pybind11::arg("weight"), pybind11::arg("extra"), pybind11::arg("edge"), pybind11::arg("parent"),
        pybind11::arg("order"), pybind11::arg("num_rows"));
  m.def("tree_path_table_gradient", &tree_path_table_gradient,
        "Transpose of tree_path_table (see tgrep::tree_path_table_gradient)", pybind11::arg("grad"),
        pybind11::arg("edge"), pybind11::arg("parent"), pybind11::arg("order"), pybind11::arg("num_edges"));
}
