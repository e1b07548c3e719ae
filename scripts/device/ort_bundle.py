"""onnxruntime-gpu slimmed for one Hopper GPU, as a .tar.xz in parts that a device run can carry.

The cp312 onnxruntime-gpu wheel (CUDA 13) is ~256 MB, ~220 MB of it the CUDA provider's kernels
(cubins) for sm_75, 80, 86, 89, 90 and 120, without PTX. An H100 or H200 (sm_90) runs only the
sm_90 ones: the others are cut out of every fat binary (each one's entries are rewritten in place,
the rest zero-filled, so no ELF offset moves), and the C API library (`libonnxruntime.so`, which
the Python module does not load) and the TensorRT provider are left out. What remains compresses
to about a quarter of the wheel.

    python scripts/device/ort_bundle.py --out .device/ort              # download, slim, split
    python scripts/device/ort_bundle.py --wheel W.whl --out .device/ort

Writes OUT/onnxruntime-gpu.tar.xz.partNN and OUT/SHA256SUMS (scripts/device/parts.py joins and
checks them on the device). Needs `readelf` (binutils) and pip; runs in a few minutes.
"""

from __future__ import annotations

import argparse
import io
import lzma
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from parts import split  # noqa: E402

VERSION = "1.31.1"
KEEP_SM = 90  # H100 and H200
FATBIN_MAGIC = 0xBA55ED50
LEFT_OUT = ("libonnxruntime.so.", "libonnxruntime_providers_tensorrt.so")
BUNDLE = "onnxruntime-gpu.tar.xz"


def download(version: str, folder: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", f"onnxruntime-gpu=={version}",
                    "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                    "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                    "--platform", "manylinux_2_27_x86_64", "--platform", "manylinux_2_17_x86_64",
                    "-q", "-d", str(folder)], check=True)
    return next(folder.glob(f"onnxruntime_gpu-{version}-cp312-*.whl"))


def section(path: str, name: str) -> tuple[int, int]:
    """(file offset, size) of an ELF section, read with readelf."""
    out = subprocess.run(["readelf", "-S", "-W", path], capture_output=True, text=True,
                         check=True).stdout
    for line in out.splitlines():
        fields = line.split("]", 1)[-1].split()
        if fields and fields[0] == name:
            return int(fields[3], 16), int(fields[4], 16)
    raise SystemExit(f"{path}: no {name} section")


def keep_one_arch(fatbins: memoryview, sm: int) -> tuple[int, int]:
    """Rewrite every fat binary in place to hold only its sm_`sm` entries; (kept, dropped).

    Each fat binary stays where it was (the CUDA runtime registers each one by its address) and
    keeps its header; its size shrinks to the kept entries, byte for byte as they were, and the
    bytes freed become zeros. One with no sm_`sm` entry is left as it was."""
    pos = kept = dropped = 0
    while pos + 16 <= len(fatbins):
        magic, _version, header, size = struct.unpack_from("<IHHQ", fatbins, pos)
        if magic != FATBIN_MAGIC:
            raise SystemExit(f"not a fat binary at offset {pos}: the format changed, stop here")
        entry, end = pos + header, pos + header + size
        body, entries, matching = bytearray(), 0, 0
        while entry < end:
            _kind, _ver, entry_header, padded = struct.unpack_from("<HHIQ", fatbins, entry)
            if struct.unpack_from("<I", fatbins, entry + 28)[0] == sm:
                body += fatbins[entry:entry + entry_header + padded]
                matching += 1
            entries += 1
            entry += entry_header + padded
        if matching:
            struct.pack_into("<Q", fatbins, pos + 8, len(body))
            fatbins[pos + header:end] = bytes(body) + bytes(size - len(body))
            kept, dropped = kept + matching, dropped + entries - matching
        pos = end
    return kept, dropped


def slim_provider(data: bytes, sm: int) -> bytes:
    with tempfile.NamedTemporaryFile(suffix=".so") as tmp:
        tmp.write(data)
        tmp.flush()
        offset, size = section(tmp.name, ".nv_fatbin")
    buf = bytearray(data)
    kept, dropped = keep_one_arch(memoryview(buf)[offset:offset + size], sm)
    if not kept:
        raise SystemExit(f"no sm_{sm} kernels in the CUDA provider: this build cannot run here")
    print(f"CUDA provider: kept {kept} sm_{sm} kernel images, dropped {dropped}")
    return bytes(buf)


def bundle(wheel: Path, out: Path, sm: int = KEEP_SM) -> Path:
    """The wheel's files (minus LEFT_OUT, CUDA kernels for sm only) as one .tar.xz."""
    out.parent.mkdir(parents=True, exist_ok=True)
    preset = 9 | lzma.PRESET_EXTREME
    with zipfile.ZipFile(wheel) as zf, lzma.open(out, "wb", preset=preset) as xz, \
            tarfile.open(fileobj=xz, mode="w") as tar:
        for info in zf.infolist():
            name = info.filename
            if info.is_dir() or Path(name).name.startswith(LEFT_OUT):
                continue
            data = zf.read(info)
            if name.endswith("libonnxruntime_providers_cuda.so"):
                data = slim_provider(data, sm)
            member = tarfile.TarInfo(name)
            member.size, member.mode = len(data), 0o755 if name.endswith(".so") else 0o644
            tar.addfile(member, io.BytesIO(data))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(".device/ort"), help="folder for the parts")
    p.add_argument("--wheel", type=Path, help="a downloaded wheel (default: download it)")
    p.add_argument("--version", default=VERSION, help=f"onnxruntime-gpu version ({VERSION})")
    p.add_argument("--part-mib", type=float, default=60.0, help="largest part (MiB)")
    p.add_argument("--sm", type=int, default=KEEP_SM, help="the one GPU architecture to keep")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = a.wheel or download(a.version, Path(tmp))
        whole = bundle(wheel, Path(tmp) / BUNDLE, a.sm)
        for old in a.out.glob(f"{BUNDLE}.part*"):
            old.unlink()
        parts = split(whole, a.out, int(a.part_mib * 2**20))
    for part in parts:
        print(f"{part}: {part.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
