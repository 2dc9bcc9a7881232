"""tgrep.datasets."""
from .dcsbm import dcsbm, dcsbm_alpha  # noqa: E402,F401
