"""Argument checks that a re-draw of mutants on the final code found unguarded (docs/mutation.md,
"Re-draw"): each bad value is a TypeError / ValueError naming the argument."""
import pytest
import torch

from tgrep.ops import knn, reinforce_coefficients, shortest_paths


def _csr():
    return torch.tensor([0, 1, 2]), torch.tensor([1, 0]), torch.tensor([1.0, 1.0])


@pytest.mark.parametrize("seed", [torch.tensor(3.0), torch.tensor(3, dtype=torch.int32), torch.tensor([3])])
def test_shortest_paths_seed_tensor_must_be_0d_int64(seed):
    indptr, indices, weight = _csr()
    with pytest.raises(TypeError, match="'seed'"):
        shortest_paths(indptr, indices, weight, torch.tensor([0]), edge_prob=torch.tensor([0.5, 0.5]), seed=seed)


def test_reinforce_coefficients_needs_float_advantage():
    with pytest.raises((TypeError, ValueError), match="'advantage'"):
        reinforce_coefficients(torch.tensor([0, 1, 2]), torch.tensor([[-1, 0]]), torch.tensor([0]), 0,
                               torch.tensor([0.5, 0.5]), torch.tensor([1]))


def test_knn_needs_float_x():
    with pytest.raises(TypeError, match="'x'"):
        knn(torch.arange(12).reshape(6, 2), 2)


def test_learned_graph_transform_max_w_must_be_positive():
    from tgrep.transforms import LearnedGraphTransform

    with pytest.raises(ValueError, match="'max_w'"):
        LearnedGraphTransform(k=3, max_w=0.0)


def test_edge_cost_net_scale_must_be_positive():
    from tgrep.nn.pool.ot_coarsening import EdgeCostNet

    with pytest.raises(ValueError, match="'scale'"):
        EdgeCostNet(4, scale=0.0)
