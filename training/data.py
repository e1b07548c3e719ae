"""Face data: HR 128x128 packs (`facesr-prepare`), identity-disjoint splits, and (x, y) pairs.

A pack is one .npz of JPEG-encoded HR crops (no pickle inside), small enough to carry to a GPU
machine: about 6.9 KiB a face at quality 90 (4:4:4), so ~9k faces fit in 60 MiB. The
degradation that turns an HR face into the network input is facesr_core's, the one the service
uses.
"""

from __future__ import annotations

import io
import json
import os
import random
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from facesr_core.degradation import bicubic_upsample, degrade, to_hr, to_model_range

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
SOURCES = ("celeba", "utkface", "celeba_wild", "folder")
SPLITS = ("train", "val", "test")


@dataclass
class Face:
    name: str
    source: str
    path: Path
    identity: int = -1  # CelebA identity, -1 when unknown
    split: str = "train"


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def read_identities(path: Path) -> dict[str, int]:
    """identity_CelebA.txt: '<image> <identity>' per line."""
    ids = {}
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            ids[parts[0]] = int(parts[1])
    return ids


def split_by_identity(faces: list[Face], n_test: int, n_val: int, seed: int) -> None:
    """Whole identities go to test, then val, until each holds at least n images."""
    by_id: dict[int, list[Face]] = {}
    for f in faces:
        by_id.setdefault(f.identity, []).append(f)
    order = sorted(by_id)
    random.Random(seed).shuffle(order)
    quotas = [("test", n_test), ("val", n_val)]
    for ident in order:
        while quotas and quotas[0][1] <= 0:
            quotas.pop(0)
        if not quotas:
            break
        split, left = quotas[0]
        for f in by_id[ident]:
            f.split = split
        quotas[0] = (split, left - len(by_id[ident]))


def split_seeded(faces: list[Face], n_test: int, n_val: int, seed: int) -> None:
    order = list(range(len(faces)))
    random.Random(seed).shuffle(order)
    for rank, i in enumerate(order):
        faces[i].split = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"


def collect_faces(celeba: Path | None = None, identities: Path | None = None,
                  utkface: Path | None = None, celeba_wild: Path | None = None,
                  folders: Iterable[Path] = (), n_test: int = 300, n_val: int = 64,
                  seed: int = 0, limit: int | None = None) -> list[Face]:
    """All faces with their split. CelebA is split by identity when `identities` is given;
    in-the-wild CelebA crops are training data only, minus any held-out identity."""
    faces: list[Face] = []
    ids = read_identities(identities) if identities else {}
    if celeba:
        group = [Face(p.name, "celeba", p, ids.get(p.name, -1)) for p in list_images(celeba)]
        group = group[:limit] if limit else group
        if ids:
            split_by_identity(group, n_test, n_val, seed)
        else:
            split_seeded(group, n_test, n_val, seed)
        faces += group
    held_out = {f.identity for f in faces if f.split != "train" and f.identity >= 0}
    if celeba_wild:
        group = [Face(p.name, "celeba_wild", p, ids.get(p.name, -1))
                 for p in list_images(celeba_wild)]
        group = [f for f in group if f.identity not in held_out or f.identity < 0]
        faces += group[:limit] if limit else group
    if utkface:
        group = [Face(p.name, "utkface", p) for p in list_images(utkface)]
        group = group[:limit] if limit else group
        split_seeded(group, n_test, n_val, seed)
        faces += group
    for folder in folders:
        group = [Face(p.name, "folder", p) for p in list_images(folder)]
        faces += group[:limit] if limit else group
    return faces


def count_by_split(sources: Iterable[str], splits: Iterable[str]) -> dict[str, int]:
    """A pack's meta.by_split: '<source>/<split>' -> faces, for the pairs that have any."""
    counts = Counter(zip(sources, splits, strict=True))
    return {f"{s}/{sp}": counts[s, sp] for s in SOURCES for sp in SPLITS if counts[s, sp]}


def encode_jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def write_pack(faces: list[Face], out: Path, quality: int = 90, progress: bool = True) -> dict:
    """Crop every face to HR 128x128 and write the pack; returns its summary."""
    from tqdm import tqdm

    blobs, kept = [], []
    for face in tqdm(faces, desc="prepare", unit="img", disable=not progress):
        try:
            with Image.open(face.path) as img:
                blobs.append(encode_jpeg(to_hr(img), quality))
            kept.append(face)
        except (OSError, ValueError) as exc:  # unreadable image: skip it, but say so
            print(f"skipping {face.path}: {exc}")
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    summary = {"count": len(kept), "quality": quality,
               "by_split": count_by_split([f.source for f in kept], [f.split for f in kept])}
    if not kept:
        raise ValueError(f"none of the {len(faces)} images could be read")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, jpeg=np.frombuffer(b"".join(blobs), np.uint8), offsets=offsets,
             name=np.array([f.name for f in kept]), source=np.array([f.source for f in kept]),
             split=np.array([f.split for f in kept]),
             identity=np.array([f.identity for f in kept], np.int64),
             meta=np.array(json.dumps(summary)))
    return summary


class FacePack:
    """A pack in memory: HR faces as a uint8 (N,128,128,3) array, filtered by split/source;
    `sample` keeps only that many of them, drawn at random (seeded) and decoded alone."""

    def __init__(self, path: Path | str, split: str | None = None,
                 sources: Iterable[str] | None = None, sample: int | None = None,
                 seed: int = 0):
        with np.load(path, allow_pickle=False) as z:
            keep = np.ones(len(z["name"]), bool)
            if split:
                keep &= z["split"] == split
            if sources:
                keep &= np.isin(z["source"], list(sources))
            blob, offsets = z["jpeg"], z["offsets"]
            self.index = np.flatnonzero(keep)
            if sample is not None and sample < len(self.index):
                rng = np.random.default_rng(seed)
                self.index = np.sort(rng.choice(self.index, sample, replace=False))
            self.names = z["name"][self.index]
            self.sources = z["source"][self.index]
            self.identities = z["identity"][self.index]
            self.meta = json.loads(str(z["meta"]))
        self.hr = np.stack([
            np.asarray(Image.open(io.BytesIO(blob[offsets[i]:offsets[i + 1]].tobytes()))
                       .convert("RGB"))
            for i in self.index
        ]) if len(self.index) else np.zeros((0, 128, 128, 3), np.uint8)

    def __len__(self) -> int:
        return len(self.hr)

    @staticmethod
    def split_counts(path: Path | str) -> dict[str, int]:
        """'<source>/<split>' -> faces, from the pack's metadata (nothing decoded)."""
        with np.load(path, allow_pickle=False) as z:
            return json.loads(str(z["meta"]))["by_split"]


def network_input(hr: np.ndarray, scale: int) -> np.ndarray:
    """HR uint8 HWC -> the network input x, uint8 HWC: the service's exact preprocessing."""
    hr_img = Image.fromarray(hr)
    return np.asarray(bicubic_upsample(degrade(hr_img, scale), hr_img.size[0]))


def make_pair(hr: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """HR uint8 HWC -> (x, y) float32 CHW in [-1, 1]."""
    return to_model_range(network_input(hr, scale)), to_model_range(hr)


class PairDataset(Dataset):
    """(x, y) tensors for one scale, from HR uint8 faces; optional horizontal flips."""

    def __init__(self, hr: np.ndarray, scale: int, hflip: bool = False):
        self.hr, self.scale, self.hflip = hr, scale, hflip

    def __len__(self) -> int:
        return len(self.hr)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = make_pair(self.hr[i], self.scale)
        return torch.from_numpy(x), torch.from_numpy(y)

    def batch(self, indices: Iterable[int], flips: Iterable[bool] = ()) -> tuple[torch.Tensor,
                                                                                   torch.Tensor]:
        xs, ys = zip(*(self[i] for i in indices), strict=True)
        x, y = torch.stack(xs), torch.stack(ys)
        if self.hflip:
            for k, flip in enumerate(flips):
                if flip:
                    x[k], y[k] = x[k].flip(-1), y[k].flip(-1)
        return x, y


class CachedPairs:
    """PairDataset's pairs computed once (Pillow, in threads: it releases the GIL) and kept as
    uint8 NHWC tensors on `device`, where batches are sliced and converted. For GPUs: a per-step
    Pillow loader (about 1 ms per face on one core) cannot feed thousands of faces a second.
    Batches hold the same values as PairDataset's, in channels_last layout."""

    def __init__(self, hr: np.ndarray, scale: int, hflip: bool = False,
                 device: torch.device | str = "cpu", threads: int | None = None):
        with ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
            xs = list(pool.map(lambda face: network_input(face, scale), hr))
        shape = (0, *hr.shape[1:])
        self.x = torch.from_numpy(np.stack(xs) if xs else np.zeros(shape, np.uint8)).to(device)
        self.y = torch.from_numpy(np.ascontiguousarray(hr)).to(device)
        self.hflip = hflip

    def __len__(self) -> int:
        return len(self.y)

    @staticmethod
    def to_model_range(t: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> float32 NCHW (channels_last strides) in [-1, 1], as to_model_range."""
        return t.permute(0, 3, 1, 2).float() / 127.5 - 1.0

    def batch(self, indices: Iterable[int], flips: Iterable[bool] = ()) -> tuple[torch.Tensor,
                                                                                   torch.Tensor]:
        idx = torch.as_tensor(list(indices), device=self.y.device)
        x, y = self.x[idx], self.y[idx]
        flip = torch.as_tensor(list(flips), dtype=torch.bool, device=self.y.device)
        if self.hflip and len(flip):  # torch.where: no host sync on a GPU
            mask = flip[:, None, None, None]
            x, y = torch.where(mask, x.flip(2), x), torch.where(mask, y.flip(2), y)
        return self.to_model_range(x), self.to_model_range(y)


def pair_source(hr: np.ndarray, scale: int, hflip: bool, device: torch.device,
                cache: bool | None) -> PairDataset | CachedPairs:
    """Cached pairs on the training device when asked, or by default (None) on CUDA."""
    if cache or (cache is None and device.type == "cuda"):
        return CachedPairs(hr, scale, hflip, device)
    return PairDataset(hr, scale, hflip)


def random_patches(x: torch.Tensor, y: torch.Tensor, side: int,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random `side` crop of x and y per item (degradation was done on the full face)."""
    n, _, h, w = x.shape
    tops = torch.randint(0, (h - side) // 16 + 1, (n,), generator=generator) * 16
    lefts = torch.randint(0, (w - side) // 16 + 1, (n,), generator=generator) * 16
    corners = list(zip(tops.tolist(), lefts.tolist(), strict=True))
    crop = lambda t: torch.stack([t[k, :, a:a + side, b:b + side]  # noqa: E731
                                  for k, (a, b) in enumerate(corners)])
    return crop(x), crop(y)

