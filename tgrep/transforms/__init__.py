"""tgrep.transforms."""
from .learned_graph import LearnedGraphTransform  # noqa: E402,F401
