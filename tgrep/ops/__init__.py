"""Differentiable functional ops (input validation + autograd + backend dispatch)."""
from .kmeans import kmeans, assign_clusters  # noqa: E402,F401  (EDRep)
from .softmax_norm import (log_normalizer, exact_log_normalizer, cluster_statistics,  # noqa: E402,F401
                           cluster_log_normalizer)
