"""Label propagation on a weighted graph, for judging learned graphs (demos, benchmarks)."""
from __future__ import annotations

import numpy as np


def harmonic_accuracy(W, labels: np.ndarray, known: list[np.ndarray]) -> np.ndarray:
    r"""Accuracy of the harmonic solution of Zhu et al. (2003) on the unlabelled nodes.

    For each draw of labelled nodes :math:`L` (the rest :math:`U`), solves
    :math:`f_U = L_{UU}^{-1} W_{UL} Y_L` with the graph Laplacian :math:`L = D - W` (plus a
    ridge of ``1e-9`` so components without a label stay solvable) and predicts
    :math:`\arg\max f_U`.

    Args:
        W (scipy.sparse matrix): ``[n, n]`` symmetric non-negative weights.
        labels (ndarray): ``[n]`` integer classes.
        known (list of ndarray): one array of labelled node ids per draw.

    Returns:
        ``[len(known)]`` accuracies, one per draw (paired comparisons need them all).
    """
    import scipy.sparse as sp
    import scipy.sparse.linalg as sla

    n = W.shape[0]
    W = W.tocsr()
    lap = (sp.diags(np.asarray(W.sum(1)).ravel()) - W).tocsr()
    num_classes = int(labels.max()) + 1
    accs = []
    for kn in known:
        U = np.setdiff1d(np.arange(n), kn)
        Y = np.zeros((len(kn), num_classes))
        Y[np.arange(len(kn)), labels[kn]] = 1
        F = sla.spsolve((lap[U][:, U] + 1e-9 * sp.eye(len(U))).tocsc(), W[U][:, kn] @ Y)
        accs.append(float((F.reshape(len(U), -1).argmax(1) == labels[U]).mean()))
    return np.array(accs)
