"""``torch.library`` definitions of every tgrep op: schema, per-device kernels, fake kernels
and autograd (the floor between the thin :mod:`tgrep.ops` wrappers and the kernels).

Importing this package registers the ops under ``torch.ops.tgrep``; :func:`kernel_op` is the
template they are defined with (:func:`launch_op` for fixed Triton launch sequences; see
``docs/architecture.md``).
"""
from ._register import kernel_op, launch_op
from . import shortest_paths  # noqa: F401  (registers tgrep::shortest_paths, path_gradient, ...)
from . import tree_paths  # noqa: F401  (registers tgrep::tree_path_sum, tree_path_gradient)
from . import softmax_norm  # noqa: F401  (registers tgrep::cluster_log_normalizer, kmeans, ...)
from . import ot  # noqa: F401  (registers tgrep::mirror_prox, support_cost, ot_round, project_*, ...)
from . import knn  # noqa: F401  (registers tgrep::knn)
from . import graph_learning  # noqa: F401  (registers tgrep::graph_learning_fbf)

__all__ = ["kernel_op", "launch_op"]
