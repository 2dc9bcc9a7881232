"""Differentiable functional ops (input validation + autograd + backend dispatch)."""
from .shortest_path import ShortestPaths, edge_presence, shortest_paths

__all__ = ["shortest_paths", "edge_presence", "ShortestPaths"]
from .reinforce import reinforce_coefficients  # noqa: E402

__all__ += ["reinforce_coefficients"]
