"""Synthetic generators for tests, demos and benchmarks (no download)."""
from .dcsbm import dcsbm, dcsbm_alpha
from .erdos_renyi import weighted_erdos_renyi
from .hierarchy import hierarchical_sequences
from .otc_tree import otc_tree

__all__ = ["dcsbm", "dcsbm_alpha", "weighted_erdos_renyi", "otc_tree", "hierarchical_sequences"]
