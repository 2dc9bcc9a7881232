"""Differentiable functional ops (input validation + autograd + backend dispatch)."""
from .shortest_path import ShortestPaths, edge_presence, shortest_paths  # PRODIGE
from .kmeans import assign_clusters, kmeans  # EDRep
from .softmax_norm import cluster_log_normalizer, cluster_statistics, exact_log_normalizer, log_normalizer

__all__ = [
    "shortest_paths", "edge_presence", "ShortestPaths",
    "kmeans", "assign_clusters", "log_normalizer", "exact_log_normalizer", "cluster_statistics",
    "cluster_log_normalizer",
]
