"""tgrep.nn."""
from .edrep import EDRepLoss, edrep_loss  # noqa: E402,F401
from . import pool  # noqa: F401,E402
from .prodige import ProdigeGraph  # noqa: E402
from .prodige_embedding import ProdigeEmbedding  # noqa: E402
