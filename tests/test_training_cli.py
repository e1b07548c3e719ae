"""The training command lines as a new user meets them: --help explains every flag (without
torch), a missing training extra names what to install, and every bad path or empty input ends
with one line and writes nothing."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import flags_without_help
from PIL import Image

from training import cli

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {"prepare": cli.prepare_main, "train": cli.train_main, "eval": cli.eval_main,
            "export": cli.export_main}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_explains_every_flag_without_importing_torch(command):
    code = (f"import sys\nfrom training import cli\ntry:\n    cli.{command}_main(['--help'])\n"
            "except SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
            "assert 'torch' not in sys.modules, 'torch imported for --help'\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert flags_without_help(out.stdout) == [], out.stdout
    assert out.stdout.count("--") > 4


def test_every_train_option_has_its_own_help():
    from training.config import TrainConfig

    fields = {f.name for f in __import__("dataclasses").fields(TrainConfig)}
    assert fields <= set(cli.TRAIN_HELP), sorted(fields - set(cli.TRAIN_HELP))


def run_failing(main, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]  # before it, at most a progress bar
    assert re.match(r"facesr-\w+: error: ", last), err
    return last


@pytest.fixture
def faces(tmp_path) -> Path:
    folder = tmp_path / "faces"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (140, 150), (40 * i, 90, 120)).save(folder / f"{i}.png")
    return folder


def test_without_torch_each_command_names_the_extra(monkeypatch, capsys, tmp_path, faces):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real(name, *a))
    pack = tmp_path / "pack.npz"
    np.savez(pack, source=np.array(["celeba"]), split=np.array(["test"]))
    argvs = {"prepare": ["--folder", str(faces), "--out", str(tmp_path / "p.npz")],
             "train": ["--data", str(pack), "--out", str(tmp_path / "run")],
             "eval": ["--model", str(tmp_path), "--pack", str(pack), "--sources", "celeba",
                      "--out", str(tmp_path / "eval")],
             "export": ["--model", str(tmp_path), "--out", str(tmp_path / "m")]}
    for command, argv in argvs.items():
        err = run_failing(COMMANDS[command], argv, capsys)
        assert f"facesr-{command}: error: needs the training packages (torch missing)" in err
        assert 'pip install -e ".[train]"' in err and "whl/cpu" in err
    assert not (tmp_path / "p.npz").exists() and not (tmp_path / "run").exists()


def test_prepare_refuses_missing_and_empty_input(capsys, tmp_path, faces):
    out = tmp_path / "out" / "pack.npz"
    err = run_failing(cli.prepare_main, ["--out", str(out)], capsys)
    assert "give at least one of --celeba" in err
    err = run_failing(cli.prepare_main, ["--celeba", str(tmp_path / "nope"), "--out", str(out)],
                      capsys)
    assert f"--celeba {tmp_path / 'nope'}: no such folder" in err
    err = run_failing(cli.prepare_main, ["--folder", str(faces), "--identities",
                                         str(tmp_path / "ids.txt"), "--out", str(out)], capsys)
    assert "--identities" in err and "no such file" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    err = run_failing(cli.prepare_main, ["--utkface", str(empty), "--out", str(out)], capsys)
    assert "no images" in err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"not a jpeg")
    err = run_failing(cli.prepare_main, ["--folder", str(broken), "--out", str(out)], capsys)
    assert "none of the 1 images could be read; nothing written" in err
    assert not out.parent.exists()


def test_train_eval_export_refuse_missing_paths(capsys, tmp_path):
    missing = tmp_path / "missing.npz"
    assert "--data PACK.npz is required" in run_failing(cli.train_main, [], capsys)
    err = run_failing(cli.train_main, ["--data", str(missing)], capsys)
    assert f"--data {missing}: no such file (make one with facesr-prepare)" in err
    err = run_failing(cli.eval_main, ["--model", str(tmp_path / "run"), "--pack", str(missing),
                                      "--out", str(tmp_path / "eval")], capsys)
    assert "--model" in err and "no such folder" in err
    pack = tmp_path / "pack.npz"
    np.savez(pack, source=np.array(["utkface", "celeba"]), split=np.array(["test", "train"]))
    err = run_failing(cli.eval_main, ["--model", str(tmp_path), "--pack", str(pack),
                                      "--out", str(tmp_path / "eval")], capsys)
    assert "has no test faces for celeba" in err
    not_a_pack = tmp_path / "x.npz"
    not_a_pack.write_bytes(b"nope")
    err = run_failing(cli.eval_main, ["--model", str(tmp_path), "--pack", str(not_a_pack),
                                      "--out", str(tmp_path / "eval")], capsys)
    assert "not a pack made by facesr-prepare" in err
    err = run_failing(cli.export_main, ["--model", str(tmp_path / "run"),
                                        "--out", str(tmp_path / "m")], capsys)
    assert "--model" in err and "no such folder" in err
    err = run_failing(cli.export_main, ["--model", str(tmp_path), "--out", str(tmp_path / "m"),
                                        "--metrics", str(tmp_path / "metrics.json")], capsys)
    assert "--metrics" in err and "no such file" in err
    err = run_failing(cli.export_main, ["--model", str(tmp_path), "--out", str(tmp_path / "m"),
                                        "--sample-temperature-from", str(tmp_path / "shipped")],
                      capsys)
    shipped = tmp_path / "shipped" / "manifest.json"
    assert f"--sample-temperature-from {shipped}: no such file" in err
    assert not (tmp_path / "eval").exists() and not (tmp_path / "m").exists()
