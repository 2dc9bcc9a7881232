"""PyG transforms."""
from .learned_graph import LearnedGraphTransform
from .ot_compress import OTCompress

__all__ = ["LearnedGraphTransform", "OTCompress"]
