"""NVS evaluation: PSNR, SSIM, the mean-colour baseline, view splits and image grids.

Example::

    test = render_dataset("test", num_scenes=32, num_views=6)
    evaluate_nvs(model, test, num_inputs=4)   # {"psnr": ..., "ssim": ..., "psnr_mean_colour": ...}
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from batchcraft.data.scenes import SceneViews
from batchcraft.models.nvs import NVSModel
from batchcraft.utils.io import atomic_write

__all__ = [
    "evaluate_nvs",
    "image_grid",
    "mean_colour_baseline",
    "psnr",
    "save_grid",
    "split_views",
    "ssim",
]


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image PSNR in dB of images ``[..., 3, H, W]`` in [0, 1] -> ``[...]``."""
    mse = (pred - target).square().flatten(-3).mean(-1)
    return -10 * torch.log10(mse.clamp_min(1e-10))


def _gauss(size: int, sigma: float, dtype: torch.dtype) -> Tensor:
    x = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(pred: Tensor, target: Tensor, *, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean SSIM (Wang et al. 2004; Gaussian window, data range 1, ``valid`` borders).

    ``pred, target: [..., C, H, W]`` -> ``[...]``; channels are averaged. ``C1 = 0.01^2``,
    ``C2 = 0.03^2``; the window shrinks to the image when the image is smaller than it.
    """
    if pred.shape != target.shape or pred.dim() < 3:
        raise ValueError(f"pred and target must be equal [..., C, H, W], got {pred.shape}")
    lead, (c, h, w) = pred.shape[:-3], pred.shape[-3:]
    win = min(window, h, w)
    g = _gauss(win, sigma, pred.dtype)
    k = (g[:, None] * g[None, :]).expand(c, 1, win, win)  # [C, 1, win, win]
    x, y = pred.reshape(-1, c, h, w), target.reshape(-1, c, h, w)

    def blur(z: Tensor) -> Tensor:
        return F.conv2d(z, k, groups=c)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.flatten(1).mean(-1).reshape(lead)


def split_views(
    data: SceneViews, scenes: Tensor, n_in: int, n_tgt: int, generator: torch.Generator | None
) -> tuple[SceneViews, SceneViews]:
    """Inputs and targets of ``scenes [B]``: a random (or, without generator, the first) split."""
    v = data.images.shape[1]
    if n_in + n_tgt > v:
        raise ValueError(f"n_in ({n_in}) + n_tgt ({n_tgt}) must be <= views per scene ({v})")
    if generator is None:
        perm = torch.arange(v).expand(len(scenes), v)
    else:
        perm = torch.argsort(torch.rand(len(scenes), v, generator=generator), dim=1)
    return data.select(scenes, perm[:, :n_in]), data.select(scenes, perm[:, n_in : n_in + n_tgt])


def mean_colour_baseline(inp: SceneViews, tgt: SceneViews) -> Tensor:
    """Predict every target pixel as the mean colour of the input views: ``[B, Vt, 3, H, W]``."""
    mean = inp.images.mean(dim=(1, 3, 4))  # [B, 3]
    return mean[:, None, :, None, None].expand_as(tgt.images)


@torch.no_grad()
def evaluate_nvs(
    model: NVSModel,
    data: SceneViews,
    *,
    num_inputs: int,
    num_targets: int = 2,
    batch: int = 16,
    update: bool = True,
) -> dict[str, float]:
    """PSNR / SSIM on held-out scenes (first ``num_inputs`` views in, next ``num_targets`` out),
    and the PSNR of the mean-colour baseline. ``update=False`` evaluates the LaCT updates-off
    ablation (every layer keeps ``W0``)."""
    model.eval()
    ps, ss, base = [], [], []
    for s in range(0, len(data), batch):
        scenes = torch.arange(s, min(s + batch, len(data)))
        inp, tgt = split_views(data, scenes, num_inputs, num_targets, None)
        pred = model.render(
            model.reconstruct(inp.images, inp.origins, inp.dirs, update=update),
            tgt.origins,
            tgt.dirs,
        )
        ps.append(psnr(pred, tgt.images).flatten())
        ss.append(ssim(pred, tgt.images).flatten())
        base.append(psnr(mean_colour_baseline(inp, tgt), tgt.images).flatten())
    return {
        "psnr": float(torch.cat(ps).mean()),
        "ssim": float(torch.cat(ss).mean()),
        "psnr_mean_colour": float(torch.cat(base).mean()),
    }


def image_grid(rows: list[Tensor], pad: int = 2) -> Tensor:
    """Rows of images (each ``[V_r, 3, H, W]``) -> one ``[H', W', 3]`` array, white padding."""
    h, w = rows[0].shape[-2:]
    ncol = max(r.shape[0] for r in rows)
    out = torch.ones(len(rows) * (h + pad) + pad, ncol * (w + pad) + pad, 3)
    for i, r in enumerate(rows):
        for j, img in enumerate(r):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y : y + h, x : x + w] = img.permute(1, 2, 0).clamp(0, 1)
    return out


def save_grid(path: str | os.PathLike[str], rows: list[Tensor], *, scale: int = 4) -> Path:
    """Save :func:`image_grid` (nearest-upsampled by ``scale``) as a PNG, atomically."""
    from PIL import Image

    g = image_grid(rows)
    g = g.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    arr = (g * 255).round().to(torch.uint8).numpy()
    return atomic_write(path, lambda f: Image.fromarray(arr).save(f, format="PNG"))
