"""tgrep.datasets."""
from .erdos_renyi import weighted_erdos_renyi  # noqa: E402
