"""tgrep: learned graph representations for PyTorch Geometric, on Triton and C++ kernels."""
__version__ = "0.1.0"

from . import ops, utils  # noqa: E402
from ._backend import use_backend  # noqa: E402

from .ops.graph_learning import learn_graph  # noqa: E402

__all__ = ["ops", "utils", "use_backend", "__version__"]
from .ops.ot_compress import ot_compress  # noqa: E402,F401
__all__ += ["learn_graph"]
