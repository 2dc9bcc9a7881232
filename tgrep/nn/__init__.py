"""tgrep.nn."""
from .prodige import ProdigeGraph  # noqa: E402
from .prodige_embedding import ProdigeEmbedding  # noqa: E402
