"""Procedural 3D scenes for the novel-view-synthesis toy (docs/nvs.md), rendered in PyTorch.

A scene is 1-3 coloured objects (spheres, and axis-aligned boxes) inside the unit volume
``[-0.5, 0.5]^2 x [0, 1]`` standing on a checkered ground plane ``z = 0``, lit by one directional
light (Lambertian + ambient, hard shadows), with a sky gradient behind. Cameras sit on a sphere
around the scene and look at its centre.

Camera convention (OpenCV): camera-to-world ``c2w = [R | t]``, camera axes x right, y down,
z forward; pixel ``(i, j)`` (row, column) has its centre at ``(u, v) = (j + 0.5, i + 0.5)`` and the
world ray ``o = t``, ``d = normalize(R @ K^-1 [u, v, 1])``. A world point ``p`` projects to
``K (R^T (p - t))`` (divided by depth). Plücker coordinates of a ray: ``(d, o x d)``.

How hard the scenes are is a :class:`SceneStyle` (checker contrast and tile size, object size,
anti-aliasing by supersampling); ``EASY_STYLE`` is the setting in which a small model learns the
scene-specific signal within a few CPU minutes.

Shapes: images ``[S, V, 3, H, W]`` in [0, 1]; rays ``[S, V, H, W, 3]``; ``K [S, V, 3, 3]``,
``c2w [S, V, 4, 4]`` (S scenes, V views). Train and test scenes use disjoint seed ranges.

Example::

    data = render_dataset("train", num_scenes=64, num_views=6, size=32)
    data.images.shape   # [64, 6, 3, 32, 32]
    easy = render_dataset("train", num_scenes=64, num_views=6, style=EASY_STYLE)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_STYLE",
    "EASY_STYLE",
    "TEST_SEED_OFFSET",
    "Scene",
    "SceneStyle",
    "SceneViews",
    "camera_rays",
    "look_at",
    "plucker",
    "project",
    "random_cameras",
    "random_scene",
    "render_dataset",
    "render_rays",
    "scene_seed",
]

TEST_SEED_OFFSET = 1_000_000  # train scenes use seeds [0, 1e6), test scenes [1e6, ...)
SCENE_CENTRE = (0.0, 0.0, 0.3)
_EPS = 1e-4


def scene_seed(split: str, index: int) -> int:
    """The seed of scene ``index`` of ``split`` (``"train"`` or ``"test"``; disjoint ranges)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not 0 <= index < TEST_SEED_OFFSET:
        raise ValueError(f"scene index must be in [0, {TEST_SEED_OFFSET}), got {index}")
    return index if split == "train" else TEST_SEED_OFFSET + index


@dataclass(frozen=True, kw_only=True)
class SceneStyle:
    """How hard the scenes are to predict; the defaults are the original toy.

    The checker is the hardest part at 32 px: tiles of 0.25 units are 2-4 pixels wide and alias
    into noise that no model can predict from a few views. ``EASY_STYLE`` (large, anti-aliased
    tiles of low contrast, larger objects) leaves the scene-specific colours and shapes as the
    signal to learn.

    Attributes:
        checker: contrast of the ground checker; the second albedo is ``base * (1 - checker)``
            (0: plain ground).
        tile: side of a checker tile in world units.
        object_scale: multiplies sphere radii and box half-sizes.
        supersample: renders ``s x s`` rays per pixel and averages them (anti-aliasing).
    """

    checker: float = 0.4
    tile: float = 0.25
    object_scale: float = 1.0
    supersample: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.checker <= 1.0:
            raise ValueError(f"checker contrast must be in [0, 1], got {self.checker}")
        if self.tile <= 0 or self.object_scale <= 0:
            raise ValueError(
                f"tile ({self.tile}) and object_scale ({self.object_scale}) must be > 0"
            )
        if not 1 <= self.supersample <= 8:
            raise ValueError(f"supersample must be in [1, 8], got {self.supersample}")


DEFAULT_STYLE = SceneStyle()
EASY_STYLE = SceneStyle(checker=0.25, tile=0.5, object_scale=1.4, supersample=2)


@dataclass
class Scene:
    """Objects of one scene.

    Attributes:
        spheres: [Ns, 4] centre xyz + radius.
        sphere_rgb: [Ns, 3] albedo.
        boxes: [Nb, 6] min xyz + max xyz (axis aligned).
        box_rgb: [Nb, 3] albedo.
        light: [3] unit direction towards the light.
        ground_rgb: [2, 3] the two checker albedos.
        tile: checker tile side in world units.
    """

    spheres: Tensor
    sphere_rgb: Tensor
    boxes: Tensor
    box_rgb: Tensor
    light: Tensor
    ground_rgb: Tensor
    tile: float = 0.25


def random_scene(seed: int, *, boxes: bool = True, style: SceneStyle = DEFAULT_STYLE) -> Scene:
    """1-3 objects (a box with probability 1/3 each when ``boxes``), deterministic by ``seed``.

    The random draws do not depend on ``style``: the same seed gives the same layout and colours,
    only scaled / re-textured.
    """
    g = torch.Generator().manual_seed(seed)
    sc = style.object_scale
    n = int(torch.randint(1, 4, (1,), generator=g))
    sph, sph_c, box, box_c = [], [], [], []
    for _ in range(n):
        rgb = 0.15 + 0.85 * torch.rand(3, generator=g)
        xy = (torch.rand(2, generator=g) - 0.5) * 0.7
        is_box = boxes and float(torch.rand(1, generator=g)) < 1 / 3
        if is_box:
            half = (0.08 + 0.15 * torch.rand(3, generator=g)) * sc
            lo = torch.cat([xy - half[:2], torch.zeros(1)])
            hi = torch.cat([xy + half[:2], 2 * half[2:]])
            box.append(torch.cat([lo, hi]))
            box_c.append(rgb)
        else:
            r = (0.12 + 0.2 * torch.rand(1, generator=g)) * sc
            z = r + 0.3 * torch.rand(1, generator=g) * float(torch.rand(1, generator=g) < 0.3)
            sph.append(torch.cat([xy, z, r]))
            sph_c.append(rgb)
    az = 2 * math.pi * torch.rand(1, generator=g)
    el = math.radians(35) + math.radians(40) * torch.rand(1, generator=g)
    light = torch.cat([el.cos() * az.cos(), el.cos() * az.sin(), el.sin()])
    base = 0.35 + 0.4 * torch.rand(3, generator=g)
    return Scene(
        spheres=torch.stack(sph) if sph else torch.zeros(0, 4),
        sphere_rgb=torch.stack(sph_c) if sph_c else torch.zeros(0, 3),
        boxes=torch.stack(box) if box else torch.zeros(0, 6),
        box_rgb=torch.stack(box_c) if box_c else torch.zeros(0, 3),
        light=light,
        ground_rgb=torch.stack([base, base * (1 - style.checker)]),
        tile=style.tile,
    )


def look_at(eye: Tensor, target: Tensor, up: Tensor | None = None) -> Tensor:
    """Camera-to-world ``[..., 4, 4]`` for cameras at ``eye [..., 3]`` looking at ``target``."""
    up = torch.tensor([0.0, 0.0, 1.0], dtype=eye.dtype) if up is None else up
    z = torch.nn.functional.normalize(target - eye, dim=-1)  # forward
    x = torch.nn.functional.normalize(torch.linalg.cross(z, up.expand_as(z)), dim=-1)  # right
    y = torch.linalg.cross(z, x)  # down
    c2w = torch.zeros(*eye.shape[:-1], 4, 4, dtype=eye.dtype)
    c2w[..., :3, 0], c2w[..., :3, 1], c2w[..., :3, 2], c2w[..., :3, 3] = x, y, z, eye
    c2w[..., 3, 3] = 1.0
    return c2w


def random_cameras(
    n: int, size: int, *, generator: torch.Generator, fov_deg: float = 50.0
) -> tuple[Tensor, Tensor]:
    """``n`` cameras on a sphere (radius 2.2-2.8, elevation 10-55 deg) looking at the scene centre.

    Returns:
        ``(K [n, 3, 3], c2w [n, 4, 4])`` for ``size x size`` images.
    """
    az = 2 * math.pi * torch.rand(n, generator=generator)
    el = torch.deg2rad(10 + 45 * torch.rand(n, generator=generator))
    rad = 2.2 + 0.6 * torch.rand(n, generator=generator)
    centre = torch.tensor(SCENE_CENTRE)
    eye = centre + rad[:, None] * torch.stack(
        [el.cos() * az.cos(), el.cos() * az.sin(), el.sin()], dim=-1
    )
    f = size / 2 / math.tan(math.radians(fov_deg) / 2)
    K = torch.tensor([[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]]).expand(n, 3, 3)
    return K.clone(), look_at(eye, centre.expand_as(eye))


def camera_rays(
    K: Tensor, c2w: Tensor, size: int, *, supersample: int = 1
) -> tuple[Tensor, Tensor]:
    """Per-pixel world rays: origins and unit directions ``[..., size * s, size * s, 3]``.

    With ``supersample = s`` each pixel gets ``s x s`` rays through the centres of its sub-pixels
    (at ``(j + (a + 0.5) / s)`` for ``a < s``), row-major, so ``s x s`` blocks belong to one pixel.
    """
    c = (torch.arange(size * supersample, dtype=K.dtype) + 0.5) / supersample
    v, u = torch.meshgrid(c, c, indexing="ij")  # rows, columns
    pix = torch.stack([u, v, torch.ones_like(u)], dim=-1)  # [sH, sW, 3]
    cam = pix @ torch.linalg.inv(K).mT[..., None, :, :]  # [..., sH, sW, 3]
    d = torch.nn.functional.normalize(cam @ c2w[..., None, :3, :3].mT, dim=-1)
    o = c2w[..., None, None, :3, 3].expand_as(d)
    return o, d


def project(K: Tensor, c2w: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
    """World points ``p [..., 3]`` -> pixel coordinates ``(u, v) [..., 2]`` and depth ``[...]``."""
    r, t = c2w[..., :3, :3], c2w[..., :3, 3]
    pc = ((p - t)[..., None, :] @ r)[..., 0, :]  # R^T (p - t)
    uv1 = (pc[..., None, :] @ K.mT)[..., 0, :]
    return uv1[..., :2] / uv1[..., 2:3], pc[..., 2]


def plucker(o: Tensor, d: Tensor) -> Tensor:
    """Plücker coordinates ``(d, o x d)``: ``[..., 6]`` (moment orthogonal to d)."""
    return torch.cat([d, torch.linalg.cross(o, d)], dim=-1)


def _hit(scene: Scene, o: Tensor, d: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Nearest object hit along rays o, d [N, 3]: (t [N], normal [N, 3], albedo [N, 3], kind [N]).

    ``kind``: 0 sky, 1 ground, 2 object; ``t = inf`` on misses.
    """
    n = o.shape[0]
    inf = torch.full((n,), math.inf)
    best_t, normal, rgb = inf.clone(), torch.zeros(n, 3), torch.zeros(n, 3)
    kind = torch.zeros(n, dtype=torch.long)
    # ground z = 0 (within a disk so that the horizon stays sky)
    tg = torch.where(d[:, 2] < -1e-6, -o[:, 2] / d[:, 2].clamp(max=-1e-6), inf)
    pg = o + tg.clamp(max=1e6)[:, None] * d
    tg = torch.where(pg[:, :2].norm(dim=-1) < 4.0, tg, inf)
    cell = (pg[:, :2] / scene.tile).floor()
    checker = (cell[:, 0] + cell[:, 1]).remainder(2).long()
    m = tg < best_t
    best_t = torch.where(m, tg, best_t)
    normal[m] = torch.tensor([0.0, 0.0, 1.0])
    rgb[m] = scene.ground_rgb[checker[m]]
    kind[m] = 1
    for (c, r), col in zip(
        zip(scene.spheres[:, :3], scene.spheres[:, 3], strict=True), scene.sphere_rgb, strict=True
    ):
        oc = o - c
        b = (oc * d).sum(-1)
        disc = b * b - (oc * oc).sum(-1) + r * r
        ts = -b - disc.clamp(min=0).sqrt()
        ts = torch.where((disc > 0) & (ts > _EPS), ts, inf)
        m = ts < best_t
        best_t = torch.where(m, ts, best_t)
        normal[m] = (o[m] + ts[m, None] * d[m] - c) / r
        rgb[m], kind[m] = col, 2
    safe_d = torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
    for bx, col in zip(scene.boxes, scene.box_rgb, strict=True):
        t1, t2 = (bx[:3] - o) / safe_d, (bx[3:] - o) / safe_d
        tmin_ax = torch.minimum(t1, t2)
        tnear, axis = tmin_ax.max(dim=-1)
        tfar = torch.maximum(t1, t2).min(dim=-1).values
        tb = torch.where((tfar >= tnear) & (tnear > _EPS), tnear, inf)
        m = tb < best_t
        best_t = torch.where(m, tb, best_t)
        nrm = torch.zeros(n, 3)
        nrm.scatter_(1, axis[:, None], -torch.sign(d.gather(1, axis[:, None])))
        normal[m] = nrm[m]
        rgb[m], kind[m] = col, 2
    return best_t, normal, rgb, kind


def render_rays(scene: Scene, o: Tensor, d: Tensor) -> Tensor:
    """Colour of rays ``o, d [..., 3]`` -> ``[..., 3]`` in [0, 1] (Lambert + ambient + shadows)."""
    shape = o.shape[:-1]
    o, d = o.reshape(-1, 3).float(), d.reshape(-1, 3).float()
    t, nrm, alb, kind = _hit(scene, o, d)
    hit = kind > 0
    p = o + t.clamp(max=1e6)[:, None] * d
    light = scene.light.float()
    lam = (nrm * light).sum(-1).clamp(min=0)
    _, _, _, ks = _hit(scene, p + nrm * 1e-3, light.expand_as(p))
    lit = torch.where(ks == 2, 0.0, 1.0)  # shadowed when an object blocks the light
    col = alb * (0.25 + 0.75 * lam * lit)[:, None]
    sky = torch.tensor([0.55, 0.7, 0.95]) * (0.75 + 0.25 * d[:, 2:3].clamp(0, 1))
    out = torch.where(hit[:, None], col, sky).clamp(0, 1)
    return out.reshape(*shape, 3)


@dataclass
class SceneViews:
    """Rendered views of many scenes (S scenes, V views, H = W = size).

    Attributes:
        images: [S, V, 3, H, W] in [0, 1].
        origins: [S, V, H, W, 3] ray origins.
        dirs: [S, V, H, W, 3] unit ray directions.
        K: [S, V, 3, 3] intrinsics.
        c2w: [S, V, 4, 4] camera-to-world.
    """

    images: Tensor
    origins: Tensor
    dirs: Tensor
    K: Tensor
    c2w: Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    def select(self, scenes: Tensor, views: Tensor) -> SceneViews:
        """Scenes ``scenes [B]`` and, per scene, views ``views [B, V']``."""
        s = scenes[:, None]
        return SceneViews(
            self.images[s, views],
            self.origins[s, views],
            self.dirs[s, views],
            self.K[s, views],
            self.c2w[s, views],
        )


def render_dataset(
    split: str,
    *,
    num_scenes: int,
    num_views: int,
    size: int = 32,
    start: int = 0,
    boxes: bool = True,
    style: SceneStyle = DEFAULT_STYLE,
) -> SceneViews:
    """Render ``num_views`` random views of scenes ``start .. start+num_scenes`` of ``split``.

    With ``style.supersample = s`` each pixel is the mean of an ``s x s`` grid of rays inside it;
    the returned rays are still the pixel-centre rays.
    """
    if not 8 <= size <= 128:
        raise ValueError(f"size must be in [8, 128], got {size}")
    if num_scenes < 1 or num_views < 1:
        raise ValueError(f"num_scenes ({num_scenes}) and num_views ({num_views}) must be >= 1")
    ss = style.supersample
    imgs, os_, ds, Ks, cs = [], [], [], [], []
    for i in range(start, start + num_scenes):
        seed = scene_seed(split, i)
        scene = random_scene(seed, boxes=boxes, style=style)
        K, c2w = random_cameras(num_views, size, generator=torch.Generator().manual_seed(seed + 7))
        o, d = camera_rays(K, c2w, size)  # [V, H, W, 3]
        if ss == 1:
            img = render_rays(scene, o, d).permute(0, 3, 1, 2)  # [V, 3, H, W]
        else:  # s x s sub-pixel rays, then the mean of each s x s block
            fine = render_rays(scene, *camera_rays(K, c2w, size, supersample=ss))
            img = torch.nn.functional.avg_pool2d(fine.permute(0, 3, 1, 2), ss)  # [V, 3, H, W]
        imgs.append(img)
        os_.append(o)
        ds.append(d)
        Ks.append(K)
        cs.append(c2w)
    return SceneViews(
        torch.stack(imgs), torch.stack(os_), torch.stack(ds), torch.stack(Ks), torch.stack(cs)
    )
