"""PNG sample grids written during training: source | prediction | target | |error| | confidence."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from medsyn.io.image import atomic_write_bytes


def save_sample_grid(path: Path, source: torch.Tensor, pred: torch.Tensor, target: torch.Tensor,
                     confidence: torch.Tensor | None = None) -> Path:
    """One row per patch. Inputs (B, 1, H, W) in network range [-1, 1]; confidence in [0, 1].

    Columns: centre source slice | prediction | target | |prediction − target| | confidence M
    (when the method has one). Written atomically.
    """
    cols = [("source", source, "gray", (-1, 1)), ("prediction", pred, "gray", (-1, 1)), ("target", target, "gray", (-1, 1)),
            ("|error|", (pred - target).abs(), "magma", (0, 1))]
    if confidence is not None:
        cols.append(("confidence M", confidence, "viridis", (0, 1)))
    return save_image_grid(path, cols)


def save_image_grid(path: Path, cols: list[tuple[str, torch.Tensor, str, tuple[float, float]]],
                    cell_inches: float = 2.2) -> Path:
    """PNG with one row per sample and one column per ``(title, (B, 1, H, W) tensor, cmap, (lo, hi))``.

    Shared by every method's training-time sample grids. Written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = cols[0][1].shape[0]
    fig, axes = plt.subplots(b, len(cols), figsize=(cell_inches * len(cols), cell_inches * b), squeeze=False)
    for i in range(b):
        for j, (title, t, cmap, (lo, hi)) in enumerate(cols):
            ax = axes[i, j]
            ax.imshow(np.rot90(t[i, 0].detach().float().cpu().numpy()), cmap=cmap, vmin=lo, vmax=hi)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
