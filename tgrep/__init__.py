"""tgrep: learned graph representations for PyTorch Geometric, on Triton and C++ kernels.

Layers live in :mod:`tgrep.nn` (``ProdigeGraph``, ``ProdigeEmbedding``, ``EDRepLoss``,
``pool.OTCoarsening``), :mod:`tgrep.transforms` (``LearnedGraphTransform``) and
:mod:`tgrep.models` (``ProdigeCompression``, ``EDRep``); the functional ops under them in
:mod:`tgrep.ops`. ``tgrep info`` on the command line says which kernels run here.
"""
__version__ = "0.1.0"

from . import datasets, models, nn, ops, transforms, utils  # noqa: E402
from ._backend import use_backend  # noqa: E402
from .ops import learn_graph, ot_compress, shortest_paths  # noqa: E402

__all__ = ["nn", "ops", "models", "transforms", "datasets", "utils", "use_backend",
           "learn_graph", "ot_compress", "shortest_paths", "__version__"]
