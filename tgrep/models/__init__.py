"""tgrep.models."""
