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
