"""tgrep.transforms."""
