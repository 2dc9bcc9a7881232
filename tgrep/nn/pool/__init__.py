"""tgrep.nn.pool."""
