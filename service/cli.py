"""The `facesr-serve` command line: one flag per setting, generated from `Settings`.

`--model-dir DIR` is `FACESR_MODEL_DIR=DIR`, and so on for every field; a flag wins over its
variable. The resolved settings are exported back into the FACESR_* variables, so that every
uvicorn worker (which builds its own `Settings()`) serves exactly what the command line said.
"""

from __future__ import annotations

import argparse
import os
import sys

from pydantic import SecretStr, ValidationError
from pydantic_settings import CliSettingsSource

from facesr_core.manifest import validation_summary
from service.settings import Settings, model_dir_candidates

ENV_PREFIX = "FACESR_"
EPILOG = (
    "Every flag mirrors an environment variable: --model-dir is FACESR_MODEL_DIR, --port is "
    "FACESR_PORT, and so on (the README's settings table). A flag wins over its variable. "
    "Booleans take true or false. Prefer FACESR_API_KEY to --api-key: a command line is "
    "visible to every user of the machine.")


def parse_settings(argv: list[str]) -> Settings:
    """Settings from the FACESR_* environment and `argv`; exits 2 with one line on a bad value."""
    parser = argparse.ArgumentParser(
        prog="facesr-serve", epilog=EPILOG,
        description="Serve the FaceSR models over HTTP (FastAPI + ONNX Runtime, uvicorn).")
    source = CliSettingsSource(Settings, root_parser=parser, cli_kebab_case=True)
    try:
        return Settings(_cli_settings_source=source(args=argv))
    except ValidationError as exc:
        parser.exit(2, f"facesr-serve: invalid setting: {validation_summary(exc, 'settings')}\n")


def env_value(value: object) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def export_settings(settings: Settings) -> None:
    """Write every resolved setting into its FACESR_* variable (inherited by the workers)."""
    for name in Settings.model_fields:
        os.environ[ENV_PREFIX + name.upper()] = env_value(getattr(settings, name))


def missing_default_model_dir(settings: Settings) -> str | None:
    """The one-line error when no model directory was given and none was found, else None.
    (A directory that was given but is bad leaves the service up and not ready, as before.)"""
    if "model_dir" in settings.model_fields_set or settings.model_dir.is_dir():
        return None
    looked = " and ".join(str(p) for p in model_dir_candidates())
    return (f"no model directory: looked in {looked}; pass --model-dir DIR or set "
            "FACESR_MODEL_DIR (a folder with x4/ x8/ x16/, or one with manifest.json)")


def settings_from_command_line(argv: list[str] | None = None) -> Settings:
    """Parse, check the model directory, export: what `facesr-serve` starts with."""
    settings = parse_settings(sys.argv[1:] if argv is None else argv)
    problem = missing_default_model_dir(settings)
    if problem:
        print(f"facesr-serve: cannot start: {problem}", file=sys.stderr)
        sys.exit(2)
    export_settings(settings)
    return settings
