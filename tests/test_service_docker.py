"""The Dockerfile (cannot be built here: no Docker engine): its command, user and healthcheck."""

import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVE = ["python", "-m", "verifier", "serve", "--bundle", "/app/bundles/default", "--port", "8000", "--host", "0.0.0.0"]


def _instruction(name):
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [line.split(None, 1)[1] for line in text.splitlines() if line.startswith(name + " ")]


def test_dockerfile_serves_with_gunicorn_as_a_non_root_user():
    assert _instruction("FROM") == ["python:3.11-slim"]
    assert any("pip install -r requirements.txt" in run for run in _instruction("RUN"))
    assert any("pip install --no-deps ." in run for run in _instruction("RUN"))  # the project itself
    assert json.loads(_instruction("CMD")[-1]) == SERVE
    user = _instruction("USER")[-1]
    assert user not in ("root", "0")
    assert "/healthz" in _instruction("HEALTHCHECK")[-1] and "8000" in _instruction("HEALTHCHECK")[-1]


def test_readme_serve_command_matches_the_image():
    readme = ROOT / "README.md"
    if not readme.exists() or "python -m verifier serve" not in readme.read_text():
        pytest.skip("README.md has no serve command yet")
    commands = [shlex.split(m) for m in re.findall(r"(python -m verifier serve[^\n`]*)", readme.read_text())]
    wanted = dict(zip(SERVE[4::2], SERVE[5::2]))
    for argv in commands:
        options = dict(zip(argv[4::2], argv[5::2]))
        if "--bundle" in options and options["--bundle"].endswith("bundles/default"):
            assert options.get("--port", "8000") == wanted["--port"]
            return
    pytest.fail(f"no README serve command for bundles/default; found {commands}")
