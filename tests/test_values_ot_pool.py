"""Values of OTCoarsening / ot_pool / EdgeCostNet / OTCompress against independent computations:
the documented gate ``multiplier * tanh(k_g rho1_v) * x_v`` on the op's own rho1, the documented
edge costs counted by hand, the transport reduce against scipy's Dijkstra, and every argument the
layer, the functional and the transform pass through (each precondition asserts the argument
matters on the input used, so ignoring it cannot pass)."""
import math

import numpy as np
import pytest
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra
from torch_geometric.data import Batch, Data

from tgrep import ot_compress
from tgrep.nn.pool import OTCoarsening, ot_pool
from tgrep.nn.pool.ot_coarsening import EdgeCostNet
from tgrep.transforms import OTCompress

# two random trees and a cycle with a chord: degrees vary, so costs and priors are not uniform
_TREES = [[0, 0, 1, 1, 2, 4], [0, 1, 2, 2, 0, 5, 5]]


def _graphs(feat=4, gen=None):
    gen = gen or torch.Generator().manual_seed(0)
    out = []
    for par in _TREES:
        n = len(par) + 1
        ei = torch.tensor([par, list(range(1, n))])
        out.append(Data(x=torch.randn(n, feat, generator=gen), edge_index=torch.cat([ei, ei.flip(0)], 1),
                        y=torch.randint(0, 2, (n,), generator=gen)))
    e = [(i, (i + 1) % 6) for i in range(6)] + [(0, 3)]
    ei = torch.tensor(e).t()
    out.append(Data(x=torch.randn(6, feat, generator=gen), edge_index=torch.cat([ei, ei.flip(0)], 1),
                    y=torch.randint(0, 2, (6,), generator=gen)))
    return Batch.from_data_list(out)


def _degree(ei, n):  # both directions listed: out-degree = degree
    return np.bincount(ei[0].numpy(), minlength=n).astype(float)


def _gate(b, ratio, cost, lam=1.0, num_iters=30):
    info = ot_compress(b.edge_index, b.num_nodes, ratio, cost=cost, batch=b.batch, lam=lam, num_iters=num_iters,
                       return_info=True)
    kv = info.k.to(torch.float64)[b.batch]
    return info, torch.tanh(kv * info.rho1.to(torch.float64))[info.perm]


def test_degree_and_label_costs_are_the_documented_values():
    b = _graphs()
    deg = _degree(b.edge_index, b.num_nodes)
    u, v = b.edge_index.numpy()
    want = np.maximum(np.maximum(deg[u], deg[v]), 1.0)
    got = OTCoarsening(cost="degree").edge_cost(b.x, b.edge_index)
    np.testing.assert_array_equal(got.numpy(), want)
    lab = b.y.numpy()
    want_l = np.where(lab[u] == lab[v], 0.01, 0.02)
    assert 0 < (lab[u] == lab[v]).sum() < len(u)  # both kinds of edge present
    got_l = OTCoarsening(cost="label").edge_cost(b.x, b.edge_index, b.y)
    np.testing.assert_allclose(got_l.numpy(), want_l, rtol=0, atol=1e-15)
    assert torch.equal(OTCoarsening(cost="uniform").edge_cost(b.x, b.edge_index),
                       torch.ones(b.edge_index.size(1), dtype=torch.float64))


@pytest.mark.parametrize("multiplier", [1.0, 2.5, -0.5])
def test_layer_gate_is_multiplier_tanh_k_rho1(multiplier):
    b = _graphs()
    deg = _degree(b.edge_index, b.num_nodes)
    u, v = b.edge_index.numpy()
    cost = torch.tensor(np.maximum(deg[u], deg[v]))
    info, gate = _gate(b, 0.5, cost)
    # the gate is not trivially constant on this input (a dropped k or tanh would show)
    assert float(gate.max() - gate.min()) > 1e-3 and not torch.allclose(gate, torch.tanh(info.rho1[info.perm]))
    x, ei, _, bt, perm, score = OTCoarsening(0.5, multiplier=multiplier)(b.x, b.edge_index, batch=b.batch)
    assert torch.equal(perm, info.perm)
    counts = torch.bincount(b.batch).tolist()
    assert torch.bincount(bt).tolist() == [math.ceil(0.5 * n) for n in counts]
    torch.testing.assert_close(score.double(), gate, rtol=1e-6, atol=1e-7)
    want = multiplier * gate.unsqueeze(-1) * b.x[perm].double()
    torch.testing.assert_close(x.double(), want, rtol=1e-6, atol=1e-6)


def test_layer_passes_lam_and_num_iters():
    b = _graphs()
    cost = OTCoarsening(cost="degree").edge_cost(b.x, b.edge_index)
    _, g_default = _gate(b, 0.4, cost)
    info, g = _gate(b, 0.4, cost, lam=0.2, num_iters=4)
    assert not torch.allclose(g, g_default, atol=1e-4) or not torch.equal(info.perm, _gate(b, 0.4, cost)[0].perm)
    out = OTCoarsening(0.4, lam=0.2, num_iters=4)(b.x, b.edge_index, batch=b.batch)
    assert torch.equal(out[4], info.perm)
    torch.testing.assert_close(out[5].double(), g, rtol=1e-6, atol=1e-7)


def test_ot_pool_passes_every_argument():
    b = _graphs()
    gen = torch.Generator().manual_seed(1)
    cost = torch.rand(b.edge_index.size(1), generator=gen, dtype=torch.float64) + 0.1
    info, g = _gate(b, 3, cost, lam=0.3, num_iters=6)
    _, g_def = _gate(b, 3, cost)
    assert not torch.allclose(g, g_def, atol=1e-4)
    x, *_, perm, score = ot_pool(b.x, b.edge_index, 3, cost=cost, batch=b.batch, lam=0.3, num_iters=6,
                                 multiplier=3.0)
    assert torch.equal(perm, info.perm)
    torch.testing.assert_close(score.double(), g, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(x.double(), 3.0 * g.unsqueeze(-1) * b.x[perm].double(), rtol=1e-6, atol=1e-6)


def test_transport_reduce_is_prior_weighted_mean_of_nearest_kept():
    b = _graphs()
    gen = torch.Generator().manual_seed(2)
    E = b.edge_index.size(1)
    cost = torch.rand(E, generator=gen, dtype=torch.float64) + 0.05  # asymmetric: direction matters
    N = b.num_nodes
    x, *_, perm, score = ot_pool(b.x, b.edge_index, 0.4, cost=cost, batch=b.batch, reduce="transport")
    u, v = b.edge_index.numpy()
    # mass moves u -> v at cost c_uv: node a goes to the kept s minimising dist(a -> s)
    dist = dijkstra(csr_matrix((cost.numpy(), (u, v)), shape=(N, N)), directed=True)
    kept = perm.numpy()
    near = kept[np.argmin(dist[:, kept], axis=1)]
    deg = _degree(b.edge_index, N)
    g = b.batch.numpy()
    rho0 = deg / np.bincount(g, weights=deg)[g]
    xs = b.x.double().numpy()
    want = np.stack([(rho0[near == s, None] * xs[near == s]).sum(0) / rho0[near == s].sum() for s in kept])
    want *= score.double().numpy()[:, None]
    # nodes really are pooled from elsewhere (not the 'select' answer)
    assert not np.allclose(want, xs[kept] * score.double().numpy()[:, None])
    np.testing.assert_allclose(x.double().numpy(), want, rtol=1e-5, atol=1e-6)


def test_edge_cost_net_formula_scale_and_min_cost():
    torch.manual_seed(0)
    net = EdgeCostNet(3, hidden_channels=5, scale=0.5, min_cost=0.25)
    x = torch.randn(4, 3)
    ei = torch.tensor([[0, 1, 2, 3], [1, 0, 3, 1]])
    lin1, lin2 = net.mlp[0], net.mlp[2]
    a, c = x[ei[0]], x[ei[1]]
    h = torch.cat([a + c, (a - c).abs()], -1)
    z = torch.relu(h @ lin1.weight.T + lin1.bias) @ lin2.weight.T + lin2.bias
    want = 0.5 * torch.log1p(torch.exp(z.squeeze(-1))) + 0.25
    torch.testing.assert_close(net(x, ei), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(net(x, ei.flip(0)), want, rtol=1e-5, atol=1e-6)  # symmetric in the ends
    d = EdgeCostNet(3)
    assert d.scale == 0.02 and d.min_cost == 1e-3 and d.mlp[0].out_features == 16  # documented defaults


@pytest.mark.parametrize("cost", ["uniform", "degree", "label"])
def test_otcompress_transform_keeps_the_op_support(cost):
    b = _graphs()
    y1 = torch.nn.functional.one_hot(b.y, 2).double()
    data = Data(x=y1, edge_index=b.edge_index, num_nodes=b.num_nodes)
    deg = _degree(b.edge_index, b.num_nodes)
    u, v = b.edge_index.numpy()
    c = {"uniform": torch.ones(len(u), dtype=torch.float64), "degree": torch.tensor(np.maximum(deg[u], deg[v])),
         "label": torch.tensor(np.where(b.y.numpy()[u] == b.y.numpy()[v], 0.01, 0.02))}[cost]
    perm = ot_compress(b.edge_index, b.num_nodes, 0.3, cost=c, lam=0.5, num_iters=8)
    out = OTCompress(0.3, cost=cost, lam=0.5, num_iters=8)(data)
    assert out.num_nodes == perm.numel()
    assert torch.equal(out.x, y1[perm])
    keep = torch.zeros(b.num_nodes, dtype=torch.bool)
    keep[perm] = True
    assert out.edge_index.size(1) == int((keep[b.edge_index[0]] & keep[b.edge_index[1]]).sum())


def test_otcompress_transform_on_a_batch_matches_one_solve():
    b = _graphs()
    perm = ot_compress(b.edge_index, b.num_nodes, 0.5, cost=torch.ones(b.edge_index.size(1), dtype=torch.float64),
                       batch=b.batch, lam=2.0, num_iters=5)
    out = OTCompress(0.5, cost="uniform", lam=2.0, num_iters=5)(b)
    assert isinstance(out, Batch) and out.num_graphs == b.num_graphs
    assert torch.equal(out.x, b.x[perm])
    assert torch.equal(out.batch, b.batch[perm])
