"""Differentiable functional ops (input validation + autograd + backend dispatch)."""
from .knn import knn  # noqa: E402,F401
from .graph_learning import graph_learning_theta, learn_graph, solve_log_model  # noqa: E402,F401
