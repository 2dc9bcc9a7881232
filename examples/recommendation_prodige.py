"""Implicit-feedback recommendation with ``ProdigeEmbedding`` item vectors (PRODIGE, Sec. 4.3).

Matrix factorisation trained with the BPR loss: a user is an ordinary ``nn.Embedding`` row, an
item is ``ProdigeEmbedding`` -- its vector holds the shortest-path distances from the item
to ``K`` anchor vertices of a learnable stochastic graph, so an item costs a few edges instead
of ``K`` floats. The graph's edge parameters get *sparse* gradients (``sparse=True``) and
``torch.optim.SparseAdam``; the edge presence probabilities are trained by REINFORCE with one
extra line, ``emb.reinforce(loss)``, plus the sparsity penalty ``lam * emb.sparsity()``.
The peer is the same model with ``nn.Embedding`` items, same data, same steps, at the same
memory per item as the pruned graph (the paper's comparison) and at ``K`` floats.

    python examples/recommendation_prodige.py                  # ~20 s on 2 CPU cores
    python examples/recommendation_prodige.py --users 5000 --items 3000 --steps 3000

The data are synthetic (users prefer a few of ``--topics`` item topics; nothing is downloaded);
the metric is recall@10 on held-out interactions.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from tgrep.nn import ProdigeEmbedding
from tgrep.utils.progress import progress


def synthetic(users: int, items: int, topics: int, per_user: int, seed: int):
    """``(train [2, nnz], test [2, users])``: each user draws ``per_user + 1`` items from two
    preferred topics (popularity-skewed inside a topic); one per user is held out."""
    g = torch.Generator().manual_seed(seed)
    topic = torch.randint(0, topics, (items,), generator=g)
    pop = -torch.log(torch.rand(items, generator=g)) + 0.1            # exponential popularity
    likes = torch.randint(0, topics, (users, 2), generator=g)
    rows = []
    for u in range(users):
        w = pop * ((topic == likes[u, 0]) | (topic == likes[u, 1])).float() + 1e-3 * pop
        rows.append(torch.multinomial(w, per_user + 1, replacement=False, generator=g))
    chosen = torch.stack(rows)                                     # [U, per_user + 1]
    u = torch.arange(users).repeat_interleave(per_user)
    train = torch.stack([u, chosen[:, :per_user].reshape(-1)])
    test = torch.stack([torch.arange(users), chosen[:, per_user]])
    return train, test


class MF(torch.nn.Module):
    def __init__(self, users: int, items: int, dim: int, prodige: bool, budget: float | None = None):
        super().__init__()
        self.users = torch.nn.Embedding(users, dim)
        torch.nn.init.normal_(self.users.weight, std=0.1)
        if prodige:
            self.items = ProdigeEmbedding(items, dim, budget=budget, sparse=True)  # budget: stored numbers/item
        else:
            self.items = torch.nn.Embedding(items, dim)
            torch.nn.init.normal_(self.items.weight, std=0.1)
        self.bias = torch.nn.Parameter(torch.zeros(items))

    def item_vectors(self, idx):
        v = self.items(idx)
        return -v if isinstance(self.items, ProdigeEmbedding) else v  # near anchors score high

    def forward(self, u, i):
        return (self.users(u) * self.item_vectors(i)).sum(-1) + self.bias[i]


def recall_at(model, train, test, items: int, k: int = 10) -> float:
    model.eval()
    with torch.no_grad():
        scores = model.users.weight @ model.item_vectors(torch.arange(items)).T + model.bias
        scores[train[0], train[1]] = -float("inf")                   # never recommend what was seen
        top = scores.topk(k, dim=1).indices
    model.train()
    return float((top == test[1][:, None]).any(1).float().mean())


def fit(prodige: bool, train, test, args, dim: int) -> dict:
    torch.manual_seed(args.seed)
    model = MF(args.users, args.items, dim, prodige, args.budget)
    dense = [p for n, p in model.named_parameters() if not (prodige and n.startswith("items."))]
    opts = [torch.optim.Adam(dense, lr=args.lr)]
    if prodige:  # sparse=True: every parameter of the embedding has sparse gradients, as nn.Embedding's
        opts.append(torch.optim.SparseAdam(list(model.items.parameters()), lr=args.graph_lr))
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    bar = progress(range(args.steps), desc="ProdigeEmbedding" if prodige else "nn.Embedding")
    for _ in bar:
        pick = torch.randint(0, train.size(1), (args.batch_size,), generator=g)
        u, pos = train[0, pick], train[1, pick]
        neg = torch.randint(0, args.items, (args.batch_size,), generator=g)
        s = model(torch.cat([u, u]), torch.cat([pos, neg]))          # one forward: one graph sample per search
        loss = -F.logsigmoid(s[: len(u)] - s[len(u):]).mean()
        total = loss
        if prodige:
            total = loss + args.lam * model.items.sparsity() + model.items.reinforce(loss)
        for o in opts:
            o.zero_grad()
        total.backward()
        for o in opts:
            o.step()
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    seconds = time.perf_counter() - t0
    stored = model.items.num_stored_parameters() if prodige else args.items * dim
    return {"recall@10": recall_at(model, train, test, args.items), "seconds": seconds,
            "item_numbers": stored, "numbers_per_item": stored / args.items}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=600)
    ap.add_argument("--items", type=int, default=400)
    ap.add_argument("--topics", type=int, default=8)
    ap.add_argument("--per-user", type=int, default=12, help="training interactions per user")
    ap.add_argument("--dim", type=int, default=16, help="embedding size = number of anchors K")
    ap.add_argument("--budget", type=float, default=None,
                    help="stored numbers per item of the PRODIGE graph (default: the embedding size)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--graph-lr", type=float, default=0.1)
    ap.add_argument("--lam", type=float, default=20.0, help="weight of the sparsity penalty")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    train, test = synthetic(args.users, args.items, args.topics, args.per_user, args.seed)
    pop = torch.bincount(train[1], minlength=args.items).float()
    base = float((pop.topk(10).indices[None] == test[1][:, None]).any(1).float().mean())
    out = {"popularity": base}
    print(f"{args.users} users, {args.items} items, {train.size(1)} interactions; recall@10 of the "
          f"most popular items: {base:.3f}")
    r = out["ProdigeEmbedding"] = fit(True, train, test, args, args.dim)
    print(f"ProdigeEmbedding(K={args.dim})  recall@10 {r['recall@10']:.3f}   {r['numbers_per_item']:5.1f} "
          f"numbers/item   {r['seconds']:.1f} s")
    # the peer at the same memory per item (the paper's comparison), and at K floats
    for dim in sorted({max(1, round(r["numbers_per_item"])), args.dim}):
        p = out[f"nn.Embedding({dim})"] = fit(False, train, test, args, dim)
        print(f"{'nn.Embedding(' + str(dim) + ')':<21} recall@10 {p['recall@10']:.3f}   "
              f"{p['numbers_per_item']:5.1f} numbers/item   {p['seconds']:.1f} s")
    return out


if __name__ == "__main__":
    main()
