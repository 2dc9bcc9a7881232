"""User-facing layers (PyG style)."""
from . import pool
from .edrep import EDRepLoss, edrep_loss
from .prodige import ProdigeGraph
from .prodige_embedding import ProdigeEmbedding

__all__ = ["ProdigeGraph", "ProdigeEmbedding", "EDRepLoss", "edrep_loss", "pool"]
