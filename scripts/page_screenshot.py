"""The README's screenshot of the web page (docs/page.png): the shipped models served on
127.0.0.1, the page in headless Chromium (bench/browser.py), after a face crop has gone through
it: examples/lr16.png with examples/hr128.png as the reference (both made from scikit-image's
astronaut photo by scripts/make_examples.py), 5 samples, seed 7.

    python scripts/page_screenshot.py [--out docs/page.png] [--model-dir models]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import browser  # noqa: E402
from bench.server import running_service  # noqa: E402

COLOURS = 128  # a palette PNG: the page is flat colour, except the faces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "page.png")
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models")
    args = parser.parse_args()
    if reason := browser.missing_browser():
        sys.exit(f"cannot take the screenshot: {reason}")
    examples = ROOT / "examples"
    with tempfile.TemporaryDirectory() as tmp, \
            running_service(args.model_dir, {}, Path(tmp) / "server.log") as server, \
            browser.open_page(server.url + "/", width=900, height=800) as page:
        error = browser.run(page, examples / "lr16.png", "face", reference=examples / "hr128.png",
                            fields={"n": "5", "seed": "7", "steps": "8"})
        if error:
            sys.exit(f"the page showed an error: {error}")
        shot = page.screenshot(full_page=True)
    img = Image.open(io.BytesIO(shot)).convert("RGB").quantize(COLOURS)
    img.save(args.out, optimize=True)
    print(f"wrote {args.out} ({img.width}x{img.height}, {args.out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
