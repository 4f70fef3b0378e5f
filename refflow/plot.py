r"""Figures for 2-D flows: density heat maps, samples, the latent view, training curves.

matplotlib is an optional extra (``pip install 'refflow[plot]'``), imported when a figure is
first drawn. Figures are made with matplotlib's object API and its Agg canvas, never
``pyplot``: nothing global changes and no window opens, so the functions are safe in
scripts, tests and on machines without a display. Each function draws into ``ax`` when
given one, else into a new figure; it returns the figure and, with ``path``, saves it.

Notes
-----
Lecture: "Flow-based Models", Inference (x -> z = f^{-1}(x), data space to latent space)
and Generation (z ~ p_Z, x = f(z)), drawn side by side as in the lecture's RealNVP slide.

Examples
--------
>>> from refflow import backend
>>> fig = samples(backend.rng(0).standard_normal((100, 2)), title="N(0, I)")
>>> len(fig.axes)
1
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import autograd.numpy as np

from refflow import backend as B

__all__ = ["figure", "density", "samples", "latent", "curves", "grid"]

Bounds = tuple[float, float, float, float]


def _mpl():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            "refflow.plot needs matplotlib: pip install 'refflow[plot]' (or matplotlib)"
        ) from exc
    return Figure, FigureCanvasAgg


def figure(nrows: int = 1, ncols: int = 1, size: float = 3.2) -> tuple[Any, Any]:
    """A new figure on the Agg canvas and its axes (a 2-D array of axes when several)."""
    Figure, Canvas = _mpl()
    fig = Figure(figsize=(size * ncols, size * nrows), layout="constrained")
    Canvas(fig)
    axes = fig.subplots(nrows, ncols, squeeze=nrows * ncols == 1)
    return fig, axes


def _axes(ax):
    if ax is not None:
        return ax.figure, ax
    return figure()


def _finish(fig, path):
    if path is not None:
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise ValueError(f"path: the folder {folder!r} does not exist")
        fig.savefig(path, dpi=120)
    return fig


def _check_bounds(bounds):
    if len(bounds) != 4 or not (bounds[0] < bounds[1] and bounds[2] < bounds[3]):
        raise ValueError(f"bounds: expected (x_low, x_high, y_low, y_high), got {bounds!r}")
    return tuple(float(b) for b in bounds)


def grid(bounds: Bounds, n: int):
    """The n x n cell centres of ``bounds`` as an (n * n, 2) backend array, row-major in y."""
    x0, x1, y0, y1 = _check_bounds(bounds)
    mid = B.arange(n, dtype="float64") + 0.5
    gx = x0 + (x1 - x0) / n * mid
    gy = y0 + (y1 - y0) / n * mid
    xs = gx[None, :] + 0.0 * gy[:, None]  # (n, n): row i is y_i
    ys = gy[:, None] + 0.0 * gx[None, :]
    return np.concatenate([xs.reshape(-1, 1), ys.reshape(-1, 1)], axis=1)


def _log_density(target: Any) -> Callable:
    if hasattr(target, "log_prob"):
        return target.log_prob
    if callable(target):
        return target
    raise ValueError(f"target: expected a flow or a callable z -> log p(z), got {target!r}")


def density(target: Any, bounds: Bounds = (-4.0, 4.0, -4.0, 4.0), n: int = 200,
            ax: Any = None, title: str | None = None, path: str | None = None,
            batch: int = 10000) -> Any:
    """Heat map of p = exp(log p) on an n x n grid of ``bounds``.

    Parameters
    ----------
    target : a 2-D flow (its ``log_prob``) or a callable z (m, 2) -> log p(z) (m,),
        e.g. ``lambda z: -U1(z)`` for an unnormalised target.
    bounds : (x_low, x_high, y_low, y_high).
    n : grid points per axis; the grid is evaluated ``batch`` points at a time.
    """
    log_p = _log_density(target)
    pts = grid(bounds, n)
    values = np.concatenate([B.to_numpy(log_p(pts[i:i + batch]))
                             for i in range(0, pts.shape[0], batch)])
    values = values.reshape(n, n)
    finite = np.isfinite(values)
    top = np.max(values[finite]) if np.any(finite) else 0.0
    # relative to the top of the grid: exp never overflows, the colour scale is unchanged
    img = np.where(finite, np.exp(np.where(finite, values, top) - top), 0.0)
    fig, ax = _axes(ax)
    ax.imshow(img, origin="lower", extent=_check_bounds(bounds), cmap="viridis",
              aspect="equal", interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return _finish(fig, path)


def samples(x: Any, ax: Any = None, title: str | None = None, path: str | None = None,
            bounds: Bounds | None = None, color: str = "tab:blue") -> Any:
    """Scatter plot of an (n, 2) array of points (data, model samples or latents)."""
    pts = B.to_numpy(x)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"x: expected an (n, 2) array, got shape {pts.shape}")
    fig, ax = _axes(ax)
    ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5, color=color, linewidths=0)
    if bounds is not None:
        b = _check_bounds(bounds)
        ax.set_xlim(b[0], b[1])
        ax.set_ylim(b[2], b[3])
    ax.set_aspect("equal")
    if title:
        ax.set_title(title, fontsize=9)
    return _finish(fig, path)


def latent(flow: Any, x: Any, ax: Any = None, title: str | None = "latent z = f^-1(x)",
           path: str | None = None) -> Any:
    """The data pushed to latent space, z = f^{-1}(x), over the base density's 1/2/3-sigma circles.

    A well-trained flow makes the cloud look like a draw from N(0, I).
    """
    z, _ = flow.bijection.inverse(x)
    fig = samples(z, ax=ax, title=title, bounds=(-4.0, 4.0, -4.0, 4.0), color="tab:orange")
    ax = ax if ax is not None else fig.axes[0]
    t = np.linspace(0.0, 2.0 * math.pi, 200)  # host-ok: matplotlib draws on the host
    for r in (1.0, 2.0, 3.0):
        ax.plot(r * np.cos(t), r * np.sin(t), color="0.4", lw=0.6, ls="--")
    return _finish(fig, path)


def curves(history: Mapping[str, Any], ax: Any = None, title: str | None = None,
           path: str | None = None) -> Any:
    """Training curves from a ``fit`` / ``fit_vi`` history: per-step values and evaluations.

    Draws ``"loss"`` (train NLL) or ``"elbo"`` per step, and ``"val_nll"`` at ``"step"``.
    """
    fig, ax = _axes(ax)
    drawn = False
    for key, label in (("loss", "train NLL (batch)"), ("elbo", "ELBO (batch)")):
        values = history.get(key) or []
        if values:
            ax.plot(range(1, len(values) + 1), values, lw=0.6, alpha=0.7, label=label)
            drawn = True
    if history.get("val_nll"):
        ax.plot(history["step"][:len(history["val_nll"])], history["val_nll"], "o-", ms=3,
                label="validation NLL")
        drawn = True
    if not drawn:
        raise ValueError("history: expected 'loss', 'elbo' or 'val_nll' entries")
    ax.set_xlabel("step")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return _finish(fig, path)
