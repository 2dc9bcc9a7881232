"""tgrep.kernels.reference."""
