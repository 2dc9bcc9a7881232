"""tgrep.models."""
from .edrep import EDRep  # noqa: E402,F401
from .prodige import ProdigeCompression  # noqa: E402
