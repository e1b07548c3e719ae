"""Split a file into parts that fit a device run, and join them back there with sha256 checks.

Standard library only: it runs under the device machine's python3 as it is.

    python3 scripts/device/parts.py split FILE OUTDIR --part-mib 60   # here
    python3 scripts/device/parts.py stage SRCDIR STAGEDIR              # there, each run
    python3 scripts/device/parts.py join STAGEDIR OUTFILE              # there, once all arrived

`split` writes FILE's parts as OUTDIR/<name>.partNN and OUTDIR/SHA256SUMS (sha256sum format: the
whole file and each part). `stage` moves the parts and SHA256SUMS that one run carried out of the
working tree (copied anew by every run) to STAGEDIR. `join` checks every part, concatenates them
and checks the whole; a damaged part is a one-line error that names it (exit status 1), and a
missing one says which (exit status 3: carry it, then join again).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

SUMS = "SHA256SUMS"
CHUNK = 2**20
WAITING = 3  # `join`'s exit status while parts (or SHA256SUMS) have yet to arrive


class PartsMissing(SystemExit):
    """Not every part has arrived yet: carry the rest, then join again."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def split(path: Path, out: Path, part_bytes: int) -> list[Path]:
    """path -> out/<name>.part01, .part02, ... of at most part_bytes each, and out/SHA256SUMS."""
    if part_bytes <= 0:
        raise ValueError("part size must be positive")
    out.mkdir(parents=True, exist_ok=True)
    parts: list[Path] = []
    with open(path, "rb") as src:
        while block := src.read(part_bytes):
            part = out / f"{path.name}.part{len(parts) + 1:02d}"
            part.write_bytes(block)
            parts.append(part)
    lines = [f"{sha256(path)}  {path.name}"] + [f"{sha256(p)}  {p.name}" for p in parts]
    (out / SUMS).write_text("\n".join(lines) + "\n")
    return parts


def read_sums(folder: Path) -> tuple[tuple[str, str], list[tuple[str, str]]]:
    """((sha, name) of the whole file, [(sha, name) of each part, in order])."""
    sums = folder / SUMS
    if not sums.exists():
        raise PartsMissing(f"{sums} is missing: carry it with the last part")
    entries = [tuple(line.split(maxsplit=1)) for line in sums.read_text().splitlines() if line]
    whole = [e for e in entries if ".part" not in e[1]]
    parts = sorted((e for e in entries if ".part" in e[1]), key=lambda e: e[1])
    if len(whole) != 1 or not parts:
        raise SystemExit(f"{sums}: expected one whole file and its parts")
    return whole[0], parts


def join(folder: Path, out: Path) -> Path:
    """Check each part listed in folder/SHA256SUMS, concatenate them to out, check the whole."""
    (whole_sha, whole_name), parts = read_sums(folder)
    missing = [name for _, name in parts if not (folder / name).exists()]
    if missing:
        raise PartsMissing(f"parts missing in {folder}: {', '.join(missing)} (carry them first)")
    bad = [name for sha, name in parts if sha256(folder / name) != sha]
    if bad:
        raise SystemExit(f"damaged parts in {folder}: {', '.join(bad)} (carry them again)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as dst:
        for _, name in parts:
            with open(folder / name, "rb") as src:
                shutil.copyfileobj(src, dst, CHUNK)
    if sha256(out) != whole_sha:
        raise SystemExit(f"{out}: joined file does not match the sha256 of {whole_name}")
    return out


def stage(src: Path, dest: Path) -> list[str]:
    """Move the parts (and SHA256SUMS) found in src to dest; the names moved."""
    dest.mkdir(parents=True, exist_ok=True)
    moved = []
    for path in sorted(src.glob("*")):
        if ".part" in path.name or path.name == SUMS:
            shutil.move(str(path), dest / path.name)
            moved.append(path.name)
    return moved


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split", help="FILE -> OUTDIR/FILE.partNN + OUTDIR/SHA256SUMS")
    s.add_argument("file", type=Path)
    s.add_argument("outdir", type=Path)
    s.add_argument("--part-mib", type=float, default=60.0, help="largest part (MiB)")
    g = sub.add_parser("stage", help="move carried parts out of the working tree")
    g.add_argument("src", type=Path)
    g.add_argument("dest", type=Path)
    j = sub.add_parser("join", help="check, join and check again")
    j.add_argument("folder", type=Path)
    j.add_argument("out", type=Path)
    a = p.parse_args(argv)
    if a.cmd == "split":
        for part in split(a.file, a.outdir, int(a.part_mib * 2**20)):
            print(f"{part} {part.stat().st_size / 2**20:.1f} MiB")
    elif a.cmd == "stage":
        print("staged: " + (", ".join(stage(a.src, a.dest)) or "nothing"))
    else:
        try:
            print(f"joined and checked: {join(a.folder, a.out)}")
        except PartsMissing as waiting:
            print(waiting, file=sys.stderr)
            return WAITING
    return 0


if __name__ == "__main__":
    sys.exit(main())
