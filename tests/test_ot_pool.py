"""OTCoarsening (Garg & Jaakkola, NeurIPS 2019) as a PyG pooling layer."""
import math

import pytest
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.nn import TopKPooling

from tgrep.nn.pool import OTCoarsening, ot_pool
from tgrep.kernels.reference.ot_rounding import nearest_kept


def _batch(sizes, feat=5):
    graphs = []
    for n in sizes:
        e = [(i, i + 1) for i in range(n - 1)] + [(0, n - 1)] if n > 2 else [(i, i + 1) for i in range(n - 1)]
        ei = torch.tensor(e, dtype=torch.long).t().reshape(2, -1)
        ei = torch.cat([ei, ei.flip(0)], 1)
        graphs.append(Data(x=torch.randn(n, feat), edge_index=ei, edge_attr=torch.randn(ei.size(1), 2),
                           y=torch.randint(0, 3, (n,))))
    return Batch.from_data_list(graphs)


@pytest.mark.parametrize("cost", ["uniform", "degree", "label"])
def test_output_like_topk(seed, cost):
    b = _batch([1, 4, 7, 10])
    pool = OTCoarsening(0.5, cost=cost)
    x, ei, ea, bt, perm, score = pool(b.x, b.edge_index, b.edge_attr, b.batch, node_label=b.y)
    counts = torch.bincount(b.batch)
    assert torch.bincount(bt).tolist() == [math.ceil(0.5 * int(n)) for n in counts]
    assert torch.equal(bt, b.batch[perm]) and x.shape == (perm.numel(), 5) and score.shape == perm.shape
    assert torch.allclose(x, b.x[perm] * score.unsqueeze(-1))
    # induced subgraph edges, relabelled; edge_attr follows
    keep = torch.zeros(b.num_nodes, dtype=torch.bool)
    keep[perm] = True
    m = keep[b.edge_index[0]] & keep[b.edge_index[1]]
    new = torch.full((b.num_nodes,), -1)
    new[perm] = torch.arange(perm.numel())
    assert torch.equal(ei, new[b.edge_index[:, m]]) and torch.equal(ea, b.edge_attr[m])
    # same tuple layout as TopKPooling
    ref = TopKPooling(5, 0.5)(b.x, b.edge_index, b.edge_attr, b.batch)
    assert len(ref) == 6 and [t.dim() for t in ref] == [t.dim() for t in (x, ei, ea, bt, perm, score)]


def test_int_ratio_gradients_and_repr(seed):
    b = _batch([6, 9])
    x = b.x.clone().requires_grad_()
    out = OTCoarsening(3, multiplier=2.0)(x, b.edge_index, batch=b.batch)
    assert torch.bincount(out[3]).tolist() == [3, 3]
    out[0].sum().backward()
    assert x.grad is not None and x.grad[out[4]].abs().sum() > 0
    assert "OTCoarsening(ratio=3" in repr(OTCoarsening(3))
    with pytest.raises(ValueError, match="in_channels"):
        OTCoarsening(cost="learned")
    with pytest.raises(ValueError, match="'cost'"):
        OTCoarsening(cost="bogus")
    with pytest.raises(ValueError, match="node_label"):
        OTCoarsening(cost="label")(b.x, b.edge_index, batch=b.batch)


def test_learned_cost_trains(seed):
    # random trees (not vertex-transitive cycles, where rho1 = rho0 from the start and no
    # constraint binds) with a vertex of degree 4: the relaxation then moves mass (k_g max rho0 =
    # 4 k_g / (2 (n - 1)) > 1 at n = 6, 8; a path-like tree has none, see the class docstring)
    graphs = []
    for n in (6, 8):
        par = [0, 0, 0, 0] + [int(torch.randint(0, i, (1,))) for i in range(5, n)]
        ei = torch.tensor([par, list(range(1, n))])
        graphs.append(Data(x=torch.randn(n, 5), edge_index=torch.cat([ei, ei.flip(0)], 1)))
    b = Batch.from_data_list(graphs)
    pool = OTCoarsening(0.5, cost="learned", in_channels=5, num_iters=15)
    x, *_, score = pool(b.x, b.edge_index, batch=b.batch)
    x.pow(2).sum().backward()
    grads = [p.grad for p in pool.cost_net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_transport_reduce(seed):
    # path 0-1-2-3-4 with a cheap edge 3-4: keep 1 node ... check mass-weighted mean of assigned nodes
    ei = torch.tensor([[0, 1, 1, 2, 2, 3, 3, 4], [1, 0, 2, 1, 3, 2, 4, 3]])
    x = torch.eye(5)
    lab = nearest_kept(ei, torch.ones(8, dtype=torch.float64), torch.tensor([False, True, False, False, True]))
    assert lab.tolist()[:2] == [1, 1] and lab[3] == 4 and lab[4] == 4 and lab[2] in (1, 4)
    out = ot_pool(x, ei, 2, reduce="transport")
    xo, perm, score = out[0], out[4], out[5]
    rows = xo / score.unsqueeze(-1)
    assert torch.allclose(rows.sum(-1), torch.ones(2))        # convex combinations
    for r, p in zip(rows, perm):
        assert r[p] > 0                                      # includes the kept node itself


def test_on_mutag(tu_dataset):
    ds = tu_dataset("MUTAG")
    b = Batch.from_data_list(list(ds[:32]))
    pool = OTCoarsening(0.5, cost="label")
    x, ei, _, bt, perm, score = pool(b.x, b.edge_index, batch=b.batch, node_label=b.x.argmax(-1))
    assert torch.bincount(bt).tolist() == [math.ceil(0.5 * int(n)) for n in torch.bincount(b.batch)]
    assert torch.isfinite(x).all() and (score > 0).float().mean() > 0.9
