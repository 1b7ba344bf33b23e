"""The Dockerfile (cannot be built here: no Docker engine): its command, user and healthcheck."""

import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVE = ["python", "-m", "verifier", "serve", "--port", "8000", "--host", "0.0.0.0"]  # serve's default bundles


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


def _env(name):
    """The value an ENV instruction of the Dockerfile gives `name`."""
    for line in _instruction("ENV"):
        for item in shlex.split(line):
            key, _, value = item.partition("=")
            if key == name:
                return value
    return None


def test_the_image_never_serves_anonymously():
    """The CMD binds 0.0.0.0 without --allow-anonymous and with the store on the volume: `serve`
    refuses it until a key exists, and the README says how to create one in the image."""
    cmd = json.loads(_instruction("CMD")[-1])
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert "--allow-anonymous" not in cmd and "--create-store" not in cmd
    assert not any("VERIFIER_ALLOW_ANONYMOUS" in line for line in _instruction("ENV"))
    assert _env("DATABASE_URL") == "sqlite:////data/verifier.db" and _instruction("VOLUME") == ["/data"]
    readme = (ROOT / "README.md").read_text()
    assert "docker run --rm -v verifier-data:/data verifier python -m verifier keys create --name" in readme
    assert "docker run -p 8000:8000 -v verifier-data:/data verifier" in readme


def test_the_image_command_refuses_a_fresh_volume_until_a_key_exists(tmp_path, monkeypatch, capsys):
    """The CMD's own arguments through `serve`'s checks, /data a fresh folder: refused, then started."""
    import os

    from verifier.cli import main as cli_main
    from verifier.enrollment.keys import create_key
    from verifier.enrollment.store import open_store

    url = _env("DATABASE_URL").replace("/data/", f"{tmp_path}/")
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.delenv("VERIFIER_ALLOW_ANONYMOUS", raising=False)
    started = []
    monkeypatch.setattr(cli_main, "_ensure_export", lambda bundle: None)
    monkeypatch.setattr(os, "execve", lambda *argv: started.append(argv))
    argv = json.loads(_instruction("CMD")[-1])[3:]
    argv += ["--bundle", f"face={ROOT / 'bundles' / 'face'}"]  # the image's default, from any working directory
    assert cli_main.main(argv) == 2 and "does not exist" in capsys.readouterr().err  # volume not mounted
    open_store(url).close()
    assert cli_main.main(argv) == 2 and "with no API key" in capsys.readouterr().err
    create_key(open_store(url), "ops")
    assert cli_main.main(argv) is None and started


def test_readme_serve_command_matches_the_image():
    readme = ROOT / "README.md"
    if not readme.exists() or "python -m verifier serve" not in readme.read_text():
        pytest.skip("README.md has no serve command yet")
    commands = [shlex.split(m) for m in re.findall(r"(python -m verifier serve[^\n`]*)", readme.read_text())]
    wanted = dict(zip(SERVE[4::2], SERVE[5::2]))
    for argv in commands:
        options = dict(zip(argv[4::2], argv[5::2]))
        if options.get("--bundle", "").endswith("bundles/face"):
            assert options.get("--port", "8000") == wanted["--port"]
            return
    pytest.fail(f"no README serve command for bundles/face; found {commands}")
