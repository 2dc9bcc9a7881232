"""tgrep.nn."""
from . import pool  # noqa: F401,E402
