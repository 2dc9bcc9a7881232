r"""``ProdigeEmbedding``: items as distances to anchor vertices of a PRODIGE graph (Sec. 4.3, eq. 7)."""
from __future__ import annotations


import torch
from torch import nn

from ..utils import check
from .prodige import ProdigeGraph, coalesce_edges


class ProdigeEmbedding(nn.Module):
    r"""A drop-in replacement for ``nn.Embedding(num_embeddings, num_anchors)`` whose vectors are
    shortest-path distances in a learnable stochastic graph (PRODIGE, Mazur et al. 2019, eq. 7):

    .. math::
        \mathrm{emb}(i) = \big(d_G(v_i, a_1), \dots, d_G(v_i, a_K)\big),

    where :math:`v_0..v_{n-1}` are item vertices and :math:`a_1..a_K` extra anchor vertices
    (vertices ``n .. n+K-1`` of the graph). Unreachable anchors give the graph's
    ``default_distance``. Gradients reach the edge lengths (path gradients) in an ordinary
    training loop; for the presence logits add one line (the loss couples rows, so pass the
    scalar loss; a moving-average baseline keeps it unbiased)::

        loss = F.cross_entropy(model(tokens), y)
        (loss + lam * emb.sparsity() + emb.reinforce(loss)).backward()

    **Search direction.** A batch with ``U`` distinct items needs either ``U`` searches from the
    items, each stopping once all ``K`` anchors are settled, or ``K`` full searches from the
    anchors (undirected graphs only). ``direction="auto"`` runs the fewer searches. In training
    mode every search draws its own graph sample, so the two directions share the marginal
    distribution of each distance but not the joint one; eval mode is deterministic and
    identical either way.

    Args:
        num_embeddings (int): number of items ``n``.
        num_anchors (int): embedding size ``K``.
        graph (ProdigeGraph, optional): a graph on ``n + K`` vertices, anchors last; by default
            each item gets ``item_edges`` random item neighbours and ``anchor_edges`` random
            anchors, undirected, lengths ``U(0.5, 1.5)`` (default: ``None``).
        item_edges (int, optional): random item–item candidate edges per item (default: ``8``).
        anchor_edges (int, optional): random item–anchor candidate edges per item (default: ``2``).
        direction (str, optional): ``"auto"``, ``"items"`` or ``"anchors"`` (default: ``"auto"``).
        **kwargs: passed to :class:`ProdigeGraph` when it is built here (``init_prob``,
            ``default_distance``, ``learn_default_distance``, ``sparse``).
    """

    def __init__(self, num_embeddings: int, num_anchors: int, *, graph: ProdigeGraph | None = None,
                 item_edges: int = 8, anchor_edges: int = 2, direction: str = "auto", **kwargs):
        super().__init__()
        check.positive_int("num_embeddings", num_embeddings)
        check.positive_int("num_anchors", num_anchors)
        check.one_of("direction", direction, ("auto", "items", "anchors"))
        n, K = num_embeddings, num_anchors
        if graph is None:
            check.positive_int("item_edges", item_edges, allow_zero=True)
            check.positive_int("anchor_edges", anchor_edges)
            src = torch.arange(n).repeat_interleave(item_edges)
            parts = [torch.stack([src, torch.randint(0, n, (src.numel(),))])] if n > 1 else []
            src = torch.arange(n).repeat_interleave(anchor_edges)
            parts.append(torch.stack([src, n + torch.randint(0, K, (src.numel(),))]))
            ei = coalesce_edges(torch.cat(parts, 1), n + K, directed=False)
            w0 = 0.5 + torch.rand(ei.size(1))
            graph = ProdigeGraph(ei, n + K, init_weight=w0, **kwargs)
        elif not isinstance(graph, ProdigeGraph):
            raise TypeError(f"'graph' must be a ProdigeGraph, got {type(graph).__name__}")
        elif graph.num_nodes != n + K:
            raise ValueError(f"'graph' must have num_embeddings + num_anchors = {n + K} vertices, "
                             f"got {graph.num_nodes}")
        if direction == "anchors" and graph.directed:
            raise ValueError("direction='anchors' needs an undirected graph")
        self.num_embeddings, self.num_anchors, self.direction = n, K, direction
        self.embedding_dim = K
        self.graph = graph
        self.register_buffer("anchors", torch.arange(n, n + K, device=graph.indptr.device))

    def reset_parameters(self):
        self.graph.reset_parameters()

    def sparsity(self) -> torch.Tensor:
        """The graph's λ-term (mean edge probability)."""
        return self.graph.sparsity()

    def reinforce(self, loss: torch.Tensor, **kwargs) -> torch.Tensor:
        """The graph's REINFORCE surrogate for the last training forward (see
        :meth:`ProdigeGraph.reinforce`); pass the scalar loss."""
        return self.graph.reinforce(loss, **kwargs)

    def num_stored_parameters(self) -> int:
        """Numbers stored by the pruned graph (``N + 2|E_kept|``, anchors included)."""
        return self.graph.num_stored_parameters()

    def choose_direction(self, num_items: int) -> str:
        if self.direction != "auto":
            return self.direction
        return "anchors" if (not self.graph.directed and self.num_anchors < num_items) else "items"

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        check.tensor("index", index, dtypes=check.INDEX_DTYPES, device=self.anchors.device)
        check.index_range("index", index, self.num_embeddings)
        flat = index.reshape(-1)
        K = self.num_anchors
        if flat.numel() == 0:
            return self.graph.default_distance.new_zeros(*index.shape, K)
        uniq, inv = torch.unique(flat, return_inverse=True)
        if self.choose_direction(uniq.numel()) == "anchors":
            d = self.graph(self.anchors, None)[:, uniq].T  # [U, K]
        else:
            d = self.graph(uniq, self.anchors.expand(uniq.numel(), K))
        return d[inv].reshape(*index.shape, K)

    def extra_repr(self) -> str:
        g = self.graph
        return (f"{self.num_embeddings}, {self.num_anchors}, num_edges={g.num_edges}, "
                f"direction={self.direction!r}, sparse={g.sparse}")
