"""tgrep.nn."""
from .edrep import EDRepLoss, edrep_loss  # noqa: E402,F401
