"""tgrep.kernels.triton."""
