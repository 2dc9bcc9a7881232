"""Differentiable functional ops: argument checks + one ``torch.library`` custom op call each.

Grouped by paper. The ops under them (``torch.ops.tgrep.*``, defined in :mod:`tgrep.library`)
run the C++ kernel on CPU, the Triton kernel on CUDA and the plain-torch reference elsewhere.
"""
# PRODIGE: batched stochastic shortest paths and the REINFORCE sums over what they read
from .shortest_path import ShortestPaths, edge_presence, shortest_paths
from .reinforce import reinforce_coefficients
from .tree_path import tree_order, tree_path_sums
# EDRep: linear-time softmax normalizers
from .kmeans import assign_clusters, kmeans
from .softmax_norm import cluster_log_normalizer, cluster_statistics, exact_log_normalizer, log_normalizer
# Learned graphs from smooth signals
from .knn import knn, knn_graph
from .graph_learning import graph_learning_theta, learn_graph, solve_l2_model, solve_log_model
# Graph compression by optimal transport
from .projections import project_capped_simplex, project_diag_simplex, project_lipschitz
from .ot_compress import (OTCompressResult, degree_cost, degree_prior, label_cost, ot_compress,
                          ot_compression_cost, psi, psi_grad)

__all__ = [
    "shortest_paths", "edge_presence", "ShortestPaths", "reinforce_coefficients", "tree_path_sums",
    "tree_order",
    "kmeans", "assign_clusters", "log_normalizer", "exact_log_normalizer", "cluster_statistics",
    "cluster_log_normalizer",
    "knn", "knn_graph", "graph_learning_theta", "learn_graph", "solve_log_model", "solve_l2_model",
    "project_capped_simplex", "project_diag_simplex", "project_lipschitz", "psi", "psi_grad",
    "ot_compression_cost", "ot_compress", "OTCompressResult", "label_cost", "degree_cost", "degree_prior",
]
