"""tgrep.datasets."""
from .otc_tree import otc_tree  # noqa: F401
