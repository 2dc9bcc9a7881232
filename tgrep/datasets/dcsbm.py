r"""Degree-corrected stochastic block model (Karrer & Newman, 2011), as in EDRep App. D.1."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..utils import check

__all__ = ["dcsbm", "dcsbm_alpha", "paper_theta"]


def paper_theta(num_nodes: int, generator: torch.Generator | None = None) -> Tensor:
    r"""Degree corrections of EDRep App. D.1: :math:`u\sim U(3, 12)`, :math:`\theta \propto u^6`, mean 1."""
    u = 3.0 + 9.0 * torch.rand(num_nodes, generator=generator, dtype=torch.float64)
    theta = u ** 6
    return theta / theta.mean()


def dcsbm_alpha(mean_degree: float, c_out: float, theta: Tensor | None = None, num_communities: int = 4) -> float:
    r"""Hardness :math:`\alpha = (c_{in} - c_{out})/q\,\sqrt{\Phi/c}` with :math:`\Phi = E[\theta^2]`.

    Detection is feasible iff :math:`\alpha > 1`. (The paper writes :math:`(c - c_{out})`;
    for :math:`q` communities, :math:`c - c_{out} = (c_{in} - c_{out})/q`, the same
    quantity.) ``theta`` defaults to the paper's distribution (:math:`\Phi \approx 2.83`).
    """
    phi = float((theta.double() ** 2).mean()) if theta is not None else _paper_phi()
    return (mean_degree - c_out) * math.sqrt(phi / mean_degree)


def _paper_phi() -> float:
    e6 = (12 ** 7 - 3 ** 7) / (7 * 9)
    e12 = (12 ** 13 - 3 ** 13) / (13 * 9)
    return e12 / e6 ** 2


def dcsbm(num_nodes: int, num_communities: int = 4, mean_degree: float = 10.0, c_out: float = 2.0, *,
          theta: Tensor | None = None, seed: int | None = None):
    r"""Sample an undirected DCSBM graph (EDRep, Definition D.1).

    Node labels :math:`\omega_i` are uniform on :math:`\{0..q-1\}`; edges appear independently
    with probability :math:`\theta_i\theta_j C_{\omega_i\omega_j}/n`, :math:`C = c_{in}` on the
    diagonal and :math:`c_{out}` off it, :math:`c_{in} = q c - (q-1) c_{out}` so the mean
    degree is :math:`c`. Sampled in ``O(n + E)``: per community pair a Poisson number of
    edges with endpoints drawn :math:`\propto\theta` (the Karrer-Newman Poisson model),
    then self-loops and duplicates are removed.

    Args:
        num_nodes (int): :math:`n`.
        num_communities (int): :math:`q`. (default: ``4``)
        mean_degree (float): :math:`c`. (default: ``10``)
        c_out (float): :math:`c_{out}`, ``0 <= c_out < c``. (default: ``2``)
        theta (Tensor, optional): ``[n]`` positive degree corrections (normalized to mean 1);
            default :func:`paper_theta`.
        seed (int, optional): random seed. (default: ``None``: 0)

    Returns:
        :class:`torch_geometric.data.Data` with ``edge_index`` (both directions), ``y``
        (communities), ``theta``, ``num_nodes`` and ``alpha`` (:func:`dcsbm_alpha`).
    """
    from torch_geometric.data import Data

    n = check.positive_int("num_nodes", num_nodes)
    q = check.positive_int("num_communities", num_communities)
    c = check.in_range("mean_degree", mean_degree, 0.0, float(n), lo_open=True)
    c_out = check.in_range("c_out", c_out, 0.0, c, hi_open=True)
    c_in = q * c - (q - 1) * c_out
    gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
    if theta is None:
        theta = paper_theta(n, gen)
    else:
        check.tensor("theta", theta, dtypes=check.FLOAT_DTYPES, dim=1, finite=True)
        if theta.shape[0] != n or bool((theta <= 0).any()):
            raise ValueError(f"'theta' must be [{n}] and positive")
        theta = theta.double() / theta.double().mean()
    labels = torch.randint(q, (n,), generator=gen)
    members = [(labels == a).nonzero().flatten() for a in range(q)]
    mass = [float(theta[idx].sum()) for idx in members]
    rows, cols = [], []
    for a in range(q):
        for b in range(a, q):
            if not members[a].numel() or not members[b].numel():
                continue
            rate = (c_in if a == b else c_out) * mass[a] * mass[b] / n
            if a == b:
                rate /= 2.0  # unordered pairs inside a community
            cnt = int(torch.poisson(torch.tensor([rate], dtype=torch.float64), generator=gen))
            if cnt == 0:
                continue
            pa = theta[members[a]] / mass[a]
            pb = theta[members[b]] / mass[b]
            i = members[a][torch.multinomial(pa, cnt, replacement=True, generator=gen)]
            j = members[b][torch.multinomial(pb, cnt, replacement=True, generator=gen)]
            rows.append(i)
            cols.append(j)
    if rows:
        i, j = torch.cat(rows), torch.cat(cols)
        keep = i != j
        i, j = i[keep], j[keep]
        lo, hi = torch.minimum(i, j), torch.maximum(i, j)
        key = torch.unique(lo * n + hi)
        lo, hi = key // n, key % n
        edge_index = torch.cat([torch.stack([lo, hi]), torch.stack([hi, lo])], 1)
    else:
        edge_index = torch.empty(2, 0, dtype=torch.long)
    return Data(edge_index=edge_index, y=labels, theta=theta.float(), num_nodes=n,
                alpha=dcsbm_alpha(c, c_out, theta, q))
