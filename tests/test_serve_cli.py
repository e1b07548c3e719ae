"""`facesr-serve`'s command line: a flag for every setting, mirrored into the FACESR_* variables
(so every worker serves what the command line said), and the default model directory."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest
from servers import ServiceProcess, free_port

from service import cli, settings
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_setting(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.parse_settings(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        assert f"{flag} " in text, flag
        assert field.description.split()[0] in text, name
    assert "FACESR_MODEL_DIR" in text


def test_flags_win_over_variables_and_are_exported(monkeypatch, tmp_path):
    # a copy of the environment, so that nothing exported here outlives the test
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items()
                                        if not k.startswith("FACESR_")})
    monkeypatch.setenv("FACESR_PORT", "7000")
    monkeypatch.setenv("FACESR_MAX_SAMPLES", "12")
    s = cli.parse_settings(["--port", "7001", "--model-dir", str(tmp_path), "--warmup", "false",
                            "--workers", "3", "--host", "127.0.0.2", "--api-key", "k"])
    assert (s.port, s.model_dir, s.warmup, s.workers, s.host) == (7001, tmp_path, False, 3,
                                                                 "127.0.0.2")
    assert s.max_samples == 12 and s.api_key.get_secret_value() == "k"
    cli.export_settings(s)
    assert os.environ["FACESR_PORT"] == "7001" and os.environ["FACESR_WARMUP"] == "false"
    assert os.environ["FACESR_MODEL_DIR"] == str(tmp_path) and os.environ["FACESR_API_KEY"] == "k"
    assert Settings() == s  # what a worker process builds from the environment


def test_default_model_dir_is_found_from_another_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("FACESR_MODEL_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert Settings().model_dir == ROOT / "models" == settings.SOURCE_TREE_MODELS
    (tmp_path / "models").mkdir()
    assert Settings().model_dir == tmp_path / "models"  # ./models first


def test_no_default_model_dir_stops_with_where_it_looked(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("FACESR_MODEL_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(settings, "SOURCE_TREE_MODELS", tmp_path / "src" / "models")
    with pytest.raises(SystemExit) as exc:
        cli.settings_from_command_line([])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot start: no model directory" in err
    assert f"looked in {tmp_path / 'models'} and {tmp_path / 'src' / 'models'}" in err
    assert "--model-dir" in err and "FACESR_MODEL_DIR" in err


@pytest.mark.slow
def test_flags_start_a_real_server_with_two_workers(tiny_model_dir, tmp_path):
    """--host, --port, --model-dir and --workers on a real `python -m service` (no FACESR_*)."""
    port, prom = free_port(), tmp_path / "prom"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACESR_")}
    env.update({"PYTHONPATH": str(ROOT), "PROMETHEUS_MULTIPROC_DIR": str(prom)})
    args = ["--host", "127.0.0.1", "--port", str(port), "--model-dir", str(tiny_model_dir / "x8"),
            "--workers", "2", "--max-samples", "4", "--max-steps", "4", "--max-batch", "2"]
    server = ServiceProcess(env, port, tmp_path / "server.log", tuple(args), cwd=tmp_path)
    try:
        server.wait_until(lambda: len({p.stem.rsplit("_", 1)[-1]
                                       for p in prom.glob("gauge_*.db")}) >= 2)
        server.wait_until(lambda: httpx.get(f"{server.url}/v1/models", timeout=5).json()["ready"])
        r = httpx.get(f"{server.url}/v1/models", timeout=5)
        assert r.json()["scales_supported"] == [8]
        assert [m["name"] for m in r.json()["models"]] == ["x8"]
    finally:
        assert server.stop() in (0, -signal.SIGTERM), server.log_text()
