"""Differentiable functional ops (input validation + autograd + backend dispatch)."""
from .projections import project_capped_simplex, project_diag_simplex, project_lipschitz  # noqa: E402,F401
from .ot_compress import (ot_compress, ot_compression_cost, psi, psi_grad, label_cost, degree_cost,  # noqa: E402,F401
                          degree_prior, OTCompressResult)
