"""Pooling layers."""
from .ot_coarsening import EdgeCostNet, OTCoarsening, ot_pool
from .select_ot import SelectOT

__all__ = ["OTCoarsening", "ot_pool", "EdgeCostNet", "SelectOT"]
