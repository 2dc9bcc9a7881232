"""Pooling layers."""
from .ot_coarsening import EdgeCostNet, OTCoarsening, ot_pool

__all__ = ["OTCoarsening", "ot_pool", "EdgeCostNet"]
