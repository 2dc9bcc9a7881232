"""Helpers shared across tgrep: CSR conversion, input checks, progress bars."""
from .csr import csr_to_edge_index, to_csr
from .progress import log, progress

__all__ = ["to_csr", "csr_to_edge_index", "progress", "log"]
