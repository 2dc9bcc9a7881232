"""tgrep.nn."""
from .edrep import EDRepLoss, edrep_loss  # noqa: E402,F401
from . import pool  # noqa: F401,E402
