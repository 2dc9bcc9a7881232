"""Kernels: ``triton`` (CUDA), ``reference`` (plain torch); C++ lives in ``csrc/cpu``."""
