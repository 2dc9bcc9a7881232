"""EDRep benchmarks: speed, memory, accuracy of log Z, community detection.

    python benchmarks/bench_edrep.py [--quick] [--part speed|accuracy|community|all]
    python benchmarks/bench_edrep.py --trees /work/wt/old   # this checkout vs another, same run

* speed:     n = m = 50,000, d = 64: ``log_normalizer`` (k-means included) vs
             ``exact_log_normalizer``; ``EDRepLoss`` forward+backward vs the exact softmax
             cross-entropy (chunked, the only way 50k x 50k fits in memory).
* memory:    peak resident memory one call adds (fresh process per measurement), n = 12.5k..50k.
* accuracy:  |log Z_hat - log Z| on scikit-learn digits (rows rescaled to mean norm 1) and on
             skewed heavy-tailed synthetic clusters, EDRep (k = 1, k > 1) vs positive random
             features, Nystrom and uniform sampling at equal time (the paper's Fig. 1).
* community: DCSBM graphs (n = 20,000, q = 4, c = 10), EDRep + k-means vs a spectral method
             and PyG Node2Vec (DeepWalk settings, pure-torch walks), NMI and time.

* trees:     ``--trees PATH[,PATH]``: ``log_normalizer`` (k = 1, 8; forward, and forward +
             backward) and the fused ``cluster_log_normalizer`` timed in this checkout and in
             others (one worker process each, 1 thread, rounds interleaved): how the cost of the
             custom-op wrappers (issue 9: within 5% of the pre-template code) is measured.

Writes benchmarks/results/edrep_<part>-cpu.json and PNG figures next to it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS, Report, time_trees, timeit  # noqa: E402
from edrep_peers import (bethe_hessian_embedding, deepwalk_node2vec, nystrom_log_z,  # noqa: E402
                         original_compute_zest, random_features_log_z, regularized_spectral_embedding,
                         sampling_log_z)

import tgrep  # noqa: E402
from tgrep.nn import EDRepLoss  # noqa: E402
from tgrep.ops import exact_log_normalizer, kmeans, log_normalizer  # noqa: E402
from tgrep.utils.progress import progress  # noqa: E402


# ----------------------------------------------------------------------------- helpers
def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1])
    return -1


def clustered(n: int, d: int, k: int = 8, seed: int = 0, spread: float = 0.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g)
    lab = torch.randint(0, k, (n,), generator=g)
    v = centers[lab] + spread * torch.randn(n, d, generator=g)
    return v / v.norm(dim=1, keepdim=True).mean()


def heavy_tailed(n: int, d: int, k: int = 12, seed: int = 0) -> torch.Tensor:
    """Skewed (Zipf sizes), heavy-tailed (Student-t, 3 dof) clusters, rows at mean norm 1."""
    g = torch.Generator().manual_seed(seed)
    sizes = 1.0 / torch.arange(1, k + 1, dtype=torch.float64) ** 1.5
    lab = torch.multinomial(sizes / sizes.sum(), n, replacement=True, generator=g)
    centers = torch.randn(k, d, generator=g)
    centers = centers / centers.norm(dim=1, keepdim=True)
    chi = torch.distributions.Chi2(torch.tensor(3.0)).sample((n, 1))  # t = z / sqrt(chi2/3)
    noise = torch.randn(n, d, generator=g) / torch.sqrt(chi / 3.0)
    v = centers[lab] + 0.25 * noise / math.sqrt(d)
    return (v / v.norm(dim=1, keepdim=True).mean()).float()


# ----------------------------------------------------------------------------- speed + memory
def bench_speed(quick: bool, verbose: bool) -> None:
    n = 10_000 if quick else 50_000
    d = 64
    x = clustered(n, d, seed=0)
    y = clustered(n, d, seed=1)
    rep = Report("edrep_speed", "cpu", n=n, m=n, d=d)
    print(f"exact log Z, n = m = {n}, d = {d} (one run) ...", flush=True)
    t_exact = timeit(lambda: exact_log_normalizer(x, y), repeat=1, warmup=0)["median"]
    for k in progress((1, 4, 8), verbose=verbose, desc="log_normalizer"):
        t = timeit(lambda: log_normalizer(x, y, num_clusters=k), repeat=5, warmup=1)["median"]
        rep.add(f"log_normalizer k={k} (k-means incl.)", t, t_exact, peer="exact_log_normalizer")
    # loss forward + backward: P = a sparse random target with 10 entries per row
    idx = torch.stack([torch.arange(n).repeat_interleave(10), torch.randint(0, n, (10 * n,))])
    target = (idx, torch.rand(10 * n))
    xp = x.clone().requires_grad_()
    yp = y.clone().requires_grad_()

    def step(loss_fn):
        def run():
            loss = loss_fn(xp, yp, target)
            loss.backward()
            xp.grad = yp.grad = None
        return run

    print("exact softmax cross-entropy forward+backward (one run) ...", flush=True)
    t_exact_loss = timeit(step(EDRepLoss(mode="exact")), repeat=1, warmup=0)["median"]
    for k in (1, 4):
        t = timeit(step(EDRepLoss(num_clusters=k)), repeat=5, warmup=1)["median"]
        rep.add(f"EDRepLoss k={k} fwd+bwd (clustering every call)", t, t_exact_loss,
                peer="exact softmax CE (chunked) fwd+bwd")
    rep.finish()


_MEM_CHILD = r"""
import sys, torch
sys.path.insert(0, {bench!r})
torch.set_num_threads(1)
from bench_edrep import clustered, _rss_kib
from tgrep.nn import EDRepLoss
from tgrep.ops import log_normalizer, exact_log_normalizer
n, k, what = {n}, {k}, {what!r}
x, y = clustered(n, 64, seed=0), clustered(n, 64, seed=1)
if what == "loss":
    x.requires_grad_(); y.requires_grad_()
    idx = torch.stack([torch.arange(n).repeat_interleave(10), torch.randint(0, n, (10 * n,))])
    target = (idx, torch.rand(10 * n))
    fn = lambda: EDRepLoss(num_clusters=k)(x, y, target).backward()
elif what == "exact":
    fn = lambda: exact_log_normalizer(x, y)
else:
    fn = lambda: log_normalizer(x, y, num_clusters=k)
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")
base = _rss_kib("VmRSS:")
fn()
print((_rss_kib("VmHWM:") - base) / 1024)
"""


def _peak_in_child(n: int, k: int, what: str) -> float:
    """Peak resident memory (MiB) one call adds, measured in a fresh process (no allocator
    cache from earlier work)."""
    import subprocess

    code = _MEM_CHILD.format(bench=str(Path(__file__).resolve().parent), n=n, k=k, what=what)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def bench_memory(quick: bool, verbose: bool) -> None:
    d = 64
    sizes = (5000, 10_000) if quick else (12_500, 25_000, 50_000)
    rep = Report("edrep_memory", "cpu", d=d, method="VmHWM - VmRSS around one call, fresh process each")
    for n in progress(sizes, verbose=verbose, desc="memory"):
        row = {"n_d_inputs_mib": round(2 * n * d * 4 / 2**20, 1)}
        for k in (1, 8):
            row[f"log_normalizer_k{k}_mib"] = round(_peak_in_child(n, k, "lognorm"), 1)
        row["loss_k4_fwd_bwd_mib"] = round(_peak_in_child(n, 4, "loss"), 1)
        row["exact_mib"] = round(_peak_in_child(n, 1, "exact"), 1)
        row["n_k8_d_tensor_mib"] = round(n * 8 * d * 4 / 2**20, 1)
        row["n_m_tensor_mib"] = round(n * n * 4 / 2**20, 1)
        rep.add(f"n = m = {n}", **row)
    rep.finish()


# ----------------------------------------------------------------------------- accuracy
def _equal_time(fn_of_size, target_s: float, start: int, cap: int) -> int:
    """Largest power-of-two size whose run takes at most ``target_s`` (at least ``start``)."""
    size = start
    while size * 2 <= cap:
        t = timeit(lambda: fn_of_size(size * 2), repeat=3, warmup=1)["median"]
        if t > target_s:
            break
        size *= 2
    return size


def bench_accuracy(quick: bool, verbose: bool) -> None:
    from sklearn.datasets import load_digits

    digits = torch.tensor(load_digits().data, dtype=torch.float32)
    digits = digits / digits.norm(dim=1, keepdim=True).mean()
    synth = heavy_tailed(5000 if quick else 20_000, 32)
    rep = Report("edrep_accuracy", "cpu")
    curves = {}
    for name, data, k_many in (("digits", digits, 10), ("heavy-tailed clusters", synth, 12)):
        exact = exact_log_normalizer(data, data)
        res = {}
        t_e = {}
        for k in (1, k_many):
            t_e[k] = timeit(lambda: log_normalizer(data, data, num_clusters=k), repeat=5, warmup=1)["median"]
            res[f"EDRep k={k}"] = (log_normalizer(data, data, num_clusters=k) - exact).abs()
        budget = t_e[k_many]
        nf = _equal_time(lambda s: random_features_log_z(data, data, s), budget, 16, 1 << 14)
        nl = _equal_time(lambda s: nystrom_log_z(data, data, s), budget, 8, 1 << 12)
        ns = _equal_time(lambda s: sampling_log_z(data, data, s), budget, 8, data.shape[0])
        res[f"random features D={nf}"] = (random_features_log_z(data, data, nf) - exact).abs()
        res[f"Nystrom L={nl}"] = (nystrom_log_z(data, data, nl) - exact).abs()
        res[f"sampling g={ns}"] = (sampling_log_z(data, data, ns) - exact).abs()
        curves[name] = {}
        for method, err in res.items():
            err = err.double()
            rep.add(f"{name}: {method}", median_abs_err=float(err.median()), p90_abs_err=float(err.quantile(0.9)),
                    budget_s=budget)
            # the CDF at 1001 evenly spaced levels (quantiles) keeps the JSON small
            curves[name][method] = np.quantile(err.numpy(), np.linspace(0, 1, 1001)).tolist()
    path = rep.finish()
    data = json.loads(path.read_text())
    data["error_curves"] = curves
    path.write_text(json.dumps(data) + "\n")
    plot_accuracy(path)


def plot_accuracy(path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(Path(path).read_text())
    curves = data["error_curves"]
    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4))
    for ax, (name, methods) in zip(np.atleast_1d(axes), curves.items()):
        for method, err in methods.items():
            err = np.maximum(np.asarray(err), 1e-8)
            ax.plot(err, np.linspace(0, 1, len(err)), label=method)
        ax.set_xscale("log")
        ax.set_xlabel("|log Z_hat - log Z|")
        ax.set_ylabel("CDF")
        ax.axvline(0.01, color="grey", ls=":")
        ax.set_title(name)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = RESULTS / "edrep_accuracy.png"
    fig.savefig(out, dpi=120)
    print(f"wrote {out.relative_to(RESULTS.parent.parent)}")


# ----------------------------------------------------------------------------- community detection
def _communities(emb: torch.Tensor, active: torch.Tensor, q: int) -> np.ndarray:
    """k-means (5 restarts) on the nodes with at least one edge; isolated nodes carry no
    information for any method and all go to community 0 (same rule for every method)."""
    labels = torch.zeros(emb.shape[0], dtype=torch.long)
    labels[active] = kmeans(emb[active].float(), q, seed=0, n_init=5)
    return labels.numpy()


def bench_community(quick: bool, verbose: bool) -> None:
    from sklearn.metrics import normalized_mutual_info_score as nmi

    from tgrep.datasets import dcsbm
    from tgrep.models import EDRep

    n = 5000 if quick else 20_000
    c_outs = (1.0, 4.0) if quick else (1.0, 3.0, 5.0, 6.5)
    n2v_epochs = 1
    rep = Report("edrep_community", "cpu", n=n, q=4, c=10, edrep="d=32, k=1, w=3, 30 epochs, eta=0.8",
                 node2vec=f"d=32, walk 20, context 10, 10 walks/node, {n2v_epochs} epoch, batch 32, SparseAdam lr 0.05",
                 isolated_nodes="all methods: k-means on non-isolated nodes, isolated nodes -> community 0")
    for c_out in progress(c_outs, verbose=verbose, desc="c_out"):
        data = dcsbm(n, 4, 10.0, c_out, seed=0)
        truth = data.y.numpy()
        active = torch.bincount(data.edge_index[0], minlength=n) > 0
        act = active.numpy()
        score = lambda lab: (nmi(truth, lab), nmi(truth[act], lab[act]))  # noqa: E731
        t0 = time.perf_counter()  # every time includes its k-means
        emb = EDRep(32, epochs=30, eta=0.8, walk_length=3, seed=0, verbose=False).fit_transform(data.edge_index, n)
        s_edrep = score(_communities(emb, active, 4))
        t_edrep = time.perf_counter() - t0
        best = None
        for name, fn in (("Bethe-Hessian", bethe_hessian_embedding),
                         ("regularized spectral", regularized_spectral_embedding)):
            t0 = time.perf_counter()
            spec = torch.tensor(fn(data.edge_index, n, 4), dtype=torch.float32)
            sc = score(_communities(spec, active, 4))
            t = time.perf_counter() - t0
            if best is None or sc[0] > best[1][0]:
                best = (name, sc, t)
        spec_name, s_spec, t_spec = best
        t0 = time.perf_counter()
        n2v = deepwalk_node2vec(data.edge_index, n, 32, walk_length=20, context_size=10, walks_per_node=10,
                                epochs=n2v_epochs, seed=0, lr=0.05, batch_size=32)
        s_n2v = score(_communities(n2v, active, 4))
        t_n2v = time.perf_counter() - t0
        a = round(data.alpha, 2)
        for peer, (sp_, tp_) in ((f"{spec_name} (best spectral)", (s_spec, t_spec)),
                                 ("PyG Node2Vec (DeepWalk)", (s_n2v, t_n2v))):
            rep.add(f"c_out={c_out} alpha={a}: EDRep vs {'spectral' if 'spectral' in peer else 'Node2Vec'}",
                    t_edrep, tp_, peer=peer, nmi_edrep=round(s_edrep[0], 4), nmi_peer=round(sp_[0], 4),
                    nmi_gap=round(sp_[0] - s_edrep[0], 4), nmi_edrep_nonisolated=round(s_edrep[1], 4),
                    nmi_peer_nonisolated=round(sp_[1], 4), isolated_frac=round(1 - float(active.float().mean()), 3))
    path = rep.finish()
    plot_community(path)


def plot_community(path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = json.loads(Path(path).read_text())["rows"]
    alpha = lambda r: float(r["case"].split("alpha=")[1].split(":")[0])  # noqa: E731
    spec = [r for r in rows if "spectral" in r["case"]]
    n2v = [r for r in rows if "Node2Vec" in r["case"]]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot([alpha(r) for r in spec], [r["nmi_edrep"] for r in spec], "o-", label="EDRep (tgrep)")
    a1.plot([alpha(r) for r in spec], [r["nmi_peer"] for r in spec], "s-", label="best spectral")
    a1.plot([alpha(r) for r in n2v], [r["nmi_peer"] for r in n2v], "d-", label="PyG Node2Vec")
    a1.set_xlabel("alpha (hardness; detectable iff > 1)")
    a1.set_ylabel("NMI")
    a1.legend()
    a2.plot([alpha(r) for r in spec], [r["tgrep_s"] for r in spec], "o-", label="EDRep (tgrep)")
    a2.plot([alpha(r) for r in spec], [r["peer_s"] for r in spec], "s-", label="spectral")
    a2.plot([alpha(r) for r in n2v], [r["peer_s"] for r in n2v], "d-", label="PyG Node2Vec")
    a2.set_xlabel("alpha")
    a2.set_ylabel("seconds")
    a2.set_yscale("log")
    a2.legend()
    fig.tight_layout()
    out = RESULTS / "edrep_community.png"
    fig.savefig(out, dpi=120)
    print(f"wrote {out.relative_to(RESULTS.parent.parent)}")


# ----------------------------------------------------------------------------- GPU (when available)
def bench_gpu(quick: bool, verbose: bool) -> None:
    """n = m = 1M, d = 128, k = 8: fused Triton kernel vs the plain-torch formula vs exact."""
    if not torch.cuda.is_available():
        print("no CUDA GPU visible: skipping the GPU part")
        return
    from tgrep.kernels.reference import softmax_norm as ref
    from tgrep.ops import cluster_statistics

    n = 100_000 if quick else 1_000_000
    d, k = 128, 8
    x = clustered(n, d, seed=0).cuda()
    y = clustered(n, d, seed=1).cuda()
    labels = kmeans(y, k, seed=0, sample=16384)
    lw, mu, om = cluster_statistics(y, labels, k)
    rep = Report("edrep_gpu", "cuda", n=n, m=n, d=d, k=k)
    with tgrep.use_backend("triton"):
        t_fused = timeit(lambda: tgrep.ops.cluster_log_normalizer(x, lw, mu, om), repeat=10)["median"]
        xg = x.clone().requires_grad_()
        t_fused_fb = timeit(lambda: tgrep.ops.cluster_log_normalizer(xg, lw, mu, om).sum().backward(),
                            repeat=10)["median"]
    t_formula = timeit(lambda: ref.cluster_lse_formula(x, lw, mu, om), repeat=5)["median"]
    xr = x.clone().requires_grad_()
    t_formula_fb = timeit(lambda: ref.cluster_lse_formula(xr, lw, mu, om).sum().backward(), repeat=5)["median"]
    rep.add("fused forward vs plain-torch formula", t_fused, t_formula, peer="einsum formula")
    rep.add("fused fwd+bwd vs plain-torch formula", t_fused_fb, t_formula_fb, peer="einsum formula + autograd")
    sub = x[: n // 10]
    t_exact = timeit(lambda: exact_log_normalizer(sub, y), repeat=1)["median"] * 10
    t_all = timeit(lambda: log_normalizer(x, y, num_clusters=k), repeat=5)["median"]
    rep.add("log_normalizer (k-means incl.) vs exact chunked", t_all, t_exact, peer="exact (10% of rows, x10)")
    rep.finish()


# ----------------------------------------------------------------------------- vs the original package
def bench_original(quick: bool, verbose: bool) -> None:
    """Z estimate at k = 5: tgrep ``log_normalizer`` vs the original ``EDRep.computeZest`` (faiss
    k-means), same rows, same thread count, error against the exact value."""
    try:
        import faiss
    except ImportError:
        print("faiss / the original EDRep package are not installed: skipping (pip install edrep)")
        return
    faiss.omp_set_num_threads(torch.get_num_threads())
    rep = Report("edrep_original", "cpu", threads=torch.get_num_threads(),
                 peer="EDRep.computeZest (pip edrep 0.1.2, faiss-cpu)")
    for n, d in ((10_000, 32), (50_000, 64)) if not quick else ((10_000, 32),):
        x = clustered(n, d, k=8, seed=3)
        idx = np.arange(n)
        xn = x.numpy().astype(np.float64)
        sub = slice(0, 5000)  # error measured on 5,000 rows (exact float64 is O(n m d))
        exact = exact_log_normalizer(x[sub].double(), x.double()).numpy()
        t_ours = timeit(lambda: log_normalizer(x, x, num_clusters=5), repeat=5, warmup=1)["median"]
        t_orig = timeit(lambda: original_compute_zest(xn, idx, k=5), repeat=3, warmup=1)["median"]
        e_ours = np.abs(log_normalizer(x, x, num_clusters=5).double().numpy()[sub] - exact)
        e_orig = np.abs(original_compute_zest(xn, idx, k=5)[sub] - exact)
        rep.add(f"Z estimate k=5, n = m = {n}, d = {d}", t_ours, t_orig, peer="EDRep.computeZest k=5",
                median_abs_err_tgrep=float(np.median(e_ours)), median_abs_err_peer=float(np.median(e_orig)),
                p90_abs_err_tgrep=float(np.quantile(e_ours, 0.9)), p90_abs_err_peer=float(np.quantile(e_orig, 0.9)))
    rep.finish()


# ----------------------------------------------------------------------------- norm regime
def bench_regime(quick: bool, verbose: bool) -> None:
    """EDRepLoss (defaults) vs the exact loss on 4 Gaussian clusters, d = 32, mean norms 1, 2, 4:
    relative error, whether the sampled check warned, and its sampled error."""
    import warnings

    n, d = (2000, 32) if quick else (8000, 32)
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, d, generator=g)
    v = centers[torch.randint(0, 4, (n,), generator=g)] + 0.5 * torch.randn(n, d, generator=g)
    idx = torch.stack([torch.arange(n).repeat_interleave(10), torch.randint(0, n, (10 * n,), generator=g)])
    target = (idx, torch.ones(10 * n))
    rep = Report("edrep_regime", "cpu", n=n, d=d, data="4 Gaussian clusters, spread 0.5, 10 random targets/row",
                 target="within 5% of exact, or a warning")
    for norm in (1.0, 2.0, 4.0):
        x = norm * v / v.norm(dim=1, keepdim=True).mean()
        exact = float(EDRepLoss(mode="exact")(x, x, target))
        for k in (1, 4):
            loss_fn = EDRepLoss(num_clusters=k)
            with warnings.catch_warnings(record=True) as rec:
                warnings.simplefilter("always")
                est = float(loss_fn(x, x, target))
            warned = any("EDRepLoss" in str(r.message) for r in rec)
            rel = (est - exact) / abs(exact)
            rep.add(f"mean norm {norm:g}, num_clusters={k}", est_loss=est, exact_loss=exact, rel_error=rel,
                    warned=warned, sampled_error=loss_fn.sampled_error,
                    ok=bool(abs(rel) <= 0.05 or warned))
    rep.finish()


_TREE_WORKER = r"""
import sys
tree = sys.argv[1]
sys.path.insert(0, tree)
import torch
torch.set_num_threads(1)
import tgrep
from tgrep.ops import cluster_log_normalizer, log_normalizer
assert tgrep.__file__.startswith(tree), tgrep.__file__
n, d = int(sys.argv[2]), 64
g = torch.Generator().manual_seed(0)
x = torch.randn(n, d, generator=g) / d ** 0.5
y = torch.randn(n, d, generator=g) / d ** 0.5
xg = x.clone().requires_grad_()
k = 8
lw = torch.log(torch.full((k,), 1.0 / k))
mu = torch.randn(k, d, generator=g) / d
om = torch.randn(k, d, d, generator=g) / d ** 2
om = 0.5 * (om + om.transpose(1, 2))
def fb(k):
    log_normalizer(xg, y, num_clusters=k).sum().backward()
    xg.grad = None
cases = {
    "log_normalizer k=1": lambda: log_normalizer(x, y, num_clusters=1),
    "log_normalizer k=8": lambda: log_normalizer(x, y, num_clusters=8),
    "log_normalizer k=1 fwd+bwd": lambda: fb(1),
    "log_normalizer k=8 fwd+bwd": lambda: fb(8),
    "cluster_log_normalizer k=8": lambda: cluster_log_normalizer(x, lw, mu, om),
}
"""


def bench_trees(trees: list[str], quick: bool) -> None:
    """This checkout against others on the same inputs (min over interleaved rounds)."""
    here = str(Path(__file__).resolve().parents[1])
    arms = [("this tree", here)] + [(t, t) for t in trees]
    n = 5_000 if quick else 20_000
    cases = ["log_normalizer k=1", "log_normalizer k=8", "log_normalizer k=1 fwd+bwd", "log_normalizer k=8 fwd+bwd",
             "cluster_log_normalizer k=8"]
    rounds = 5 if quick else 30  # the cases take 10-100 ms: many rounds for a stable minimum
    t = time_trees(_TREE_WORKER, arms, cases, rounds, (str(n),))
    rep = Report("edrep_trees", "cpu", threads=1, n=n, m=n, d=64, rounds=rounds,
                 trees=[f"{label}: {path}" for label, path in arms],
                 note="min over interleaved rounds; tgrep_s = this tree, peer_s = the other tree")
    for label, _ in arms[1:]:
        for case in cases:
            a, b = min(t[("this tree", case)]), min(t[(label, case)])
            rep.add(case, a, b, peer=label, ratio=a / b,
                    median_ratio=float(np.median(t[("this tree", case)]) / np.median(t[(label, case)])))
    rep.finish()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller problems")
    ap.add_argument("--part", default="all", choices=("speed", "memory", "accuracy", "community", "gpu", "original", "regime",
                                                       "all"))
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--trees", default=None, help="comma-separated other checkouts to time against (1 thread each)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared, oversubscribed 2-core machine OpenMP "
                         "barriers make 2 threads many times slower for small ops; both sides get the same)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    verbose = not args.quiet
    if args.trees:
        bench_trees([t for t in args.trees.split(",") if t], args.quick)
        return
    if args.part in ("speed", "all"):
        bench_speed(args.quick, verbose)
    if args.part in ("memory", "all"):
        bench_memory(args.quick, verbose)
    if args.part in ("accuracy", "all"):
        bench_accuracy(args.quick, verbose)
    if args.part in ("community", "all"):
        bench_community(args.quick, verbose)
    if args.part in ("gpu", "all"):
        bench_gpu(args.quick, verbose)
    if args.part in ("original", "all"):
        bench_original(args.quick, verbose)
    if args.part in ("regime", "all"):
        bench_regime(args.quick, verbose)


if __name__ == "__main__":
    main()
