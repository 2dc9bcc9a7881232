"""Argument checks that mutation testing found unguarded: each bad value is a ValueError /
TypeError naming the argument (never a silent wrong answer)."""
import math

import pytest
import torch

from tgrep.ops import reinforce_coefficients
from tgrep.ops.ot_compress import label_cost
from tgrep.ops.projections import project_diag_simplex


@pytest.mark.parametrize("name", ["same", "different"])
@pytest.mark.parametrize("value", [math.inf, 0.0, -1.0, math.nan])
def test_label_cost_needs_finite_positive_costs(name, value):
    ei = torch.tensor([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match=f"'{name}'"):
        label_cost(ei, torch.tensor([0, 1]), **{name: value})


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_project_diag_simplex_needs_finite_y(bad):
    y = torch.tensor([0.2, bad, 0.5], dtype=torch.float64)
    with pytest.raises(ValueError, match="'y'"):
        project_diag_simplex(y, torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64))


def test_reinforce_coefficients_needs_integer_sources():
    indptr = torch.tensor([0, 1, 2])
    pred = torch.tensor([[-1, 0]])
    with pytest.raises((TypeError, ValueError), match="'sources'"):
        reinforce_coefficients(indptr, pred, torch.tensor([0.0]), 0, torch.tensor([0.5, 0.5]),
                               torch.tensor([1.0], dtype=torch.float64))


def test_check_batch_compacts_ids_and_counts_graphs():
    from tgrep.utils import check

    b, g = check.batch("batch", torch.tensor([5]), 1)
    assert b.tolist() == [0] and g == 1
    b, g = check.batch("batch", torch.tensor([3, 3, 9, 10**7]), 4)
    assert b.tolist() == [0, 0, 1, 2] and g == 3
    b, g = check.batch("batch", torch.zeros(0, dtype=torch.long), 0)
    assert b.numel() == 0 and g == 0
    b, g = check.batch("batch", None, 3)
    assert b.tolist() == [0, 0, 0] and g == 1
    b, g = check.batch("batch", None, 0)
    assert b.numel() == 0 and g == 0  # no node: no graph
    with pytest.raises(ValueError, match="'batch'"):
        check.batch("batch", torch.tensor([1, 0]), 2)


def test_reinforce_coefficients_needs_float_edge_prob():
    with pytest.raises((TypeError, ValueError), match="'edge_prob'"):
        reinforce_coefficients(torch.tensor([0, 1, 2]), torch.tensor([[-1, 0]]), torch.tensor([0]), 0,
                               torch.tensor([1, 1]), torch.tensor([1.0], dtype=torch.float64))


def test_shortest_paths_needs_integer_indptr():
    from tgrep.ops import shortest_paths

    with pytest.raises((TypeError, ValueError), match="'indptr'"):
        shortest_paths(torch.tensor([0.0, 1.0, 1.0]), torch.tensor([1]), torch.tensor([1.0]), torch.tensor([0]))


def test_cluster_statistics_needs_a_row():
    from tgrep.ops import cluster_statistics

    with pytest.raises(ValueError, match="'y'"):
        cluster_statistics(torch.zeros(0, 3))
