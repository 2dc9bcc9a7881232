"""A straightforward PRODIGE training step with one scipy Dijkstra per row: the peer that
``benchmarks/bench_prodige.py`` and the PRODIGE demo time tgrep against."""
from __future__ import annotations

import numpy as np
import torch

from ..nn import ProdigeGraph


class ScipyProdige:
    """The same training step as ProdigeGraph + reinforce(per_row, baseline='loo') + Adam,
    written straightforwardly: one scipy Dijkstra per row on that row's sampled graph (all
    edges sampled with numpy), numpy path gradients and REINFORCE over the out-edges of the
    vertices with d <= the row's largest target distance (the same edges tgrep's search reads)."""

    def __init__(self, graph: ProdigeGraph):
        self.g = graph
        self.indptr = graph.indptr.numpy()
        self.indices = graph.indices.numpy()
        self.perm = graph.perm.numpy()
        self.n = graph.num_nodes
        self.edge_src = np.repeat(np.arange(self.n), np.diff(self.indptr))
        self.keys = self.edge_src * self.n + self.indices  # sorted (CSR order), unique
        self.rng = np.random.default_rng(0)

    def step(self, src, dst, target, lam, opt):
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import dijkstra

        g, n = self.g, self.n
        wl = g.weight_logit.detach().numpy().astype(np.float64)
        w = np.logaddexp(0, wl)[self.perm]
        p = (1 / (1 + np.exp(-g.presence_logit.detach().numpy().astype(np.float64))))[self.perm]
        B, T = dst.shape
        dd = float(g.default_distance)
        losses, dists, masks, settled, preds = np.zeros(B), np.zeros((B, T)), [], [], []
        for b in range(B):
            mask = self.rng.random(p.size) < p
            cnt = np.bincount(self.edge_src[mask], minlength=n)
            ip = np.concatenate([[0], np.cumsum(cnt)])
            sub = csr_matrix((w[mask] + 1e-300, self.indices[mask], ip), shape=(n, n))
            dist, pred = dijkstra(sub, directed=True, indices=int(src[b]), return_predecessors=True)
            d = dist[dst[b]]
            dmax = d.max()
            d = np.where(np.isinf(d), dd, d)
            dists[b] = d
            losses[b] = ((d - target[b]) ** 2).mean()
            masks.append(mask)
            settled.append(dist <= dmax)
            preds.append(pred)
        adv = (losses - (losses.sum() - losses) / (B - 1)) / B
        gw = np.zeros(p.size)
        gp = np.zeros(p.size)
        for b in range(B):
            gd = 2 * (dists[b] - target[b]) / T / B
            cur, gg = dst[b].copy(), gd.copy()
            ok = preds[b][cur] >= 0
            cur, gg = cur[ok], gg[ok]
            while cur.size:
                pv = preds[b][cur]
                e = np.searchsorted(self.keys, pv * n + cur)
                np.add.at(gw, e, gg)
                cur = pv
                ok = preds[b][cur] >= 0
                cur, gg = cur[ok], gg[ok]
            insp = settled[b][self.edge_src]
            gp[insp] += adv[b] * (masks[b][insp] - p[insp])
        M = g.num_edges
        sig_w = 1 / (1 + np.exp(-wl))
        grad_wl = np.bincount(self.perm, gw, minlength=M) * sig_w
        pm = 1 / (1 + np.exp(-g.presence_logit.detach().numpy().astype(np.float64)))
        grad_pl = np.bincount(self.perm, gp, minlength=M) + lam * pm * (1 - pm) / M
        g.weight_logit.grad = torch.tensor(grad_wl, dtype=torch.float32)
        g.presence_logit.grad = torch.tensor(grad_pl, dtype=torch.float32)
        opt.step()
        return losses.mean()
