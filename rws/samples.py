"""Pictures of a trained model on image data: dreams from P, data points, and their
reconstructions through Q then P (``rws samples``; ``rws report`` adds one per run
whose checkpoint is at hand).

    dreams           (x, h) ~ p(x, h) by ancestral sampling; shown as the data layer's
                     probabilities p(x | h_1) (sigmoid of its logits), or as the binary
                     x with ``binary`` (always for autoregressive data layers, DARN and
                     NADE, whose pixel probabilities depend on the pixels drawn before)
    reconstructions  h ~ q(h | x) for a data point x, then p(x | h_1) as above
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from rws.errors import UserError


def image_side(dim: int) -> int | None:
    """The side of a square image of dim pixels (28 for MNIST and Caltech-101), or None."""
    side = math.isqrt(dim)
    return side if side * side == dim else None


def _data_layer_view(model, h1: torch.Tensor, binary: bool, generator) -> torch.Tensor:
    """p(x | h_1) [n, D] where the data layer has logits and ``binary`` is off, else a
    binary x ~ p(x | h_1)."""
    layer = model.p_layers[0]
    if not binary and hasattr(layer, "logits"):
        return torch.sigmoid(layer.logits(h1))
    x, _ = layer.sample(h1, 1, generator, score=False)
    return x


@torch.no_grad()
def panels(model, data: torch.Tensor, n: int, binary: bool = False,
           seed: int = 0) -> dict[str, torch.Tensor]:
    """{"dreams", "data", "reconstructions"} -> [n, D] in [0, 1], the data points being
    n of ``data`` [N, D] evenly spaced through it (data sets are often sorted by class)."""
    g = torch.Generator().manual_seed(seed)
    dreams = model.sample_p(n, g)                                   # [x, h_1, ...]
    x = data[spread(len(data), n)].float()
    hs, _ = model.sample_q(x, 1, g)                                 # [x, h_1 [n, n_1], ...]
    return {"dreams": _data_layer_view(model, dreams[1], binary, g),
            "data": x,
            "reconstructions": _data_layer_view(model, hs[1], binary, g)}


def spread(N: int, n: int) -> torch.Tensor:
    """n indices evenly spaced over 0..N-1 (all N if n >= N)."""
    return torch.linspace(0, N - 1, min(n, N)).round().long()


def grid(images: torch.Tensor, side: int, cols: int) -> torch.Tensor:
    """[n, side*side] -> one [rows*(side+1)-1, cols*(side+1)-1] picture, 1-pixel gaps."""
    n = images.shape[0]
    rows = math.ceil(n / cols)
    out = torch.full((rows * (side + 1) - 1, cols * (side + 1) - 1), 0.5)
    for i in range(n):
        r, c = divmod(i, cols)
        out[r * (side + 1):r * (side + 1) + side,
            c * (side + 1):c * (side + 1) + side] = images[i].view(side, side)
    return out


def save_figure(pics: dict[str, torch.Tensor], side: int, path: Path, title: str,
                permutation: torch.Tensor | None = None) -> None:
    """The three panels side by side as a PNG (or any format matplotlib writes).
    ``permutation``: the run's pixel permutation, undone for display."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"dreams": "dreams from P", "data": "data points",
              "reconstructions": "reconstructions (Q, then P)"}
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.8))
    for ax, (key, images) in zip(axes, pics.items()):
        if permutation is not None:
            images = images[:, torch.argsort(permutation)]
        cols = math.ceil(math.sqrt(images.shape[0]))
        ax.imshow(grid(images.cpu(), side, cols), cmap="gray_r", vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_title(labels[key], fontsize=10)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight", dpi=110)
    plt.close(fig)


def from_checkpoint(checkpoint: str | Path, out: str | Path, n: int = 64,
                    binary: bool = False, split: str = "test", seed: int = 0) -> str:
    """Load a run (or an exported model) and draw its picture into ``out``; returns the
    title. A data set that is not square images is refused with one line."""
    from rws.train import load_tested, pixel_permutation
    run = load_tested(checkpoint)
    cfg, x, model, epoch = run.cfg, run.splits[split], run.model, run.epoch
    side = image_side(x.shape[1])
    if side is None:
        raise UserError(f"'{cfg.data}' is not an image data set ({x.shape[1]} units, not a "
                        "square); rws samples draws image data such as binarized_mnist")
    model.eval()
    pics = panels(model, x, n, binary, seed)
    title = (f"{cfg.data} {cfg.model} ({cfg.method}, K={cfg.K}), epoch {epoch}: "
             + ("binary samples" if binary else "pixel probabilities"))
    save_figure(pics, side, Path(out), title, pixel_permutation(cfg, x.shape[1]))
    return title
