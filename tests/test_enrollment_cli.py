"""`python -m verifier enroll|verify-subject|identify|subjects|reembed|keys`, in process (fast)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from verifier.cli.main import main
from verifier.core.scorer import Scorer
from verifier.enrollment.store import open_store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cli(tmp_path, monkeypatch, scorer, fusion_bundle, capsys):
    """Run the CLI against a fresh SQLite store; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(Scorer, "from_bundle", classmethod(lambda cls, path, **kw: scorer))
    url = f"sqlite:///{tmp_path / 'cli.db'}"

    def run(*argv):
        code = main([*argv, "--database", url] + (["--bundle", str(fusion_bundle)]
                                                   if argv[0] in ("enroll", "verify-subject", "identify", "reembed")
                                                   else []))
        out, err = capsys.readouterr()
        return code, out, err

    run.url = url
    return run


@pytest.fixture
def image_files(tmp_path, faces):
    out = {}
    for name, images in faces.items():
        out[name] = []
        for i, image in enumerate(images):
            path = tmp_path / f"{name}_{i}.png"
            cv2.imwrite(str(path), image)
            out[name].append(str(path))
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((56, 46), 255, np.uint8))
    out["blank"] = str(blank)
    return out


def test_enroll_verify_identify(cli, image_files):
    code, out, err = cli("enroll", "id00", *image_files["id00"][:3], image_files["blank"], "--metadata", '{"a": 1}')
    result = json.loads(out)
    assert code == 0 and result["enrolled"] == 3 and result["failure_to_enrol"] == 1 and "blank" in err
    code, out, _ = cli("enroll", "id01", *image_files["id01"][:3])
    assert code == 0
    code, out, _ = cli("verify-subject", "id00", image_files["id00"][4], "--json")
    body = json.loads(out)
    assert code == 0 and body["fusion"]["rule"] == "mean" and {"decision", "confidence", "model"} <= set(body)
    code, out, _ = cli("verify-subject", "id00", image_files["id00"][4])
    assert code == 0 and "fused distance (mean over 3 templates)" in out
    code, out, _ = cli("identify", image_files["id01"][0], "--top-k", "2")
    assert code == 0 and out.startswith("match: id01")
    code, out, _ = cli("identify", image_files["id01"][4], "--threshold", "0.00001")
    assert code == 0 and out.startswith("no match")


def test_subjects_and_errors(cli, image_files):
    assert cli("subjects", "create", "s1", "--metadata", '{"x": 2}')[0] == 0
    code, out, _ = cli("subjects")
    assert code == 0 and [s["id"] for s in json.loads(out)["subjects"]] == ["s1"]
    assert json.loads(cli("subjects", "show", "s1")[1])["metadata"] == {"x": 2}
    assert cli("subjects", "delete", "s1")[0] == 0
    code, _, err = cli("subjects", "show", "s1")
    assert code == 2 and "not found" in err
    code, _, err = cli("enroll", "s2", "--no-create", image_files["id00"][0])
    assert code == 2 and "not found" in err
    code, _, err = cli("enroll", "s2", "/no/such/file.png")
    assert code == 2 and "cannot read /no/such/file.png" in err
    code, _, err = cli("verify-subject", "ghost", image_files["id00"][0])
    assert code == 2 and "not found" in err


def test_reembed_lists_who_must_reenroll(cli):
    open_store(cli.url).add_templates("old", "OLDBUNDLE", np.ones((1, 8)), create=True)
    code, out, err = cli("reembed")
    assert code == 0 and json.loads(out)["must_reenroll"] == ["old"] and "re-enrolled" in err


def test_keys_in_a_separate_process(tmp_path):
    """Key management needs no model: run it as a user would."""
    env = dict(os.environ, DATABASE_URL=f"sqlite:///{tmp_path / 'keys.db'}", PYTHONPATH=str(ROOT))

    def verifier(*argv):
        return subprocess.run([sys.executable, "-m", "verifier", *argv], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    created = verifier("keys", "create", "--name", "ops")
    key = created.stdout.strip()
    assert created.returncode == 0 and key.startswith("vk_") and "shown only now" in created.stderr
    listed = json.loads(verifier("keys", "list").stdout)["keys"]
    assert [k["name"] for k in listed] == ["ops"] and key not in json.dumps(listed)
    assert open_store(env["DATABASE_URL"]).key_status(None) == (True, True, None)
    assert verifier("keys", "revoke", listed[0]["id"]).returncode == 0
    again = verifier("keys", "revoke", listed[0]["id"])
    assert again.returncode == 2 and "no active API key" in again.stderr
    assert open_store(env["DATABASE_URL"]).key_status(None) == (True, False, None)  # auth stays on


def test_keys_create_takes_a_name_and_a_scope(cli):
    code, out, err = cli("keys", "create", "reader", "--scope", "read")
    assert code == 0 and out.startswith("vk_") and "scope read" in err
    assert cli("keys", "create", "--name", "ops")[0] == 0
    listed = json.loads(cli("keys", "list")[1])["keys"]
    assert [(k["name"], k["scope"]) for k in listed] == [("reader", "read"), ("ops", "write")]
    code, _, err = cli("keys", "create")
    assert code == 2 and "needs one name" in err
    with pytest.raises(SystemExit):  # argparse: an unknown scope is a usage error
        cli("keys", "create", "x", "--scope", "admin")
