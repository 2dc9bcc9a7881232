"""tgrep.nn."""
from .prodige import ProdigeGraph  # noqa: E402
