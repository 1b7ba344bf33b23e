"""`python -m verifier catalogue add FOLDER` and `python -m verifier search IMAGE`, in process (fast)."""

import json

import cv2
import numpy as np
import pytest

from tests.synthetic import write_folder
from verifier.cli.main import main
from verifier.core.scorer import Scorer
from verifier.enrollment.store import open_store


@pytest.fixture
def cli(tmp_path, monkeypatch, scorer, fusion_bundle, capsys):
    """Run the CLI against a fresh SQLite store with the fusion bundle; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(Scorer, "from_bundle", classmethod(lambda cls, path, **kw: scorer))
    url = f"sqlite:///{tmp_path / 'catalogue.db'}"

    def run(*argv):
        code = main([*argv, "--database", url, "--bundle", str(fusion_bundle)])
        out, err = capsys.readouterr()
        return code, out, err

    run.url = url
    return run


@pytest.fixture
def folder(tmp_path):
    """3 items x 4 images, plus a file that is not an image, a blank image and a badly named item."""
    root = write_folder(tmp_path / "shop", n_identities=3, per_identity=4, seed=7)
    (root / "id00" / "notes.txt").write_text("not an image")
    cv2.imwrite(str(root / "id01" / "blank.png"), np.full((56, 46), 255, np.uint8))
    (root / "bad item").mkdir()
    cv2.imwrite(str(root / "bad item" / "0.png"), cv2.imread(str(root / "id02" / "0.png")))
    return root


def test_catalogue_add_then_search(cli, folder):
    code, out, err = cli("catalogue", "add", str(folder))
    assert code == 0, err
    assert out.startswith("3 items (3 new), 12 images enrolled, 0 already in the catalogue, 3 skipped")
    assert "notes.txt: unreadable" in err and "blank.png" in err and "'bad item'" in err
    code, out, _ = cli("catalogue", "add", str(folder), "--json")  # again: nothing new to add, and no error
    report = json.loads(out)
    assert code == 0 and report["created"] == 0 and report["enrolled"] == 0 and len(report["known"]) == 12
    assert {s["reason"].split(":")[0] for s in report["skipped"]} >= {"unreadable", "item folder 'bad item'"}
    probe = folder / "id01" / "2.png"
    cv2.imwrite(str(folder / "id01" / "copy.png"), cv2.imread(str(probe)))  # one new file, an image it holds
    code, out, _ = cli("catalogue", "add", str(folder), "--json")
    assert code == 0 and str(folder / "id01" / "copy.png") in json.loads(out)["known"]
    code, out, _ = cli("search", str(probe), "-k", "3", "--json")
    body = json.loads(out)
    assert code == 0 and len(body["results"]) == 3 and body["catalogue"] == {"items": 3, "images": 12}
    assert body["results"][0]["subject_id"] == "id01"
    assert body["results"][0]["distance"] == pytest.approx(0, abs=1e-6)
    assert body["results"][1]["distance"] > 1e-3  # stored once
    code, out, _ = cli("search", str(probe))
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("10 nearest of 12 images (3 items)") and len(lines) == 11
    assert lines[1].lstrip().startswith("1. id01  template ")


def test_search_errors(cli, folder):
    code, _, err = cli("search", str(folder / "id00" / "0.png"))
    assert code == 2 and "holds no image" in err and "catalogue add" in err
    assert cli("catalogue", "add", str(folder))[0] == 0
    code, _, err = cli("search", str(folder / "id00" / "0.png"), "-k", "0")
    assert code == 2 and "k must be an integer from 1 to 100" in err


@pytest.mark.parametrize("make, says", [
    (lambda root: root.mkdir(), "has no item folders"),
    (lambda root: (root.mkdir(), (root / "a.png").write_bytes(b"x")), "has no item folders"),
    (lambda root: (root.mkdir(), (root / "item").mkdir()), "no files in them"),
    (lambda root: None, "not found"),
])
def test_catalogue_add_bad_folder_is_one_line_exit_2(cli, tmp_path, make, says):
    root = tmp_path / "empty"
    make(root)
    code, out, err = cli("catalogue", "add", str(root))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and says in err


def test_the_same_image_twice_in_one_folder_is_stored_once(cli, tmp_path):
    root = write_folder(tmp_path / "dup", n_identities=2, per_identity=2, seed=3)
    cv2.imwrite(str(root / "id00" / "again.png"), cv2.imread(str(root / "id00" / "0.png")))
    code, out, err = cli("catalogue", "add", str(root), "--json")
    report = json.loads(out)
    assert code == 0, err
    assert report["enrolled"] == 4 and report["known"] == [str(root / "id00" / "again.png")]


def test_catalogue_add_with_nothing_enrollable_is_exit_2(cli, tmp_path):
    (tmp_path / "junk" / "item").mkdir(parents=True)
    (tmp_path / "junk" / "item" / "a.txt").write_text("no")
    code, out, err = cli("catalogue", "add", str(tmp_path / "junk"))
    assert code == 2 and "0 images enrolled, 0 already in the catalogue, 1 skipped" in out and "no image of" in err


def test_modality_option_names_the_bundle(cli, folder):
    code, out, _ = cli("catalogue", "add", str(folder), "--modality", "products", "--json")
    assert code == 0 and json.loads(out)["modality"] == "products"
    code, out, _ = cli("search", str(folder / "id00" / "1.png"), "--modality", "products", "--json")
    assert code == 0 and json.loads(out)["results"][0]["subject_id"] == "id00"


def test_an_item_of_another_modality_is_skipped_whole(cli, folder):
    open_store(cli.url).create_subject("id00", modality="signature")
    code, out, err = cli("catalogue", "add", str(folder), "--modality", "face")
    assert code == 0 and out.startswith("2 items (2 new), 8 images enrolled")
    assert err.count("belongs to modality 'signature'") == 4
