"""tgrep.models."""
from .prodige import ProdigeCompression  # noqa: E402
