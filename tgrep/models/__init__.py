"""tgrep.models."""
from .edrep import EDRep  # noqa: E402,F401
