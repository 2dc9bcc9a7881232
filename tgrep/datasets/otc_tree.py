"""The 21-node synthetic tree of Fig. 2 in Garg & Jaakkola, "Solving graph compression via
optimal transport" (NeurIPS 2019)."""
from __future__ import annotations

import torch

#: leaves whose edge to their parent is light (cost 0.1); the others are heavy (0.5)
OTC_TREE_LIGHT_LEAVES = (5, 6, 7, 9, 10, 13)


def otc_tree(dtype=torch.float64):
    """Return ``(edge_index [2, 40], cost [40])`` of the paper's Fig. 2(a) tree.

    A 4-ary tree of depth 2: root ``0`` with children ``1..4`` (edges of cost 0.3); node
    ``i`` in ``1..4`` has leaves ``4i+1 .. 4i+4``. Heavy leaf edges (cost 0.5): one under
    node 1 (leaf 8), two under node 2 (11, 12), three under node 3 (14, 15, 16), four under
    node 4 (17..20); the other six leaf edges are light (cost 0.1). Undirected: every edge is
    listed in both directions. The paper reports that compressing to ``k = 15`` drops the six
    light leaves and ``k = 5`` keeps only the root and its four children.
    """
    edges, costs = [], []
    for i in range(1, 5):
        edges.append((0, i))
        costs.append(0.3)
        for leaf in range(4 * i + 1, 4 * i + 5):
            edges.append((i, leaf))
            costs.append(0.1 if leaf in OTC_TREE_LIGHT_LEAVES else 0.5)
    ei = torch.tensor(edges, dtype=torch.long).t()
    c = torch.tensor(costs, dtype=dtype)
    return torch.cat([ei, ei.flip(0)], 1), torch.cat([c, c])
