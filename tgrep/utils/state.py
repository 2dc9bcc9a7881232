"""State that a module learns from data (fitted embeddings, cached cluster labels): buffers whose
shape is only known after fitting, so a checkpoint must be able to *give* them their shape."""
from __future__ import annotations

import torch


def adopt_buffers(module: torch.nn.Module, state_dict: dict, prefix: str, names) -> None:
    """Call at the start of ``_load_from_state_dict``: each buffer in ``names`` takes the
    checkpoint's shape and dtype (on the module's current device), or becomes ``None`` when the
    checkpoint has none, so ``load_state_dict`` then copies the values in without a size mismatch."""
    for name in names:
        value = state_dict.get(prefix + name)
        current = module._buffers.get(name)
        if value is None:
            module._buffers[name] = None
            continue
        device = current.device if isinstance(current, torch.Tensor) else value.device
        module._buffers[name] = torch.empty(value.shape, dtype=value.dtype, device=device)
