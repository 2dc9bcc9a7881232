"""tgrep.transforms.OTCompress: one graph, a Batch in one call, as pre_transform."""
import torch
from torch_geometric.data import Batch, Data

import tgrep
from tgrep.datasets import weighted_erdos_renyi
from tgrep.transforms import OTCompress


def _graphs(sizes):
    out = []
    for n in sizes:
        ei, _ = weighted_erdos_renyi(n, 0.5)
        ei = torch.cat([ei, ei.flip(0)], 1)
        out.append(Data(x=torch.eye(3)[torch.randint(0, 3, (n,))], edge_index=ei, edge_attr=torch.randn(ei.size(1), 2),
                        y=torch.tensor([n])))
    return out


def test_transform_matches_ot_compress_and_batches(seed):
    gs = _graphs([5, 8, 7, 1])
    t = OTCompress(0.5, cost="label")
    one = [t(g) for g in gs]
    for g, o in zip(gs, one):
        perm = tgrep.ot_compress(g.edge_index, g.num_nodes, 0.5, cost=tgrep.ops.label_cost(g.edge_index, g.x), refine=0)
        assert torch.equal(o.x, g.x[perm]) and o.num_nodes == (g.num_nodes + 1) // 2
        keep = torch.zeros(g.num_nodes, dtype=torch.bool)
        keep[perm] = True
        m = keep[g.edge_index[0]] & keep[g.edge_index[1]]
        assert torch.equal(o.edge_attr, g.edge_attr[m]) and o.edge_index.size(1) == int(m.sum())
    b = t(Batch.from_data_list(gs))
    assert isinstance(b, Batch) and b.num_graphs == 4
    for o, ob in zip(one, b.to_data_list()):
        assert torch.equal(o.x, ob.x) and torch.equal(o.edge_index, ob.edge_index) and torch.equal(o.y, ob.y)


def test_transform_repr_lists_arguments():
    r = repr(OTCompress(3, cost="degree", label_attr="z", lam=0.5, num_iters=9, refine=1))
    for part in ("ratio=3", "cost='degree'", "label_attr='z'", "lam=0.5", "num_iters=9", "refine=1"):
        assert part in r
