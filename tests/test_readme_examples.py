"""The README's "Calling it" block, run as written (but on a free port) against a live
`python -m service` on 127.0.0.1, from a folder that holds the repo's examples/: the README's
examples cannot drift from what the service does."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from servers import running_service

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- examples:begin -->\s*```bash\n(.*?)```\s*<!-- examples:end -->", re.S)


def readme_examples() -> list[str]:
    found = BLOCK.search((ROOT / "README.md").read_text())
    assert found, "README.md has no examples block between the examples markers"
    return [line for line in found.group(1).splitlines() if line.strip()]


def test_every_example_uses_the_shipped_inputs_and_fails_loudly():
    lines = readme_examples()
    curls = [line for line in lines if line.startswith("curl ")]
    assert len(curls) >= 10
    for line in curls:
        assert line.startswith(("curl -fsS ", "curl -sS -o /dev/null -w")), line
    for path in re.findall(r"@(\S+)", "\n".join(lines)):
        assert (ROOT / path).is_file(), path


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_readme_examples_run_against_a_live_service(tiny_model_dir, tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "examples").symlink_to(ROOT / "examples")
    with running_service(tiny_model_dir, {"FACESR_MAX_SAMPLES": "16"},
                         tmp_path / "server.log") as server:
        url = server.url
        port = url.rsplit(":", 1)[1]
        env = {k: v for k, v in os.environ.items() if k != "FACESR_API_KEY"}
        for line in readme_examples():
            command = line.replace("localhost:8000", f"127.0.0.1:{port}")
            out = subprocess.run(["bash", "-eo", "pipefail", "-c", command], cwd=workdir,
                                 env=env, capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, f"{line}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
            assert len(out.stdout) < 20_000, f"{line} printed {len(out.stdout)} characters"
    for name in ("sr.png", "sr_x4.png", "sr.webp"):
        assert Image.open(workdir / name).size == (128, 128), name
    assert Image.open(workdir / "walk.gif").n_frames == 16
    sheet = Image.open(workdir / "sheet.png")
    assert sheet.width > 8 * 128 and sheet.height > 2 * 128  # LR, reference, mean, 10 samples
    samples = json.loads((workdir / "samples.json").read_text())
    assert len(samples["samples"]) == 11 and samples["best"] is not None
    assert len(json.loads((workdir / "traverse.json").read_text())["frames"]) == 8
    assert Image.open(workdir / "uncertainty.png").height == 128  # the map beside its scale bar
    assert json.loads((workdir / "models.json").read_text())["scales_supported"] == [4, 8, 16]
    assert Image.open(io.BytesIO((workdir / "sr.png").read_bytes())).format == "PNG"
