"""Degradation geometry, crops, splits and packs, on generated images only."""

import numpy as np
import pytest
import torch
from PIL import Image

from facesr_core.degradation import (
    bicubic_upsample,
    center_square,
    degrade,
    from_model_range,
    lr_size,
    to_hr,
    to_model_range,
)
from training.data import (
    CachedPairs,
    FacePack,
    PairDataset,
    collect_faces,
    make_pair,
    random_patches,
    write_pack,
)


def gradient_image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
    noise = rng.integers(0, 30, (h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


@pytest.mark.parametrize(("scale", "side"), [(4, 32), (8, 16), (16, 8)])
def test_degradation_sizes(scale, side):
    hr = gradient_image(128, 128)
    lr = degrade(hr, scale)
    assert lr.size == (side, side) == (lr_size(scale),) * 2
    assert bicubic_upsample(lr).size == (128, 128)


def test_degradation_is_pillow_bicubic():
    hr = gradient_image(128, 128)
    expected = hr.resize((16, 16), Image.Resampling.BICUBIC)
    assert np.array_equal(np.asarray(degrade(hr, 8)), np.asarray(expected))


def test_bad_scale_is_refused():
    with pytest.raises(ValueError, match="scale"):
        lr_size(3)


def test_celeba_aligned_crop_geometry():
    img = Image.new("RGB", (178, 218))
    img.paste((255, 0, 0), (0, 20, 178, 198))  # the central 178x178 square is red
    crop = center_square(img)
    assert crop.size == (178, 178)
    assert np.all(np.asarray(crop) == [255, 0, 0])
    assert to_hr(img).size == (128, 128)


def test_utkface_and_wild_crops_resize_to_128():
    assert to_hr(gradient_image(200, 200)).size == (128, 128)
    wide = to_hr(gradient_image(190, 185))
    assert wide.size == (128, 128)


def test_model_range_roundtrip():
    img = np.asarray(gradient_image(128, 128))
    x = to_model_range(img)
    assert x.shape == (3, 128, 128) and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(from_model_range(x), img)


def fake_celeba(tmp_path, n_ids=12, per_id=5):
    folder = tmp_path / "img_align_celeba"
    folder.mkdir()
    lines = []
    for k in range(n_ids * per_id):
        name = f"{k + 1:06d}.jpg"
        gradient_image(178, 218, seed=k).save(folder / name)
        lines.append(f"{name} {100 + k % n_ids}")
    ident = tmp_path / "identity_CelebA.txt"
    ident.write_text("\n".join(lines) + "\n")
    return folder, ident


def test_identity_split_is_disjoint(tmp_path):
    folder, ident = fake_celeba(tmp_path)
    wild = tmp_path / "wild"
    wild.mkdir()
    for k in range(10):  # in-the-wild crops of the same people (same file names as identities)
        gradient_image(190, 195, seed=k).save(wild / f"{k + 1:06d}.jpg")
    faces = collect_faces(celeba=folder, identities=ident, celeba_wild=wild, n_test=10, n_val=5)
    ids = {s: {f.identity for f in faces if f.split == s} for s in ("train", "val", "test")}
    assert ids["test"] and ids["val"] and ids["train"]
    assert not (ids["test"] & ids["train"]) and not (ids["val"] & ids["train"])
    assert not (ids["test"] & ids["val"])
    assert sum(f.split == "test" for f in faces) >= 10
    assert all(f.split == "train" for f in faces if f.source == "celeba_wild")


def test_pack_roundtrip(tmp_path):
    folder, ident = fake_celeba(tmp_path, n_ids=4, per_id=3)
    faces = collect_faces(celeba=folder, identities=ident, n_test=3, n_val=3)
    summary = write_pack(faces, tmp_path / "p.npz", progress=False)
    assert summary["count"] == 12
    test = FacePack(tmp_path / "p.npz", split="test")
    assert test.hr.shape[1:] == (128, 128, 3) and len(test) >= 3
    assert set(FacePack(tmp_path / "p.npz").sources) == {"celeba"}


def test_pairs_and_patches_line_up():
    pairs = [make_pair(np.asarray(gradient_image(128, 128, seed=k)), 8) for k in range(3)]
    assert pairs[0][0].shape == pairs[0][1].shape == (3, 128, 128)
    xt = torch.stack([torch.from_numpy(p[0]) for p in pairs])
    yt = torch.stack([torch.from_numpy(p[1]) for p in pairs])
    xp, yp = random_patches(xt, yt, 64, torch.Generator().manual_seed(0))
    assert xp.shape == yp.shape == (3, 3, 64, 64)
    for k in range(3):  # the x patch is cut where the y patch is
        spots = [(a, b) for a in range(0, 65, 16) for b in range(0, 65, 16)
                 if torch.equal(yp[k], yt[k, :, a:a + 64, b:b + 64])]
        assert len(spots) == 1
        a, b = spots[0]
        assert torch.equal(xp[k], xt[k, :, a:a + 64, b:b + 64])


@pytest.mark.parametrize("scale", [4, 8, 16])
def test_cached_pairs_equal_the_per_step_loader(scale):
    """The GPU loader (pairs made once, sliced as uint8) gives PairDataset's values exactly."""
    hr = np.stack([np.asarray(gradient_image(128, 128, seed=k)) for k in range(5)])
    idx, flips = [3, 0, 3, 4], [True, False, False, True]
    for hflip in (False, True):
        want = PairDataset(hr, scale, hflip=hflip).batch(idx, flips)
        got = CachedPairs(hr, scale, hflip=hflip, threads=2).batch(idx, flips)
        for w, g in zip(want, got, strict=True):
            assert g.dtype == w.dtype and g.shape == w.shape == (4, 3, 128, 128)
            assert torch.equal(g, w)
    x, _ = CachedPairs(hr, scale, hflip=True).batch(idx, flips)
    assert x.is_contiguous(memory_format=torch.channels_last)
