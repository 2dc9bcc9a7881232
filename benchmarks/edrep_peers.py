"""Peers for the EDRep benchmarks: a Bethe-Hessian spectral method, PyG Node2Vec (DeepWalk
settings) on a pure-torch random walk, and the random-feature / Nystrom / sampling
estimators of log Z used in the paper's Fig. 1."""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch


# ----------------------------------------------------------------------------- community detection
def bethe_hessian_embedding(edge_index: torch.Tensor, n: int, q: int, seed: int = 0) -> np.ndarray:
    r"""Spectral embedding from the Bethe-Hessian :math:`H(r) = (r^2-1)I + D - rA` at
    :math:`r = \sqrt{\sum_i d_i^2/\sum_i d_i - 1}` (Saade, Krzakala & Zdeborova 2014; the
    family of Dall'Amico et al. 2019/2021): the ``q`` smallest eigenvectors, rows normalized."""
    from scipy.sparse.linalg import eigsh

    ei = edge_index.numpy()
    a = sp.csr_matrix((np.ones(ei.shape[1]), (ei[0], ei[1])), shape=(n, n))
    d = np.asarray(a.sum(1)).ravel()
    r = math.sqrt(max((d ** 2).sum() / max(d.sum(), 1) - 1, 1e-3))
    h = sp.identity(n) * (r * r - 1) + sp.diags(d) - r * a
    rng = np.random.default_rng(seed)
    vals, vecs = eigsh(h, k=q, which="SA", v0=rng.standard_normal(n))
    vecs = vecs[:, np.argsort(vals)]
    norm = np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs / np.maximum(norm, 1e-12)


def regularized_spectral_embedding(edge_index: torch.Tensor, n: int, q: int, seed: int = 0) -> np.ndarray:
    r"""Regularized spectral clustering (Qin & Rohe 2013; Amini et al. 2013), made for DCSBM:
    top-``q`` eigenvectors of :math:`(D+\tau I)^{-1/2} A (D+\tau I)^{-1/2}`, :math:`\tau` = mean
    degree, rows normalized."""
    from scipy.sparse.linalg import eigsh

    ei = edge_index.numpy()
    a = sp.csr_matrix((np.ones(ei.shape[1]), (ei[0], ei[1])), shape=(n, n))
    d = np.asarray(a.sum(1)).ravel()
    s = 1.0 / np.sqrt(d + d.mean())
    rng = np.random.default_rng(seed)
    _, vecs = eigsh(sp.diags(s) @ a @ sp.diags(s), k=q, which="LA", v0=rng.standard_normal(n))
    return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)


def deepwalk_node2vec(edge_index: torch.Tensor, n: int, dim: int = 32, *, walk_length: int = 20,
                      context_size: int = 10, walks_per_node: int = 5, epochs: int = 1, seed: int = 0,
                      batch_size: int = 256, lr: float = 0.01):
    """PyG ``Node2Vec`` (p = q = 1, i.e. DeepWalk) trained with its own loader and loss.

    pyg-lib / torch-cluster are not installed here, so PyG's ``Node2Vec.__init__`` refuses to
    build; we build the same module (its ``loader``, ``pos_sample``, ``neg_sample``, ``loss``
    and ``SparseAdam`` training are PyG's) with a pure-torch uniform random walk.
    """
    from torch_geometric.index import index2ptr
    from torch_geometric.nn import Node2Vec
    from torch_geometric.utils import sort_edge_index

    def random_walk(rowptr, col, start, walk_len, p, q):
        deg = rowptr[1:] - rowptr[:-1]
        cur, out = start, [start]
        for _ in range(walk_len):
            dcur = deg[cur]
            off = (torch.rand(cur.shape[0]) * dcur.clamp_min(1)).long()
            nxt = col[(rowptr[cur] + off).clamp_max(col.numel() - 1)] if col.numel() else cur
            cur = torch.where(dcur > 0, nxt, cur)  # isolated nodes stay put
            out.append(cur)
        return torch.stack(out, 1)

    torch.manual_seed(seed)
    model = Node2Vec.__new__(Node2Vec)
    torch.nn.Module.__init__(model)
    model.random_walk_fn = random_walk
    model.num_nodes = n
    row, col = sort_edge_index(edge_index, num_nodes=n)
    model.rowptr, model.col = index2ptr(row, n), col
    model.EPS = 1e-15
    model.embedding_dim, model.walk_length, model.context_size = dim, walk_length - 1, context_size
    model.walks_per_node, model.p, model.q, model.num_negative_samples = walks_per_node, 1.0, 1.0, 1
    model.embedding = torch.nn.Embedding(n, dim, sparse=True)
    model.reset_parameters()
    loader = model.loader(batch_size=batch_size, shuffle=True)
    opt = torch.optim.SparseAdam(list(model.parameters()), lr=lr)
    for _ in range(epochs):
        for pos, neg in loader:
            opt.zero_grad()
            loss = model.loss(pos, neg)
            loss.backward()
            opt.step()
    return model.embedding.weight.detach()


# ----------------------------------------------------------------------------- log Z estimators
def random_features_log_z(x, y, num_features: int, seed: int = 0):
    r"""Positive random features (Choromanski et al. 2020): :math:`e^{x\cdot y} = E_w[\phi(x)\phi(y)]`,
    :math:`\phi(u) = e^{w\cdot u - \|u\|^2/2}/\sqrt{D}`; :math:`\hat Z_i = \phi(x_i)\cdot\sum_a\phi(y_a)`."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(x.shape[1], num_features, generator=g, dtype=x.dtype)

    def logphi(u):
        return u @ w - 0.5 * (u * u).sum(1, keepdim=True)

    ly = torch.logsumexp(logphi(y), 0)  # [D]
    return torch.logsumexp(logphi(x) + ly[None, :], 1) - math.log(num_features)


def nystrom_log_z(x, y, num_landmarks: int, seed: int = 0):
    r"""Nystrom (Drineas & Mahoney 2005; Xiong et al. 2021): landmarks L (random rows of y),
    :math:`\hat Z = K(X, L) K(L, L)^{+} K(L, Y)\mathbf 1` with :math:`K = e^{\langle\cdot,\cdot\rangle}`."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(y.shape[0], generator=g)[:num_landmarks]
    lm = y[idx].double()
    kll = torch.exp(lm @ lm.t())
    kly1 = torch.exp(lm @ y.double().t()).sum(1)
    coef = torch.linalg.pinv(kll, hermitian=True) @ kly1
    z = torch.exp(x.double() @ lm.t()) @ coef
    return torch.log(z.clamp_min(1e-300)).to(x.dtype)


def sampling_log_z(x, y, num_samples: int, seed: int = 0):
    """Uniform sampling of ``g`` columns: :math:`\\hat Z_i = (m/g)\\sum_{a\\in S} e^{x_i\\cdot y_a}`."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(y.shape[0], (num_samples,), generator=g)
    return torch.logsumexp(x @ y[idx].t(), 1) + math.log(y.shape[0] / num_samples)


# ----------------------------------------------------------------------------- the original package
def original_compute_zest(x: np.ndarray, indices: np.ndarray, k: int = 5):
    """The original EDRep package's ``computeZest`` (``pip install edrep``, Dall'Amico &
    Belliardo; faiss spherical k-means, niter 25, <= 256 training points per centroid), called
    as its README does: ``Z_i`` for the rows ``indices`` of ``x`` against all rows of ``x``.
    Returns ``log Z`` (float64 numpy) or raises ImportError when the package is missing."""
    from EDRep import computeZest  # the original package (needs faiss-cpu)

    z = computeZest(x, indices, k=k).Zest
    return np.log(z)
