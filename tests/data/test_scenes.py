"""Procedural scenes: camera geometry, Plücker rays, determinism, split disjointness, renderer."""

from __future__ import annotations

import math

import pytest
import torch

from batchcraft.data.scenes import (
    EASY_STYLE,
    TEST_SEED_OFFSET,
    Scene,
    SceneStyle,
    camera_rays,
    plucker,
    project,
    random_cameras,
    random_scene,
    render_dataset,
    render_rays,
    scene_seed,
)

SIZE = 16


@pytest.fixture(scope="module")
def cams() -> tuple[torch.Tensor, torch.Tensor]:
    return random_cameras(5, SIZE, generator=torch.Generator().manual_seed(3))


def test_points_on_pixel_rays_project_to_pixel_centres(cams) -> None:
    K, c2w = cams
    o, d = camera_rays(K, c2w, SIZE)  # [V, H, W, 3]
    t = torch.rand(5, SIZE, SIZE, 1, generator=torch.Generator().manual_seed(0)) * 3 + 0.5
    uv, depth = project(K[:, None, None], c2w[:, None, None], o + t * d)
    c = torch.arange(SIZE, dtype=torch.float32) + 0.5
    v, u = torch.meshgrid(c, c, indexing="ij")
    torch.testing.assert_close(uv[..., 0], u.expand_as(uv[..., 0]), atol=1e-3, rtol=0)
    torch.testing.assert_close(uv[..., 1], v.expand_as(uv[..., 1]), atol=1e-3, rtol=0)
    assert (depth > 0).all()


def test_projected_point_lands_on_pixel_whose_ray_passes_through_it(cams) -> None:
    K, c2w = cams
    o, d = camera_rays(K, c2w, SIZE)
    g = torch.Generator().manual_seed(1)
    p = (torch.rand(200, 3, generator=g) - 0.5) * torch.tensor([0.6, 0.6, 0.6]) + 0.3
    for view in range(5):
        uv, _ = project(K[view], c2w[view], p)
        inside = ((uv >= 0) & (uv < SIZE)).all(-1)
        assert inside.sum() > 50, "most scene points must be in view"
        j, i = uv[inside, 0].long(), uv[inside, 1].long()
        to_p = torch.nn.functional.normalize(p[inside] - o[view, i, j], dim=-1)
        ang = torch.acos((to_p * d[view, i, j]).sum(-1).clamp(-1, 1))
        half_diag = math.sqrt(0.5) / K[view, 0, 0]  # half a pixel diagonal, in radians
        assert (ang <= half_diag * 1.01).all()


def test_plucker_moment_is_o_cross_d_and_orthogonal(cams) -> None:
    K, c2w = cams
    o, d = camera_rays(K, c2w, SIZE)
    pl = plucker(o, d)
    assert pl.shape == (5, SIZE, SIZE, 6)
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(5, SIZE, SIZE))
    torch.testing.assert_close(pl[..., 3:], torch.linalg.cross(o, d))
    assert (pl[..., :3] * pl[..., 3:]).sum(-1).abs().max() < 1e-5
    # the moment does not depend on which point of the ray is the origin
    torch.testing.assert_close(plucker(o + 0.7 * d, d), pl, atol=1e-5, rtol=0)


def test_cameras_look_at_the_scene_centre(cams) -> None:
    K, c2w = cams
    centre = torch.tensor([0.0, 0.0, 0.3])
    uv, depth = project(K, c2w, centre.expand(5, 3))
    torch.testing.assert_close(uv, torch.full((5, 2), SIZE / 2.0), atol=1e-4, rtol=0)
    assert ((depth > 2.1) & (depth < 2.9)).all()
    # rotation is orthonormal with det +1
    r = c2w[:, :3, :3]
    torch.testing.assert_close(r.mT @ r, torch.eye(3).expand(5, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(5), atol=1e-5, rtol=0)


def test_renderer_sees_a_sphere_with_lambert_shading() -> None:
    scene = Scene(
        spheres=torch.tensor([[0.0, 0.0, 0.3, 0.3]]),
        sphere_rgb=torch.tensor([[1.0, 0.0, 0.0]]),
        boxes=torch.zeros(0, 6),
        box_rgb=torch.zeros(0, 3),
        light=torch.tensor([0.0, 0.0, 1.0]),
        ground_rgb=torch.tensor([[0.5, 0.5, 0.5], [0.3, 0.3, 0.3]]),
    )
    o = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, 3.0], [2.0, 0.0, 0.3]])
    d = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]])
    rgb = render_rays(scene, o, d)
    torch.testing.assert_close(rgb[0], torch.tensor([1.0, 0.0, 0.0]))  # top: normal || light
    assert rgb[1, 2] > rgb[1, 0]  # looking up: sky (blue)
    torch.testing.assert_close(rgb[2], torch.tensor([0.25, 0.0, 0.0]))  # side: ambient only
    # ground under the sphere is in shadow (ambient only), ground beside it is lit
    o2 = torch.tensor([[1.0, 0.0, 0.05], [1.0, 0.0, 0.05]])
    tgt = torch.tensor([[0.26, 0.0, 0.0], [0.6, 0.0, 0.0]])
    g = render_rays(scene, o2, torch.nn.functional.normalize(tgt - o2, dim=-1))
    torch.testing.assert_close(g[0], torch.full((3,), 0.3 * 0.25))  # checker cell 1, shadowed
    torch.testing.assert_close(g[1], torch.full((3,), 0.5))  # checker cell 0, fully lit


def test_box_is_rendered_with_face_normals() -> None:
    scene = Scene(
        spheres=torch.zeros(0, 4),
        sphere_rgb=torch.zeros(0, 3),
        boxes=torch.tensor([[-0.2, -0.2, 0.0, 0.2, 0.2, 0.4]]),
        box_rgb=torch.tensor([[0.0, 1.0, 0.0]]),
        light=torch.tensor([1.0, 0.0, 0.0]),
        ground_rgb=torch.tensor([[0.5, 0.5, 0.5], [0.3, 0.3, 0.3]]),
    )
    o = torch.tensor([[2.0, 0.0, 0.2], [0.0, 2.0, 0.2]])
    d = torch.tensor([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    rgb = render_rays(scene, o, d)
    torch.testing.assert_close(rgb[0], torch.tensor([0.0, 1.0, 0.0]))  # face lit head-on
    torch.testing.assert_close(rgb[1], torch.tensor([0.0, 0.25, 0.0]))  # face at 90 deg


def test_dataset_deterministic_and_splits_disjoint() -> None:
    a = render_dataset("train", num_scenes=2, num_views=2, size=SIZE)
    b = render_dataset("train", num_scenes=2, num_views=2, size=SIZE)
    c = render_dataset("test", num_scenes=2, num_views=2, size=SIZE)
    assert a.images.shape == (2, 2, 3, SIZE, SIZE) and a.origins.shape == (2, 2, SIZE, SIZE, 3)
    assert torch.equal(a.images, b.images)
    assert not torch.allclose(a.images, c.images)
    assert float(a.images.min()) >= 0.0 and float(a.images.max()) <= 1.0
    assert scene_seed("test", 0) == TEST_SEED_OFFSET and scene_seed("train", 5) == 5
    assert torch.equal(random_scene(4).spheres, random_scene(4).spheres)


def test_supersample_rays_pass_through_the_sub_pixel_centres(cams) -> None:
    K, c2w = cams
    s = 3
    o, d = camera_rays(K, c2w, SIZE, supersample=s)  # [V, sH, sW, 3]
    assert o.shape == (5, s * SIZE, s * SIZE, 3)
    uv, _ = project(K[:, None, None], c2w[:, None, None], o + 1.7 * d)
    sub = (torch.arange(s * SIZE, dtype=torch.float32) + 0.5) / s
    torch.testing.assert_close(uv[..., 0], sub.expand_as(uv[..., 0]), atol=1e-3, rtol=0)
    torch.testing.assert_close(uv[..., 1], sub[:, None].expand_as(uv[..., 1]), atol=1e-3, rtol=0)
    # block (i, j) of s x s sub-pixels lies inside pixel (i, j): its mean is the pixel centre
    centre = uv.view(5, SIZE, s, SIZE, s, 2).mean(dim=(2, 4))
    c = torch.arange(SIZE, dtype=torch.float32) + 0.5
    torch.testing.assert_close(centre[..., 0], c.expand(5, SIZE, SIZE), atol=1e-3, rtol=0)
    # supersample=1 is the plain pixel-centre grid
    _, d1 = camera_rays(K, c2w, SIZE, supersample=1)
    torch.testing.assert_close(d1, camera_rays(K, c2w, SIZE)[1], atol=0, rtol=0)


def test_supersampled_image_is_the_mean_of_sub_pixel_renders() -> None:
    plain = render_dataset("train", num_scenes=1, num_views=2, size=SIZE)
    st = SceneStyle(supersample=2)
    aa = render_dataset("train", num_scenes=1, num_views=2, size=SIZE, style=st)
    torch.testing.assert_close(aa.dirs, plain.dirs, atol=0, rtol=0)  # rays: pixel centres
    scene = random_scene(scene_seed("train", 0), style=st)
    fine = render_rays(scene, *camera_rays(aa.K[0], aa.c2w[0], SIZE, supersample=2))
    ref = fine.view(2, SIZE, 2, SIZE, 2, 3).mean(dim=(2, 4)).permute(0, 3, 1, 2)
    torch.testing.assert_close(aa.images[0], ref)
    # anti-aliasing smooths: lower total variation than point sampling of the same views

    def tv(x: torch.Tensor) -> float:
        return float(x.diff(dim=-1).abs().mean() + x.diff(dim=-2).abs().mean())

    assert tv(aa.images) < 0.9 * tv(plain.images)


def test_style_changes_texture_and_scale_not_the_layout() -> None:
    base = random_scene(11)
    assert base.tile == 0.25
    torch.testing.assert_close(base.ground_rgb[1], 0.6 * base.ground_rgb[0])  # default contrast
    big = random_scene(11, style=SceneStyle(object_scale=2.0, checker=0.0, tile=0.5))
    torch.testing.assert_close(big.sphere_rgb, base.sphere_rgb)  # same draws, same colours
    torch.testing.assert_close(big.spheres[:, :2], base.spheres[:, :2])
    torch.testing.assert_close(big.spheres[:, 3], 2 * base.spheres[:, 3])
    torch.testing.assert_close(big.ground_rgb[0], big.ground_rgb[1])  # checker 0: plain ground
    assert big.tile == 0.5 and EASY_STYLE.supersample == 2


@pytest.mark.parametrize("tile", [0.25, 0.5])
def test_checker_tiles_flip_at_multiples_of_the_tile(tile: float) -> None:
    empty = torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0, 6), torch.zeros(0, 3)
    scene = Scene(*empty, light=torch.tensor([0.0, 0.0, 1.0]),
                  ground_rgb=torch.tensor([[0.8, 0.8, 0.8], [0.2, 0.2, 0.2]]), tile=tile)  # fmt: skip
    # rays straight down onto ground points at x = (k + 0.5) * tile, y = 0.5 * tile
    x = (torch.arange(4, dtype=torch.float32) + 0.5) * tile
    o = torch.stack([x, torch.full_like(x, 0.5 * tile), torch.full_like(x, 2.0)], dim=-1)
    d = torch.tensor([0.0, 0.0, -1.0]).expand(4, 3)
    g = render_rays(scene, o, d)[:, 0]  # lit from above: the albedo itself
    torch.testing.assert_close(g, torch.tensor([0.8, 0.2, 0.8, 0.2]))


def test_errors() -> None:
    for bad in (dict(checker=1.5), dict(tile=0.0), dict(object_scale=-1.0), dict(supersample=0)):
        with pytest.raises(ValueError, match="must be"):
            SceneStyle(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="split must be"):
        scene_seed("val", 0)
    with pytest.raises(ValueError, match="scene index"):
        scene_seed("train", TEST_SEED_OFFSET)
    with pytest.raises(ValueError, match="size must be"):
        render_dataset("train", num_scenes=1, num_views=1, size=4)
