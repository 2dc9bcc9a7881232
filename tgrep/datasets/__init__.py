"""tgrep.datasets."""
from .dcsbm import dcsbm, dcsbm_alpha  # noqa: E402,F401
from .otc_tree import otc_tree  # noqa: F401
from .erdos_renyi import weighted_erdos_renyi  # noqa: E402
