"""`facesr-photo IN [IN...] --out DIR`: the /photo pipeline on files and folders, no server.

Each input image (a file, or every PNG/JPEG/WebP/BMP in a folder, recursively) gives
`DIR/<name>.<format>` (the same photo /photo returns) and `DIR/<name>.json` (the same JSON as
/photo?format=json). The models and the ONNX Runtime settings come from the FACESR_*
variables as for the service (FACESR_MODEL_DIR, FACESR_PROVIDERS, ...); --model-dir wins.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from facesr_core.degradation import SCALES
from service.engine import EngineError, load_models
from service.errors import ServiceError
from service.faces import FaceDetector
from service.imaging import encode
from service.photo import (
    DEFAULT_MAX_FACES,
    MAX_UPSCALE,
    PhotoOptions,
    check_draws,
    decode_photo,
    describe_json,
    process,
)
from service.sampling import new_seed
from service.settings import Settings

SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
OUTPUT_SUFFIX = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="facesr-photo", description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="+", type=Path, help="image files or folders of them")
    ap.add_argument("--out", type=Path, required=True, help="output folder (created)")
    ap.add_argument("--model-dir", type=Path, help="models (default: FACESR_MODEL_DIR, ./models)")
    ap.add_argument("--scale", type=int, choices=SCALES,
                    help="model for every face (default: from each face's size)")
    ap.add_argument("--upscale", type=int, choices=range(1, MAX_UPSCALE + 1), metavar="1-16",
                    help="factor of the returned photo (default: --scale, else the smallest "
                         "scale used for a face)")
    ap.add_argument("--samples", type=int, default=0,
                    help="draws per face besides the ICAP mean, in the JSON (default 0)")
    ap.add_argument("--seed", type=int, help="seed of the draws (default: random)")
    ap.add_argument("--temperature", type=float,
                    help="scales sigma of the draws (default: the model's calibrated one)")
    ap.add_argument("--draws", choices=("principal", "icap"),
                    help="principal (ours) or icap (the paper's) draws (default: each model's, "
                         "principal where it ships a basis)")
    ap.add_argument("--max-faces", type=int, default=DEFAULT_MAX_FACES,
                    help=f"faces super-resolved per photo, best-scoring first "
                         f"(default {DEFAULT_MAX_FACES})")
    ap.add_argument("--format", choices=tuple(OUTPUT_SUFFIX), default="png",
                    help="format of the returned photos (default png)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap.parse_args(argv)


def collect(inputs: list[Path]) -> list[Path]:
    """The image files named, and those inside the folders named (sorted); exits on a name
    that is neither."""
    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            sys.exit(f"facesr-photo: {path}: no such file or folder")
    return files


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = Settings(**({"model_dir": args.model_dir} if args.model_dir else {}))
    files = collect(args.inputs)
    try:
        runners = load_models(settings)
        detector = FaceDetector()
    except (EngineError, ServiceError) as exc:
        sys.exit(f"facesr-photo: cannot start: {getattr(exc, 'detail', exc)}")
    options = PhotoOptions(scale=args.scale, upscale=args.upscale, samples=args.samples,
                           seed=new_seed() if args.seed is None else args.seed,
                           temperature=args.temperature, draws=args.draws,
                           max_faces=args.max_faces,
                           max_output_pixels=settings.max_output_pixels)
    try:
        check_draws(runners, options)
    except LookupError as exc:
        sys.exit(f"facesr-photo: --draws: {exc}")
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in tqdm(files, desc="photos", unit="photo", disable=args.no_progress):
        try:
            pixels, _ = decode_photo(path.read_bytes(), settings.max_pixels)
            result = process(pixels, detector, runners, options)
        except ServiceError as exc:
            tqdm.write(f"facesr-photo: {path}: {exc.detail}", file=sys.stderr)
            failed += 1
            continue
        stem = args.out / path.stem
        stem.with_suffix(OUTPUT_SUFFIX[args.format]).write_bytes(
            encode(result.image, args.format))
        stem.with_suffix(".json").write_bytes(describe_json(result, runners, options))
    if failed:
        sys.exit(f"facesr-photo: {failed} of {len(files)} photos failed")
