"""PyG transforms."""
from .learned_graph import LearnedGraphTransform

__all__ = ["LearnedGraphTransform"]
