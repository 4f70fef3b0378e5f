"""Helpers shared by the torch libraries' adapter tables (zuko, nflows, normflows, pyro)."""

from __future__ import annotations

from typing import Any

import torch

# The sweep runs many small batched calls: one thread is faster than several on them, and
# keeps a sweep from taking every core of a shared machine.
torch.set_num_threads(1)


def perturbed(module: Any, scale: float, seed: int) -> Any:
    """``module`` in float64 and eval mode, every floating parameter plus N(0, scale^2).

    Libraries initialise their last layers at zero (the identity map) or near it; the
    perturbation makes every transform a non-trivial one. The seed fixes the initialisation
    and the perturbation.
    """
    module = module.double().eval()
    gen = torch.Generator().manual_seed(10_000 + seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.is_floating_point():
                p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


def randn(*shape: int, scale: float, seed: int, offset: float = 0.0) -> torch.Tensor:
    """A float64 tensor ``offset + scale * N(0, 1)`` drawn from ``seed``."""
    gen = torch.Generator().manual_seed(20_000 + seed)
    return offset + scale * torch.randn(shape, generator=gen, dtype=torch.float64)


def distribution_pair(t: Any) -> dict:
    """check_bijection's arguments for a ``torch.distributions.Transform`` (zuko, pyro).

    ``t(z)``, ``t.inv(x)`` and the log-det by a call of its own,
    ``t.log_abs_det_jacobian(z, x)`` (one value per coordinate for element-wise maps).
    """
    return {"forward": t, "inverse": t.inv, "log_det": t.log_abs_det_jacobian}
