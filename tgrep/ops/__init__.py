"""Differentiable functional ops (input validation + autograd + backend dispatch)."""
from .shortest_path import ShortestPaths, edge_presence, shortest_paths  # PRODIGE
from .kmeans import assign_clusters, kmeans  # EDRep
from .softmax_norm import cluster_log_normalizer, cluster_statistics, exact_log_normalizer, log_normalizer

__all__ = [
    "shortest_paths", "edge_presence", "ShortestPaths",
    "kmeans", "assign_clusters", "log_normalizer", "exact_log_normalizer", "cluster_statistics",
    "cluster_log_normalizer",
]
from .projections import project_capped_simplex, project_diag_simplex, project_lipschitz  # noqa: E402,F401
from .ot_compress import (ot_compress, ot_compression_cost, psi, psi_grad, label_cost, degree_cost,  # noqa: E402,F401
                          degree_prior, OTCompressResult)
from .knn import knn  # noqa: E402,F401
from .graph_learning import graph_learning_theta, learn_graph, solve_log_model  # noqa: E402,F401
from .reinforce import reinforce_coefficients  # noqa: E402  (PRODIGE)

__all__ += ["reinforce_coefficients"]
