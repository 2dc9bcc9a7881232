"""tgrep.nn.pool."""
from .ot_coarsening import OTCoarsening, ot_pool, EdgeCostNet  # noqa: F401
