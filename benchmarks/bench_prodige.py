"""PRODIGE benchmarks (Mazur et al., NeurIPS 2019): the paper's sanity check, distance-preserving
compression of scikit-learn's digits against MDS/PCA, training speed against a scipy
implementation of the same update, collaborative filtering and classification with
``ProdigeEmbedding`` (training-step time against nn.Embedding, eager and torch.compile).

    python benchmarks/bench_prodige.py [--quick] [--only sanity,digits,speed,cf,clf,embedding,hierarchy]

Writes ``benchmarks/results/prodige-<device>.json`` (and ``prodige_digits_curve.png``).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import RESULTS, Report, timeit  # noqa: E402
from tgrep.datasets import weighted_erdos_renyi  # noqa: E402
from tgrep.models import ProdigeCompression  # noqa: E402
from tgrep.models.prodige import select_edges  # noqa: E402
from tgrep.nn import ProdigeEmbedding, ProdigeGraph  # noqa: E402
from tgrep.ops import shortest_paths  # noqa: E402
from tgrep.utils import progress, to_csr  # noqa: E402
from tgrep.demos._prodige_peer import ScipyProdige  # noqa: E402


# ----------------------------------------------------------------------------- data
def digits():
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().data, dtype=torch.float32)
    D = torch.cdist(x.double(), x.double())
    iu = torch.triu_indices(len(x), len(x), 1)
    mean = D[iu[0], iu[1]].mean()
    return (x / mean.float()), (D / mean).float()


def pair_mse(P, D):
    return float(((P.double() - D.double()) ** 2).mean())


# ----------------------------------------------------------------------------- sanity check
def essential_edges(ei, w, D):
    """Edges of the true graph that lie on every shortest path between their endpoints:
    w_uv == d(u, v) and no other path is as short (removing it changes a distance)."""
    n = D.size(0)
    out = []
    for k in range(ei.size(1)):
        keep = torch.ones(ei.size(1), dtype=torch.bool)
        keep[k] = False
        ip, ix, ww = to_csr(ei[:, keep], n, w[keep].double(), undirected=True)
        u, v = int(ei[0, k]), int(ei[1, k])
        d = shortest_paths(ip, ix, ww, torch.tensor([u]), torch.tensor([[v]]))
        if float(d) > float(D[u, v]) + 1e-9:
            out.append((min(u, v), max(u, v)))
    return out


def sanity(report, quick, verbose):
    graphs = 10 if quick else 100
    gen = torch.Generator().manual_seed(0)
    rec_all, err_ok, compact, errs, kept_edges, true_edges, need_edges = 0, 0, 0, [], [], [], []
    t0 = time.perf_counter()
    for i in progress(range(graphs), verbose=verbose, desc="sanity ER graphs"):
        n = int(torch.randint(10, 26, (1,), generator=gen))
        ei, w = weighted_erdos_renyi(n, 0.25, generator=gen)
        D = shortest_paths(*to_csr(ei, n, w.double(), undirected=True), torch.arange(n))
        m = ProdigeCompression(verbose=False, seed=i)  # the defaults
        m.fit(distances=D.float())
        P = m.pairwise_distances().double()
        err = pair_mse(P, D)
        errs.append(err)
        kept_ei, _ = m.graph.prune()
        kept = {(min(a, b), max(a, b)) for a, b in kept_ei.T.tolist()}
        need = essential_edges(ei, w, D)
        rec_all += all(e in kept for e in need)
        err_ok += err < 1e-3
        compact += len(kept) <= 1.5 * len(need)
        kept_edges.append(len(kept))
        true_edges.append(ei.size(1))
        need_edges.append(len(need))
    report.add("sanity: ER 10-25 vertices, p=0.25, U(0,1), defaults", time.perf_counter() - t0,
               peer="paper 91/100, 100/100", graphs=graphs, recovered_all_path_edges=rec_all, error_below_1e_3=err_ok,
               kept_at_most_1_5x_needed=compact, median_error=float(np.median(errs)), max_error=float(np.max(errs)),
               mean_kept_edges=float(np.mean(kept_edges)), mean_true_edges=float(np.mean(true_edges)),
               mean_needed_edges=float(np.mean(need_edges)),
               median_kept_over_needed=float(np.median(np.array(kept_edges) / np.maximum(need_edges, 1))))


# ----------------------------------------------------------------------------- digits compression
def digits_compression(report, quick, verbose):
    """``ProdigeCompression(target_params_per_instance=B).fit(x)`` with the defaults, against
    metric MDS and PCA with B dimensions (all pairs of the 1,797 digits, distances / mean)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import MDS

    x, D = digits()
    if quick:
        x, D = x[:400], D[:400, :400]
    history = {}
    for budget in (4, 8):
        t0 = time.perf_counter()
        z = PCA(budget).fit_transform(x.numpy())
        pca = pair_mse(torch.cdist(torch.tensor(z), torch.tensor(z)), D)
        from threadpoolctl import threadpool_limits

        t0 = time.perf_counter()
        with threadpool_limits(1):  # MDS's numpy/BLAS on one thread, like torch's (set in main)
            mds = MDS(budget, dissimilarity="precomputed", metric=True, n_init=1, max_iter=300, random_state=0,
                      normalized_stress=False).fit_transform(D.double().numpy())
        t_mds = time.perf_counter() - t0
        mds = pair_mse(torch.cdist(torch.tensor(mds), torch.tensor(mds)), D)
        t0 = time.perf_counter()
        m = ProdigeCompression(target_params_per_instance=float(budget), verbose=verbose, seed=0).fit(x)
        t_fit = time.perf_counter() - t0
        P = m.pairwise_distances()
        mse = pair_mse(P, D)
        ppi = m.parameters_per_instance()
        unreachable = int((P >= float(m.graph.default_distance)).sum())  # where soft mode / default matter
        report.add(f"digits {x.size(0)}x64 <= {budget} params/item: PRODIGE defaults vs MDS-{budget}", t_fit, t_mds,
                   peer=f"sklearn MDS({budget})", prodige_mse=mse, mds_mse=mds, pca_mse=pca, params_per_instance=ppi,
                   mse_ratio_mds=mds / mse, mse_ratio_pca=pca / mse, fit_time_ratio_mds=t_fit / t_mds,
                   unreachable_pairs=unreachable, threads=torch.get_num_threads())
        history[budget] = {"history": m.history_, "mds_mse": mds, "pca_mse": pca, "prodige_mse": mse,
                           "params_per_instance": ppi}
    if not quick:
        (RESULTS / "prodige_digits_history.json").write_text(json.dumps(history[4], indent=1) + "\n")
        plot_digits_curve(RESULTS / "prodige_digits_history.json")


def plot_digits_curve(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = json.loads(Path(path).read_text())
    ep = [r["epoch"] for r in h["history"]]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    ax[0].semilogy(ep, [r["loss"] for r in h["history"]], label="PRODIGE training loss (sampled graphs; then pruning rounds + fine-tune)")
    ax[0].axhline(h["mds_mse"], color="C1", ls="--", label="metric MDS, 4 dims")
    ax[0].axhline(h["pca_mse"], color="C2", ls=":", label="PCA, 4 dims")
    ax[0].axhline(h["prodige_mse"], color="C0", ls="-.", label="PRODIGE final (deterministic graph)")
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("distance MSE")
    ax[0].legend(fontsize=7)
    ax[1].plot(ep, [r["params_per_instance"] for r in h["history"]])
    ax[1].axhline(4, color="k", ls="--", lw=0.8)
    ax[1].set_xlabel("epoch")
    ax[1].set_ylabel("parameters per item (N + 2|E|)/N")
    ax[1].set_yscale("log")
    fig.suptitle("PRODIGE distance-preserving compression, digits 1797x64")
    fig.tight_layout()
    fig.savefig(RESULTS / "prodige_digits_curve.png", dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- speed vs scipy
def speed(report, quick, verbose):
    x, D = digits()
    n = x.size(0)
    bs, T = 128, 64
    rows = 256 if quick else n
    batches = []
    gen = torch.Generator().manual_seed(1)
    order = torch.randperm(n, generator=gen)[:rows]
    for s in range(0, rows, bs):
        src = order[s:s + bs]
        batches.append((src, torch.randint(0, n, (src.numel(), T), generator=gen)))

    def make():
        torch.manual_seed(0)
        g = ProdigeGraph.from_vectors(x, 32, 32, default_distance=5.0)
        return g, torch.optim.Adam(g.parameters(), lr=0.05)

    g, opt = make()

    def tgrep_epoch():
        for src, dst in batches:
            per = ((g(src, dst) - D[src[:, None], dst]) ** 2).mean(1)
            loss = per.mean() + 1.0 * g.sparsity() + g.reinforce(per)
            opt.zero_grad()
            loss.backward()
            opt.step()

    g2, opt2 = make()
    peer = ScipyProdige(g2)

    def scipy_epoch():
        for src, dst in batches:
            peer.step(src.numpy(), dst.numpy(), D[src[:, None], dst].double().numpy(), 1.0, opt2)

    t = timeit(tgrep_epoch, repeat=1 if not quick else 2, warmup=1)
    s = timeit(scipy_epoch, repeat=1, warmup=0)
    report.add(f"one training epoch, digits ({rows} rows x {T} targets, |E|={g.num_edges})", t["median"],
               s["median"], peer="scipy dijkstra per row + numpy", threads=torch.get_num_threads())


# ----------------------------------------------------------------------------- collaborative filtering
def planted_cf(num_users=400, num_items=300, groups=8, per_user=12, noise=0.15, seed=0):
    """Users and items in ``groups`` latent groups with a hierarchy (pairs of groups are related):
    a user picks items of its group (most), of its sibling group, or anything (noise)."""
    g = torch.Generator().manual_seed(seed)
    ug = torch.randint(0, groups, (num_users,), generator=g)
    ig = torch.arange(num_items) % groups
    pairs = []
    for u in range(num_users):
        r = torch.rand(per_user, generator=g)
        grp = torch.where(r < 0.7, ug[u], torch.where(r < 1 - noise, ug[u] ^ 1, torch.randint(0, groups, (1,),
                                                                                               generator=g)))
        for k in range(per_user):
            cand = (ig == grp[k]).nonzero().squeeze(1)
            pairs.append((u, int(cand[torch.randint(0, cand.numel(), (1,), generator=g)])))
    inter = torch.tensor(sorted(set(pairs))).T
    # leave one interaction per user out for testing
    test = {}
    keep = torch.ones(inter.size(1), dtype=torch.bool)
    for j in torch.randperm(inter.size(1), generator=g).tolist():
        u = int(inter[0, j])
        if u not in test and (inter[0] == u).sum() > 2:
            test[u] = int(inter[1, j])
            keep[j] = False
    return inter[:, keep], test


def hit_rate(score, train, test, k=10):
    """score [U, I] (higher = better); train items excluded; HR@k over the held-out items."""
    score = score.clone()
    score[train[0], train[1]] = -float("inf")
    top = score.topk(k, dim=1).indices
    hits = [int(test[u] in top[u].tolist()) for u in test]
    return sum(hits) / len(hits)


def cf_loss(d_pos, d_neg):
    """eq. 6: -log softmax of the positive among (positive, negatives), per user row."""
    logits = torch.cat([-d_pos[:, None], -d_neg], 1)
    return -torch.log_softmax(logits, 1)[:, 0]


def cf(report, quick, verbose):
    U, I = 400, 300
    train, test = planted_cf(U, I)
    epochs = 20 if quick else 60
    neg = 20
    pos_of = [train[1][train[0] == u] for u in range(U)]
    # PRODIGE: bipartite + kNN candidate edges; budget ~4 numbers per user/item (lambda tuned)
    torch.manual_seed(0)
    g = ProdigeGraph.bipartite(train, U, I, user_knn=8, item_knn=8, default_distance=10.0)
    opt = torch.optim.Adam(g.parameters(), lr=0.05)
    lam = g.num_edges / 100
    t0 = time.perf_counter()
    for ep in progress(range(epochs), verbose=verbose, desc="CF PRODIGE"):
        for users in torch.randperm(U).split(100):
            pos = torch.stack([pos_of[u][torch.randint(0, pos_of[u].numel(), (1,))][0] for u in users.tolist()])
            negs = torch.randint(0, I, (users.numel(), neg))
            d = g(users, torch.cat([pos[:, None], negs], 1) + U)
            per = cf_loss(d[:, 0], d[:, 1:])
            loss = per.mean() + lam * g.sparsity() + g.reinforce(per)
            opt.zero_grad()
            loss.backward()
            opt.step()
            soft = 1 + 2 * float(g.edge_prob.detach().sum()) / (U + I)  # same controller as ProdigeCompression
            lam *= math.exp(0.03 * min(1.0, max(-1.0, math.log(soft / 4.0))))
    # land on the budget as ProdigeCompression does: max-probability spanning forest + most
    # probable edges, then fine-tune the lengths of that deterministic graph (path gradients)
    keep = select_edges(g.edge_index, g.presence_logit, U + I, (4 - 1) * (U + I) // 2)
    with torch.no_grad():
        drop = torch.ones(g.num_edges, dtype=torch.bool)
        drop[keep] = False
        g.presence_logit[drop] = g.presence_logit[drop].clamp(max=-1.0)
        g.presence_logit[keep] = g.presence_logit[keep].clamp(min=1e-3)
    g.eval()
    opt = torch.optim.Adam([g.weight_logit], lr=0.05)
    for ep in range(epochs // 3):
        for users in torch.randperm(U).split(100):
            pos = torch.stack([pos_of[u][torch.randint(0, pos_of[u].numel(), (1,))][0] for u in users.tolist()])
            negs = torch.randint(0, I, (users.numel(), neg))
            d = g(users, torch.cat([pos[:, None], negs], 1) + U)
            loss = cf_loss(d[:, 0], d[:, 1:]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    t_prodige = time.perf_counter() - t0
    with torch.no_grad():
        dist = g(torch.arange(U), torch.arange(U, U + I).expand(U, I))
    hr_p = hit_rate(-dist, train, test)
    ppi = g.num_stored_parameters() / (U + I)
    # Euclidean metric learning with the same objective and ~the same numbers per user/item
    dim = 4  # the same budget: 4 numbers per user/item
    torch.manual_seed(0)
    eu = torch.nn.Parameter(0.1 * torch.randn(U, dim))
    ei = torch.nn.Parameter(0.1 * torch.randn(I, dim))
    opt = torch.optim.Adam([eu, ei], lr=0.05)
    t0 = time.perf_counter()
    for ep in range(epochs * 3):
        for users in torch.randperm(U).split(100):
            pos = torch.stack([pos_of[u][torch.randint(0, pos_of[u].numel(), (1,))][0] for u in users.tolist()])
            negs = torch.randint(0, I, (users.numel(), neg))
            d = (eu[users][:, None] - ei[torch.cat([pos[:, None], negs], 1)]).norm(dim=-1)
            loss = cf_loss(d[:, 0], d[:, 1:]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    t_ml = time.perf_counter() - t0
    hr_m = hit_rate(-torch.cdist(eu.detach(), ei.detach()), train, test)
    pop = torch.bincount(train[1], minlength=I).float().expand(U, I)
    report.add("collaborative filtering HR@10 (planted groups)", t_prodige, t_ml, peer=f"Euclidean metric learning, dim {dim}",
               prodige_hr10=hr_p, metric_learning_hr10=hr_m, popularity_hr10=hit_rate(pop, train, test),
               prodige_params_per_node=ppi, users=U, items=I, epochs=epochs)


# ----------------------------------------------------------------------------- classification
def planted_sequences(num=2000, vocab=200, length=20, seed=0):
    """Binary task on token sequences: tokens belong to 10 topics; the label is whether the
    sequence's dominant topic is in the first half of the topics (needs topic-aware embeddings)."""
    g = torch.Generator().manual_seed(seed)
    topic = torch.arange(vocab) % 10
    dom = torch.randint(0, 10, (num,), generator=g)
    x = torch.randint(0, vocab, (num, length), generator=g)
    own = torch.rand(num, length, generator=g) < 0.35
    same = (torch.randint(0, vocab // 10, (num, length), generator=g) * 10 + dom[:, None])
    x = torch.where(own, same, x)
    y = (dom < 5).long()
    return x, y, topic


class ConvClassifier(torch.nn.Module):
    """The paper's Sec. 4.3 model: embedding -> Conv1D(32) -> global max pool -> ReLU -> linear."""

    def __init__(self, emb, dim):
        super().__init__()
        self.emb, self.conv, self.lin = emb, torch.nn.Conv1d(dim, 32, 3, padding=1), torch.nn.Linear(32, 2)

    def forward(self, x):
        return self.lin(self.conv(self.emb(x).transpose(1, 2)).amax(-1).relu())


def clf(report, quick, verbose):
    V, K = 200, 8
    x, y, _ = planted_sequences(vocab=V)
    xtr, ytr, xte, yte = x[:1500], y[:1500], x[1500:], y[1500:]
    epochs = 5 if quick else 15
    res = {}
    for name in ("prodige", "embedding"):
        torch.manual_seed(0)
        if name == "prodige":
            emb = ProdigeEmbedding(V, K)  # defaults: as many stored numbers as nn.Embedding(V, K)
        else:
            emb = torch.nn.Embedding(V, K)
        model = ConvClassifier(emb, K)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        t0 = time.perf_counter()
        for ep in progress(range(epochs), verbose=verbose, desc=f"classifier {name}"):
            for idx in torch.randperm(1500).split(50):
                loss = torch.nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
                if name == "prodige":
                    loss = loss + emb.reinforce(loss)
                opt.zero_grad()
                loss.backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            acc = float((model(xte).argmax(1) == yte).float().mean())
        size = emb.num_stored_parameters() if name == "prodige" else V * K
        res[name] = (acc, size, time.perf_counter() - t0)
    # nn.Embedding at the PRODIGE graph's size (numbers per token)
    dim_eq = max(1, round(res["prodige"][1] / V))
    torch.manual_seed(0)
    model = ConvClassifier(torch.nn.Embedding(V, dim_eq), dim_eq)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for ep in range(epochs):
        for idx in torch.randperm(1500).split(50):
            loss = torch.nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc_eq = float((model(xte).argmax(1) == yte).float().mean())
    report.add("classification: ProdigeEmbedding -> Conv1D -> max pool -> linear", res["prodige"][2],
               res["embedding"][2], peer=f"nn.Embedding({V}, {K})", prodige_acc=res["prodige"][0],
               prodige_stored_numbers=res["prodige"][1], embedding_acc=res["embedding"][0],
               embedding_numbers=V * K, equal_size_embedding_dim=dim_eq, equal_size_embedding_acc=acc_eq)


class BagOfWords(torch.nn.Module):
    """Mean of the token embeddings -> linear (the issue's step-time model)."""

    def __init__(self, emb, dim):
        super().__init__()
        self.emb, self.lin = emb, torch.nn.Linear(dim, 2)

    def forward(self, x):
        return self.lin(self.emb(x).mean(1))


def _bow_step(model, x, y, opt, reinforce):
    loss = torch.nn.functional.cross_entropy(model(x), y)
    if reinforce:
        loss = loss + model.emb.reinforce(loss)
    opt.zero_grad()
    loss.backward()
    opt.step()


def _cpu_time(fn, repeat, warmup=2):
    """Median CPU time of this thread per call (``time.thread_time``): what the step costs,
    whatever else the shared machine runs (wall-clock time of a long step inflates under load)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.thread_time()
        fn()
        times.append(time.thread_time() - t0)
    return float(np.median(times))


def embedding_step(report, quick, verbose):
    """Training step (forward + backward + Adam) of a bag-of-words model, batch 64 x 50 tokens,
    ProdigeEmbedding(2000, 16) (defaults: the stored numbers of nn.Embedding(2000, 16), cached
    search trees, 3 of the 16 anchors searched afresh per step (refresh_every=6)) against nn.Embedding(2000, 16); without and with
    REINFORCE; the ablation refresh_every=1 (every anchor searched at every step); eager and
    torch.compile. Wall-clock medians (the harness) and CPU-time medians of the calling thread,
    the arms interleaved step by step; both arms run with the same torch.get_num_threads()
    (``--threads``, default 1)."""
    V, K = 2000, 16
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, V, (64, 50), generator=gen), torch.randint(0, 2, (64,), generator=gen)
    reps = 5 if quick else 20
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    base = BagOfWords(torch.nn.Embedding(V, K), K)
    opt = torch.optim.Adam(base.parameters(), lr=0.01)
    base_step = (lambda o: lambda: _bow_step(base, x, y, o, False))(opt)
    t_base = timeit(base_step, repeat=reps * 5, warmup=3)["median"]
    # a fresh layer trains on its over-complete candidate graph (hub vertices) until its pruning
    # rounds (training steps 250-390) bring it to the budget; "pruned" times the steps after that
    # (the model first trained through the rounds on random batches of the same shape)
    for reinforce, kwargs, pruned in ((False, {}, False), (False, {}, True), (True, {}, False),
                                      (False, {"refresh_every": 1}, False)):
        torch.manual_seed(0)
        model = BagOfWords(ProdigeEmbedding(V, K, **kwargs), K)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        while pruned and not model.emb.pruning_done():
            _bow_step(model, torch.randint(0, V, x.shape), torch.randint(0, 2, y.shape), opt, False)
        step = (lambda m, o, rf: lambda: _bow_step(m, x, y, o, rf))(model, opt, reinforce)
        t = timeit(step, repeat=reps, warmup=2)["median"]
        # CPU time and wall time, the two arms interleaved step by step (5 base steps per PRODIGE step)
        cs, cb, ws, wb = [], [], [], []
        for _ in range(reps * 2):
            w0 = time.perf_counter()
            cs.append(_cpu_time(step, 1, warmup=0))
            ws.append(time.perf_counter() - w0)
            for _ in range(5):
                w0 = time.perf_counter()
                cb.append(_cpu_time(base_step, 1, warmup=0))
                wb.append(time.perf_counter() - w0)
        c, c_base = float(np.median(cs)), float(np.median(cb))
        w, w_base = float(np.median(ws)), float(np.median(wb))
        label = "".join(f", {k}={v}" for k, v in kwargs.items())
        phase = "pruned to the budget" if pruned else "candidate graph"
        report.add(f"bag-of-words step, ProdigeEmbedding({V}, {K}{label}){' + reinforce' if reinforce else ''}, "
                   f"64x50, {phase}",
                   t, t_base, peer=f"nn.Embedding({V}, {K}) step", step_ratio=t / t_base, cpu_s=c,
                   peer_cpu_s=c_base, cpu_step_ratio=c / c_base, interleaved_wall_s=w, peer_interleaved_wall_s=w_base,
                   interleaved_wall_ratio=w / w_base, threads=threads, refresh_every=model.emb.refresh_every,
                   stored_numbers=model.emb.num_stored_parameters(), embedding_numbers=V * K,
                   candidate_edges=model.emb.graph.num_edges, kept_edges=int(model.emb.graph.kept().sum()),
                   phase=phase)
    # torch.compile: the embedding forward compiled (fullgraph), the search stays one opaque op
    torch.manual_seed(0)
    model = BagOfWords(ProdigeEmbedding(V, K), K)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    t_eager = timeit(lambda: _bow_step(model, x, y, opt, False), repeat=reps, warmup=2)["median"]
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    t0 = time.perf_counter()
    _bow_step(compiled, x, y, opt, False)
    t_compile = time.perf_counter() - t0
    t_comp = timeit(lambda: _bow_step(compiled, x, y, opt, False), repeat=reps, warmup=2)["median"]
    report.add(f"torch.compile(fullgraph, dynamic) bag-of-words ProdigeEmbedding({V}, {K}) step", t_comp, t_eager,
               peer="eager step", compile_s=t_compile, step_ratio_eager=t_comp / t_eager)


def _train_bow(emb, dim, x, y, classes, epochs, reinforce, seed=0, norm=False):
    """Bag-of-words classifier over ``emb`` (mean -> [LayerNorm ->] linear): Adam(lr=0.01),
    batch 64; returns the trained model in eval mode."""
    torch.manual_seed(seed)
    model = BagOfWords(emb, dim)
    lin = torch.nn.Linear(dim, classes)
    model.lin = torch.nn.Sequential(torch.nn.LayerNorm(dim), lin) if norm else lin
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(epochs):
        for idx in torch.randperm(x.size(0)).split(64):
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            if reinforce:
                loss = loss + emb.reinforce(loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def hierarchy(report, quick, verbose):
    """Accuracy at equal stored numbers on planted hierarchical clusters
    (:func:`tgrep.datasets.hierarchical_sequences`: 1000 items in 4 x 4 x 4 leaf clusters, label =
    the level-1 cluster, 16 classes; 3000 training, 1000 test sequences of 30 tokens): a
    bag-of-words classifier (mean -> linear, and mean -> LayerNorm -> linear) over
    ProdigeEmbedding(V, K) with its defaults (budget = K numbers per item), with and without
    REINFORCE, against nn.Embedding(V, K); and at a small budget, ProdigeEmbedding(V, K,
    budget=4) against nn.Embedding(V, 4). Same optimiser (Adam, lr 0.01), epochs and head for
    every arm; test accuracy, mean over seeds. The 470 training steps include the layer's
    pruning rounds (steps 250-390), so the stored numbers reported are those of the pruned graph."""
    from tgrep.datasets import hierarchical_sequences

    V, K = 1000, 16
    seeds = (0,) if quick else (0, 1, 2)
    epochs = 4 if quick else 10
    arms = {
        f"ProdigeEmbedding({V}, {K})": (lambda: ProdigeEmbedding(V, K), K, False),
        f"ProdigeEmbedding({V}, {K}) + reinforce": (lambda: ProdigeEmbedding(V, K), K, True),
        f"nn.Embedding({V}, {K})": (lambda: torch.nn.Embedding(V, K), K, False),
        f"ProdigeEmbedding({V}, {K}, budget=4)": (lambda: ProdigeEmbedding(V, K, budget=4.0), K, False),
        f"nn.Embedding({V}, 4)": (lambda: torch.nn.Embedding(V, 4), 4, False),
    }
    pairs = ((f"ProdigeEmbedding({V}, {K})", f"nn.Embedding({V}, {K})"),
             (f"ProdigeEmbedding({V}, {K}) + reinforce", f"nn.Embedding({V}, {K})"),
             (f"ProdigeEmbedding({V}, {K}, budget=4)", f"nn.Embedding({V}, 4)"))
    for norm in (False, True):
        head = "mean -> LayerNorm -> linear" if norm else "mean -> linear"
        rows = {}
        for seed in progress(seeds, verbose=verbose, desc=f"hierarchy ({head})"):
            gen = torch.Generator().manual_seed(seed)
            x, y, _ = hierarchical_sequences(4000, V, (4, 4, 4), 30, generator=gen)
            classes = int(y.max()) + 1
            xtr, ytr, xte, yte = x[:3000], y[:3000], x[3000:], y[3000:]
            for name, (make, dim, rf) in arms.items():
                torch.manual_seed(seed)
                emb = make()
                t0 = time.perf_counter()
                model = _train_bow(emb, dim, xtr, ytr, classes, epochs, rf, seed, norm)
                sec = time.perf_counter() - t0
                with torch.no_grad():
                    acc = float((model(xte).argmax(1) == yte).float().mean())
                size = emb.num_stored_parameters() if isinstance(emb, ProdigeEmbedding) else emb.weight.numel()
                rows.setdefault(name, []).append((acc, size, sec))
        mean = {k: [sum(r[i] for r in v) / len(v) for i in range(3)] for k, v in rows.items()}
        for name, peer in pairs:
            a, b = mean[name], mean[peer]
            report.add(f"hierarchy accuracy ({head}): {name}", a[2], b[2], peer=peer, prodige_acc=a[0],
                       peer_acc=b[0], acc_gain=a[0] - b[0], prodige_stored_numbers=a[1], peer_numbers=b[1],
                       seeds=len(seeds), epochs=epochs, per_seed_acc=[r[0] for r in rows[name]],
                       per_seed_peer_acc=[r[0] for r in rows[peer]])


SECTIONS = {"sanity": sanity, "digits": digits_compression, "speed": speed, "cf": cf, "clf": clf,
            "embedding": embedding_step, "hierarchy": hierarchy}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default=",".join(SECTIONS))
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: the shared 2-core machine thrashes with more; scipy uses 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    report = Report("prodige", "cpu", quick=args.quick)
    for name in args.only.split(","):
        SECTIONS[name](report, args.quick, not args.quiet)
    suffix = "" if args.only == ",".join(SECTIONS) else "-" + args.only.replace(",", "-")
    report.finish(RESULTS / f"prodige{suffix}-{report.meta['device']}{'-quick' if args.quick else ''}.json")


if __name__ == "__main__":
    main()
