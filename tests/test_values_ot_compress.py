"""ot_compress's refinement against the exact objective (``ot_compression_cost``, a QP solve
per support): with ``refine >= 1`` and one round the exact cost of the returned support is
reported (``nan`` only without refinement) and is never worse than the unrefined support's."""
import math

import torch

from tgrep import ot_compress
from tgrep.ops.ot_compress import ot_compression_cost


def _tree_batch():
    g = torch.Generator().manual_seed(7)
    eis, off, batch = [], 0, []
    for b, n in enumerate((9, 12)):
        par = [int(torch.randint(0, i, (1,), generator=g)) for i in range(1, n)]
        ei = torch.tensor([par, list(range(1, n))]) + off
        eis.append(torch.cat([ei, ei.flip(0)], 1))
        batch += [b] * n
        off += n
    return torch.cat(eis, 1), off, torch.tensor(batch)


def test_refine_width_one_round_one_reports_the_exact_cost():
    ei, N, batch = _tree_batch()
    cost = torch.rand(ei.size(1), generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.1
    base = ot_compress(ei, N, 0.3, cost=cost, batch=batch, return_info=True)
    assert bool(torch.isnan(base.cost).all())  # no refinement: no exact cost
    ref = ot_compress(ei, N, 0.3, cost=cost, batch=batch, refine=1, refine_rounds=1, return_info=True)
    assert bool(torch.isfinite(ref.cost).all())
    exact = ot_compression_cost(ei, N, ref.mask, cost=cost, batch=batch)
    torch.testing.assert_close(ref.cost.double(), exact.double(), rtol=1e-6, atol=1e-9)
    before = ot_compression_cost(ei, N, base.mask, cost=cost, batch=batch)
    assert bool((exact <= before + 1e-9).all())
    assert torch.equal(torch.bincount(batch[ref.perm]), ref.k)
    assert [math.ceil(0.3 * n) for n in (9, 12)] == ref.k.tolist()
