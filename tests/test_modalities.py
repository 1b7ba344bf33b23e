"""Several bundles served at once: parsing, routing per request, subjects tied to their modality.

Two tiny bundles built without training (the face-small one of conftest and a signature one),
both with a hand-written fusion calibration; every request is routed to the bundle its
`modality` names (the answer's `model` is that bundle's id), a subject of one modality is a
409 `modality_mismatch` through the other, and identify searches one modality's subjects.
"""

import io
import json

import numpy as np
import pytest

from tests.synthetic import _stroke, png_bytes
from verifier import settings
from verifier.cli import main as cli_main
from verifier.core.modalities import (first_spec, format_bundles, modality_for_profile, parse_bundles, parse_specs)
from verifier.enrollment.store import open_store
from verifier.web.app import create_app
from verifier.web.extensions import enrollment, scorer_holder, scorers


# -- parsing ----------------------------------------------------------------------------------

def test_profiles_name_their_modality():
    assert [modality_for_profile(p) for p in ("face", "face-chip", "face-small", "signature", "product")] == \
        ["face", "face", "face", "signature", "product"]


def test_parse_named_and_bare_bundles():
    named = {"bundles/face": "face", "bundles/sig": "signature"}.get
    assert parse_bundles("face=bundles/face,signature=bundles/sig") == \
        {"face": "bundles/face", "signature": "bundles/sig"}
    assert list(parse_bundles(["signature=b/s", "face=b/f"])) == ["signature", "face"]  # order: the default first
    assert parse_bundles(["bundles/sig", "bundles/face"], name_of=named) == \
        {"signature": "bundles/sig", "face": "bundles/face"}
    assert parse_bundles(" face = a , b=c ") == {"face": "a", "b": "c"}
    assert parse_specs("/data/x=y/bundle") == [(None, "/data/x=y/bundle")]  # `=` inside a path
    assert first_spec("face=a,signature=b") == "face=a" and first_spec("a,b") == "a"
    assert parse_bundles(format_bundles({"face": "/a", "signature": "/b"})) == {"face": "/a", "signature": "/b"}


@pytest.mark.parametrize("text, message", [
    ("", "empty bundle"),
    ("face=a,,signature=b", "empty entry"),
    ("=a", "empty modality name"),
    ("face=", "empty bundle path"),
    ("Face Bundle=a", "bad modality name"),
    ("face=a,face=b", "'face' is given twice"),
])
def test_parse_refuses_bad_lists(text, message):
    with pytest.raises(ValueError, match=message):
        parse_bundles(text, name_of=lambda path: "face")


def test_two_bare_paths_of_one_profile_are_a_duplicate():
    with pytest.raises(ValueError, match="named from its profile"):
        parse_bundles("a,b", name_of=lambda path: "face")


def test_a_bare_path_is_named_from_its_profile(fusion_bundle, signature_bundle, tmp_path):
    assert parse_bundles([str(signature_bundle), str(fusion_bundle)]) == \
        {"signature": str(signature_bundle), "face": str(fusion_bundle)}
    assert parse_bundles(str(tmp_path / "signature")) == {"signature": str(tmp_path / "signature")}  # unreadable


def test_settings_default_serves_signature_only_once_it_exists(tmp_path, monkeypatch, signature_bundle):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VERIFIER_BUNDLE", raising=False)
    assert settings.get("VERIFIER_BUNDLE") == "face=bundles/face"
    assert settings.bundles() == {"face": "bundles/face"} and settings.default_bundle_path() == "bundles/face"
    (tmp_path / "bundles" / "signature").mkdir(parents=True)
    assert list(settings.bundles()) == ["face"]  # an empty directory is not a bundle
    (tmp_path / "bundles" / "signature" / "bundle.json").write_text("{}")
    assert settings.bundles() == {"face": "bundles/face", "signature": "bundles/signature"}
    monkeypatch.setenv("VERIFIER_BUNDLE", "signature=s,face=f")
    assert list(settings.bundles()) == ["signature", "face"] and settings.default_bundle_path() == "s"
    assert settings.default_bundle_spec() == "signature=s"
    monkeypatch.setenv("VERIFIER_BUNDLE", "face=a,face=b")
    with pytest.raises(ValueError, match="VERIFIER_BUNDLE=.*given twice"):
        settings.bundles()


# -- serve's command line ---------------------------------------------------------------------

def test_serve_takes_repeated_bundles(monkeypatch, tmp_path, fusion_bundle, signature_bundle, capsys):
    args = cli_main.build_parser().parse_args(
        ["serve", "--bundle", f"face={fusion_bundle}", "--bundle", f"signature={signature_bundle}"])
    assert args.bundle == [f"face={fusion_bundle}", f"signature={signature_bundle}"]
    assert cli_main.build_parser().parse_args(["serve"]).bundle is None  # VERIFIER_BUNDLE, then the default
    started, exported = [], []
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'store.db'}")
    monkeypatch.setattr(cli_main, "_ensure_export", exported.append)
    monkeypatch.setattr(cli_main.os, "execve", lambda *argv: started.append(argv))
    assert cli_main.main(["serve", "--create-store", "--bundle", str(signature_bundle),
                          "--bundle", f"face={fusion_bundle}"]) is None
    env = started[0][2]
    assert parse_bundles(env["VERIFIER_BUNDLE"]) == {"signature": str(signature_bundle.resolve()),
                                                     "face": str(fusion_bundle.resolve())}
    assert exported == [signature_bundle.resolve(), fusion_bundle.resolve()]
    assert list(parse_bundles(env["VERIFIER_BUNDLE"]))[0] == "signature"  # the first given is the default


@pytest.mark.parametrize("bundles, message", [
    (["face=A", "face=B"], "'face' is given twice"),
    (["face=MISSING"], "modality face: bundle directory not found"),
])
def test_serve_refuses_bad_bundles(bundles, message, tmp_path, fusion_bundle, capsys):
    argv = ["serve"]
    for item in bundles:
        argv += ["--bundle", item.replace("A", str(fusion_bundle)).replace("B", str(fusion_bundle))
                 .replace("MISSING", str(tmp_path / "nothing"))]
    assert cli_main.main(argv) == 2
    assert message in capsys.readouterr().err


# -- the service ------------------------------------------------------------------------------

@pytest.fixture
def app(database_url, fusion_bundle, signature_bundle, scorer, signature_scorer):
    app = create_app({"VERIFIER_BUNDLE": f"face={fusion_bundle},signature={signature_bundle}",
                      "DATABASE_URL": database_url, "TESTING": True})
    scorer_holder(app).scorer = scorer
    scorer_holder(app, "signature").scorer = signature_scorer
    yield app
    enrollment(app).close()


@pytest.fixture(scope="module")
def signatures():
    """{writer: [uint8 HxW images]}: 3 synthetic writers x 4 signatures."""
    rng = np.random.default_rng(7)
    out = {}
    for w in range(3):
        path = np.column_stack([np.linspace(0, 1, 9), rng.random(9)])
        out[f"w{w}"] = [_stroke(path, 0.01, rng, (120, 300)) for _ in range(4)]
    return out


def png(image):
    return png_bytes(image[:, :, 0] if image.ndim == 3 else image)


def upload(*images, field="image", **form):
    return {"data": {field: [(io.BytesIO(png(i)), f"{n}.png") for n, i in enumerate(images)], **form},
            "content_type": "multipart/form-data"}


def error(response):
    return response.get_json()["error"]


def test_requests_are_routed_to_their_modality(client, scorer, signature_scorer, faces, signatures):
    assert scorer.bundle_id != signature_scorer.bundle_id
    face_pair = {"image_a": (io.BytesIO(png(faces["id00"][0])), "a.png"),
                 "image_b": (io.BytesIO(png(faces["id00"][1])), "b.png")}
    default = client.post("/v1/verify", data=face_pair, content_type="multipart/form-data").get_json()
    assert default["modality"] == "face" and default["model"] == scorer.bundle_id  # absent: the default
    sig = [png(signatures["w0"][0]), png(signatures["w0"][1])]
    for kwargs in ({"data": {"image_a": (io.BytesIO(sig[0]), "a.png"), "image_b": (io.BytesIO(sig[1]), "b.png"),
                             "modality": "signature"}, "content_type": "multipart/form-data"},
                   {"json": {"image_a": _b64(sig[0]), "image_b": _b64(sig[1]), "modality": "signature"}}):
        body = client.post("/v1/verify", **kwargs).get_json()
        assert body["modality"] == "signature" and body["model"] == signature_scorer.bundle_id
        assert body["profile"] == "signature" and body["threshold"] == 0.6  # the signature calibration's
    batch = client.post("/v1/verify/batch?modality=signature",
                        json={"image_a": [_b64(sig[0])], "image_b": [_b64(sig[1])]}).get_json()
    assert batch["modality"] == "signature" and batch["model"] == signature_scorer.bundle_id
    calibration = client.get("/v1/calibration?modality=signature").get_json()
    assert calibration["modality"] == "signature" and calibration["threshold"] == 0.6
    assert client.get("/v1/calibration").get_json()["modality"] == "face"


def _b64(data):
    import base64

    return base64.b64encode(data).decode()


@pytest.mark.parametrize("method, path, kwargs", [
    ("post", "/v1/verify", {"json": {"image_a": "", "image_b": "", "modality": "iris"}}),
    ("post", "/v1/verify/batch?modality=iris", {"json": {"image_a": [], "image_b": []}}),
    ("post", "/v1/subjects", {"json": {"id": "x", "modality": "iris"}}),
    ("post", "/v1/subjects/x/templates", {"data": {"modality": "iris"}, "content_type": "multipart/form-data"}),
    ("post", "/v1/subjects/x/verify", {"json": {"image": "", "modality": "iris"}}),
    ("post", "/v1/identify", {"json": {"image": "", "modality": 3}}),
    ("get", "/v1/calibration?modality=iris", {}),
    ("get", "/v1/subjects?modality=iris", {}),
])
def test_an_unknown_modality_is_400_listing_the_served_ones(client, method, path, kwargs):
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code == 400, response.get_json()
    body = error(response)
    assert body["code"] == "unknown_modality"
    assert "face, signature" in body["message"] and "default face" in body["message"]


def test_modalities_route_lists_each_bundle(client, scorer, signature_scorer):
    body = client.get("/v1/modalities").get_json()
    assert body["default"] == "face"
    face, signature = body["modalities"]
    assert (face["modality"], face["default"], face["model"], face["threshold"]) == \
        ("face", True, scorer.bundle_id, 0.5)
    assert (signature["modality"], signature["default"], signature["model"], signature["profile"],
            signature["threshold"], signature["subject_threshold"]) == \
        ("signature", False, signature_scorer.bundle_id, "signature", 0.6, 0.45)


def test_readyz_and_metrics_report_every_modality(client, scorer, signature_scorer):
    for warm in (scorer, signature_scorer):
        if not warm.warm:
            warm.warm_up()
    ready = client.get("/readyz").get_json()
    assert ready["status"] == "ready" and ready["modality"] == "face" and ready["model"] == scorer.bundle_id
    assert ready["modalities"]["signature"]["model"] == signature_scorer.bundle_id
    text = client.get("/metrics").get_data(as_text=True)
    assert f'modality="signature",model="{signature_scorer.bundle_id}"' in text
    assert f'modality="face",model="{scorer.bundle_id}"' in text


def test_readyz_waits_for_every_modality(database_url, fusion_bundle, scorer, tmp_path):
    app = create_app({"VERIFIER_BUNDLE": f"face={fusion_bundle},signature={tmp_path / 'missing'}",
                      "DATABASE_URL": database_url, "TESTING": True})
    scorer_holder(app).scorer = scorer
    client = app.test_client()
    response = client.get("/readyz")
    assert response.status_code == 503 and "signature: the model is not loaded yet" in error(response)["message"]
    listed = client.get("/v1/modalities").get_json()["modalities"]
    assert listed[0]["ready"] is True and listed[1]["ready"] is False and "not found" in listed[1]["error"]
    assert client.post("/v1/verify", json={"image_a": "", "image_b": "", "modality": "signature"}).status_code == 503


def test_subjects_belong_to_a_modality(client, signature_scorer, signatures, faces):
    created = client.post("/v1/subjects", json={"id": "w0", "modality": "signature"})
    assert created.status_code == 201 and created.get_json()["modality"] == "signature"
    assert client.post("/v1/subjects", json={"id": "alice"}).get_json()["modality"] == "face"  # the default
    enrolled = client.post("/v1/subjects/w0/templates", **upload(*signatures["w0"][:3], modality="signature"))
    assert enrolled.status_code == 201, enrolled.get_json()
    assert enrolled.get_json()["modality"] == "signature" and enrolled.get_json()["model"] == signature_scorer.bundle_id
    shown = client.get("/v1/subjects/w0").get_json()
    assert shown["modality"] == "signature" and shown["current_templates"] == 3
    assert shown["needs_reenrollment"] is False  # counted against the signature bundle, not the default one
    verified = client.post("/v1/subjects/w0/verify?modality=signature", **upload(signatures["w0"][3])).get_json()
    assert verified["modality"] == "signature" and verified["model"] == signature_scorer.bundle_id
    assert verified["fusion"]["templates"] == 3
    listed = client.get("/v1/subjects?modality=signature").get_json()
    assert [s["id"] for s in listed["subjects"]] == ["w0"] and listed["total"] == 1
    assert {s["id"]: s["modality"] for s in client.get("/v1/subjects").get_json()["subjects"]} == \
        {"alice": "face", "w0": "signature"}


def test_another_modality_is_409_naming_both(client, signatures, faces):
    client.post("/v1/subjects", json={"id": "w0", "modality": "signature"})
    client.post("/v1/subjects/w0/templates", **upload(*signatures["w0"][:3], modality="signature"))
    for response in (client.post("/v1/subjects/w0/templates", **upload(faces["id00"][0])),  # default: face
                     client.post("/v1/subjects/w0/verify", **upload(faces["id00"][0], modality="face")),
                     client.post("/v1/subjects/w0/verify", json={"image": "", "modality": "face"})):
        assert response.status_code == 409
        body = error(response)
        assert body["code"] == "modality_mismatch"
        assert "'signature'" in body["message"] and "'face'" in body["message"]
        assert "modality=signature" in body["message"]
    client.post("/v1/subjects", json={"id": "alice"})
    client.post("/v1/subjects/alice/templates", **upload(*faces["id00"][:3]))
    response = client.post("/v1/subjects/alice/templates", **upload(signatures["w1"][0], modality="signature"))
    assert response.status_code == 409 and error(response)["code"] == "modality_mismatch"
    assert client.get("/v1/subjects/w0").get_json()["template_count"] == 3  # nothing was stored


def test_identify_searches_only_the_request_modality(client, signatures, faces):
    for writer in ("w0", "w1"):
        client.post("/v1/subjects", json={"id": writer, "modality": "signature"})
        client.post(f"/v1/subjects/{writer}/templates", **upload(*signatures[writer][:3], modality="signature"))
    for person in ("id00", "id01"):
        client.post("/v1/subjects", json={"id": person})
        client.post(f"/v1/subjects/{person}/templates", **upload(*faces[person][:3]))
    face = client.post("/v1/identify", **upload(faces["id01"][3], top_k="10")).get_json()
    assert face["modality"] == "face" and {c["subject_id"] for c in face["candidates"]} == {"id00", "id01"}
    assert face["gallery"]["subjects"] == 2
    sig = client.post("/v1/identify", **upload(signatures["w1"][3], modality="signature", top_k="10")).get_json()
    assert sig["modality"] == "signature" and {c["subject_id"] for c in sig["candidates"]} == {"w0", "w1"}
    assert sig["gallery"] == {"subjects": 2, "templates": 6}


def test_subjects_of_an_older_store_belong_to_the_default_modality(database_url, app, client, faces, scorer):
    """A store migrated from schema 4: its subjects have no modality (NULL), which is the default one."""
    enrollment(app).close()
    old = open_store(database_url, migrate=False)
    with old.transaction(write=True) as tx:  # start again from a version-4 store
        for table in ("templates", "subjects", "store_state", "api_keys", "store_meta", "schema_version"):
            tx.run(f"DROP TABLE IF EXISTS {table}")
    old.migrate(target=4)
    with old.transaction(write=True) as tx:  # as a version-4 verifier wrote them
        tx.run("INSERT INTO subjects (id, metadata, created) VALUES ('old', '{}', '2025-01-01T00:00:00Z')")
        for i, vector in enumerate(scorer.embed(faces["id02"][:3])):
            tx.run("INSERT INTO templates (id, subject_id, bundle_id, embedding, created, added_version) "
                   "VALUES (?, 'old', ?, ?, '2025-01-01T00:00:00Z', 1)",
                   (f"t{i}", scorer.bundle_id, np.asarray(vector, "<f4").tobytes()))
        tx.run("UPDATE store_state SET version = 1")
    old.close()
    store = open_store(database_url)
    assert store.schema_version() == 5 and store.get_subject("old")["modality"] is None
    store.close()
    assert client.get("/v1/subjects/old").get_json()["modality"] == "face"
    assert client.post("/v1/subjects/old/verify", **upload(faces["id02"][3])).status_code == 200
    assert client.post("/v1/subjects/old/templates", **upload(faces["id02"][4])).status_code == 201
    found = client.post("/v1/identify", **upload(faces["id02"][3])).get_json()
    assert found["candidates"][0]["subject_id"] == "old"
    wrong = client.post("/v1/subjects/old/verify", **upload(faces["id02"][3], modality="signature"))
    assert wrong.status_code == 409 and "'face'" in error(wrong)["message"]
    sig = client.post("/v1/identify", **upload(faces["id02"][3], modality="signature")).get_json()
    assert sig["candidates"] == []
    assert [s["id"] for s in client.get("/v1/subjects?modality=face").get_json()["subjects"]] == ["old"]


def test_the_store_checks_modality_in_the_enrolling_transaction(store):
    store.create_subject("s", modality="signature")
    store.add_templates("s", "B", np.ones((1, 8)), modality="signature", default_modality="face")
    with pytest.raises(Exception, match="modality 'signature'") as raised:
        store.add_templates("s", "B", np.ones((1, 8)), modality="face", default_modality="face")
    assert raised.value.code == "modality_mismatch" and raised.value.status == 409
    store.add_templates("new", "F", np.ones((1, 8)), create=True, modality="face", default_modality="face")
    assert store.get_subject("new")["modality"] == "face"
    assert store.gallery("B", modality="face", default_modality="face")[0] == []
    assert store.gallery("B", modality="signature", default_modality="face")[0] == ["s"]  # the refused one is not stored
    assert [row[1] for row in store.stale_templates("F", modality="face", default_modality="face")] == []


def test_cli_enrolls_under_its_bundle_modality(tmp_path, monkeypatch, fusion_bundle, signature_bundle, faces, capsys,
                                               signatures):
    import cv2

    monkeypatch.setenv("VERIFIER_BUNDLE", f"face={fusion_bundle},signature={signature_bundle}")
    database = f"sqlite:///{tmp_path / 'cli.db'}"
    paths = []
    for i, image in enumerate(signatures["w2"][:2]):
        paths.append(str(tmp_path / f"s{i}.png"))
        cv2.imwrite(paths[-1], image)
    face_path = str(tmp_path / "face.png")
    cv2.imwrite(face_path, faces["id00"][0])
    assert cli_main.main(["enroll", "w2", *paths, "--bundle", str(signature_bundle), "--database", database]) == 0
    assert json.loads(capsys.readouterr().out)["modality"] == "signature"  # named from the bundle's profile
    assert cli_main.main(["subjects", "show", "w2", "--database", database]) == 0
    assert json.loads(capsys.readouterr().out)["modality"] == "signature"
    assert cli_main.main(["enroll", "w2", face_path, "--database", database]) == 2  # the default: face
    assert "belongs to modality 'signature'" in capsys.readouterr().err
    assert cli_main.main(["subjects", "create", "bob", "--database", database]) == 0
    assert json.loads(capsys.readouterr().out)["modality"] == "face"
    assert cli_main.main(["subjects", "list", "--modality", "signature", "--database", database]) == 0
    assert [s["id"] for s in json.loads(capsys.readouterr().out)["subjects"]] == ["w2"]


def test_served_modalities_come_from_the_config(app):
    assert scorers(app).names == ["face", "signature"] and scorers(app).default == "face"
