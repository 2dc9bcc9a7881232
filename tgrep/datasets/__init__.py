"""tgrep.datasets."""
