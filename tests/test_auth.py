"""Auth that fails closed: `serve` refuses an anonymous public start or a mistyped store, keys stay on
once enabled, verify and /metrics can be protected, and read keys cannot write."""

import base64
import os
from pathlib import Path

import pytest

from tests.synthetic import png_bytes
from verifier.cli import main as cli_main
from verifier.enrollment.keys import create_key
from verifier.enrollment.store import open_store
from verifier.web.app import create_app
from verifier.web.extensions import enrollment, scorer_holder

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = str(ROOT / "bundles" / "face")  # serve only reads its bundle.json before the checks


# -- python -m verifier serve: the checks before gunicorn ------------------------------------

@pytest.fixture
def serve(monkeypatch, capsys):
    """Run `serve` up to the exec of gunicorn; returns (exit code or "started", stderr)."""
    started = []
    monkeypatch.setattr(cli_main, "_ensure_export", lambda bundle: None)
    monkeypatch.setattr(os, "execve", lambda *argv: started.append(argv))
    for name in ("DATABASE_URL", "VERIFIER_ALLOW_ANONYMOUS"):
        monkeypatch.delenv(name, raising=False)

    def run(*argv):
        code = cli_main.main(["serve", "--bundle", BUNDLE, "--port", "8000", *argv])
        assert (code is None) == bool(started)  # started iff it reached gunicorn
        return ("started" if started else code), capsys.readouterr().err

    return run


@pytest.fixture
def url(tmp_path, monkeypatch):
    """An existing, migrated SQLite store named by DATABASE_URL."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    open_store(url).close()
    monkeypatch.setenv("DATABASE_URL", url)
    return url


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "verifier.example"])
def test_serve_refuses_a_public_host_without_a_key(serve, url, host):
    result, err = serve("--host", host)
    assert result == 2
    assert f"refusing to serve on {host} with no API key" in err
    assert "python -m verifier keys create --name NAME" in err and "--allow-anonymous" in err


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"])
def test_serve_on_loopback_needs_no_key(serve, url, host):
    assert serve("--host", host)[0] == "started"


def test_serve_tells_its_workers_never_to_create_the_store(serve, url, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "execve", lambda *argv: calls.append(argv))
    cli_main.main(["serve", "--bundle", BUNDLE, "--port", "8000"])
    assert calls[0][2]["VERIFIER_CREATE_STORE"] == "0"


def test_the_app_does_not_create_a_store_told_not_to(tmp_path, fusion_bundle, scorer):
    path = tmp_path / "gone.db"
    app = make_app(f"sqlite:///{path}", fusion_bundle, scorer, CREATE_STORE=False)
    response = app.test_client().get("/v1/subjects")
    assert response.status_code == 503 and code(response) == "store_unavailable" and not path.exists()


def test_serve_anonymously_on_purpose(serve, url, monkeypatch):
    result, err = serve("--host", "0.0.0.0", "--allow-anonymous")
    assert result == "started" and "with no API key (--allow-anonymous)" in err
    monkeypatch.setenv("VERIFIER_ALLOW_ANONYMOUS", "1")
    assert serve("--host", "0.0.0.0")[0] == "started"


def test_serve_publicly_with_a_key_and_after_the_last_is_revoked(serve, url):
    store = open_store(url)
    _, record = create_key(store, "ops")
    assert serve("--host", "0.0.0.0") == ("started", "")
    store.revoke_key(record["id"])
    result, err = serve("--host", "0.0.0.0")  # auth stays on: every protected route answers 401
    assert result == "started" and "no API key is active" in err


def test_serve_refuses_a_missing_sqlite_file(serve, tmp_path, monkeypatch):
    path = tmp_path / "verifer.db"  # a typo
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{path}")
    result, err = serve()
    assert result == 2 and f"the SQLite store {path} does not exist" in err and "--create-store" in err
    assert not path.exists()
    result, err = serve("--create-store")
    assert result == "started" and f"creating the enrollment store {path} (first start)" in err
    assert path.exists()


def test_serve_creates_the_quick_start_store_on_first_start(serve, tmp_path, monkeypatch):
    """`make serve` on a fresh machine: no DATABASE_URL, so the default verifier.db is made (and said)."""
    monkeypatch.chdir(tmp_path)
    result, err = serve()
    assert result == "started" and "creating the enrollment store verifier.db (first start)" in err
    assert (tmp_path / "verifier.db").exists()
    assert serve() == ("started", "")  # the second start says nothing


# -- the app: which routes need a key, and scopes ---------------------------------------------

def make_app(database_url, fusion_bundle, scorer, **config):
    app = create_app({"VERIFIER_BUNDLE": str(fusion_bundle), "DATABASE_URL": database_url, "TESTING": True,
                      **config})
    scorer_holder(app).scorer = scorer
    return app


@pytest.fixture
def app(database_url, fusion_bundle, scorer):
    app = make_app(database_url, fusion_bundle, scorer)
    yield app
    enrollment(app).close()


def pair(faces):
    return {"image_a": base64.b64encode(png_bytes(faces["id00"][0][:, :, 0])).decode(),
            "image_b": base64.b64encode(png_bytes(faces["id00"][1][:, :, 0])).decode()}


def code(response):
    return response.get_json()["error"]["code"]


def test_verify_and_metrics_need_a_read_key_once_keys_exist(app, database_url, faces):
    client = app.test_client()
    assert client.post("/v1/verify", json=pair(faces)).status_code == 200  # no key yet: open
    store = open_store(database_url)
    key, _ = create_key(store, "reader", "read")
    for method, path, body in (("post", "/v1/verify", pair(faces)), ("post", "/v1/verify/batch", None),
                               ("get", "/metrics", None)):
        refused = getattr(client, method)(path, json=body)
        assert refused.status_code == 401 and code(refused) == "unauthorized", path
    assert client.post("/v1/verify", json=pair(faces), headers={"X-API-Key": key}).status_code == 200
    assert client.get("/metrics", headers={"X-API-Key": key}).status_code == 200
    for path in ("/healthz", "/openapi.json", "/v1/calibration", "/"):  # never protected
        assert client.get(path).status_code == 200, path


def test_protect_enrollment_leaves_verify_and_metrics_open(database_url, fusion_bundle, scorer, faces):
    app = make_app(database_url, fusion_bundle, scorer, PROTECT="enrollment")
    create_key(open_store(database_url), "ops")
    client = app.test_client()
    assert client.post("/v1/verify", json=pair(faces)).status_code == 200
    assert client.get("/metrics").status_code == 200
    assert client.get("/v1/subjects").status_code == 401 and client.post("/v1/identify").status_code == 401
    enrollment(app).close()


def test_an_unknown_protect_setting_is_refused(database_url, fusion_bundle, scorer):
    with pytest.raises(ValueError, match="VERIFIER_PROTECT='verify'"):
        make_app(database_url, fusion_bundle, scorer, PROTECT="verify")


def test_a_read_key_cannot_write(app, database_url, faces):
    store = open_store(database_url)
    reader, _ = create_key(store, "reader", "read")
    writer, _ = create_key(store, "writer", "write")
    client = app.test_client()
    image = base64.b64encode(png_bytes(faces["id00"][0][:, :, 0])).decode()
    as_reader, as_writer = {"X-API-Key": reader}, {"X-API-Key": writer}
    for method, path, body in (("post", "/v1/subjects", {"id": "alice"}), ("delete", "/v1/subjects/alice", None),
                               ("post", "/v1/subjects/alice/templates", {"image": image})):
        refused = getattr(client, method)(path, json=body, headers=as_reader)
        assert refused.status_code == 403 and code(refused) == "forbidden", path
        assert "scope 'read'" in refused.get_json()["error"]["message"]
    assert client.post("/v1/subjects", json={"id": "alice"}, headers=as_writer).status_code == 201
    assert client.post("/v1/subjects/alice/templates", json={"image": image}, headers=as_writer).status_code == 201
    assert client.get("/v1/subjects/alice", headers=as_reader).status_code == 200
    assert client.post("/v1/subjects/alice/verify", json={"image": image}, headers=as_reader).status_code == 200
    assert client.post("/v1/identify", json={"image": image}, headers=as_reader).status_code == 200
    assert client.post("/v1/verify", json=pair(faces), headers=as_writer).status_code == 200  # write implies read


def test_revoking_the_last_key_leaves_every_protected_route_closed(app, database_url, faces):
    store = open_store(database_url)
    key, record = create_key(store, "ops")
    store.revoke_key(record["id"])
    client = app.test_client()
    for method, path in (("get", "/v1/subjects"), ("post", "/v1/subjects"), ("post", "/v1/identify"),
                         ("post", "/v1/verify"), ("get", "/metrics")):
        for headers in ({}, {"X-API-Key": key}):
            closed = getattr(client, method)(path, json={"id": "x"}, headers=headers)
            assert closed.status_code == 401, (path, headers)
            assert closed.get_json()["error"]["message"].startswith("no active API key: create one with `python "
                                                                    "-m verifier keys create"), path
    new_key, _ = create_key(store, "ops2")
    assert client.get("/v1/subjects", headers={"X-API-Key": new_key}).status_code == 200


def test_every_protected_route_declares_its_key_in_the_spec(app):
    """The `@needs_key` marks and the OpenAPI fragments agree: security, 401 and 403 on the same routes."""
    spec = app.test_client().get("/openapi.json").get_json()
    assert spec["components"]["securitySchemes"] == {"ApiKey": {
        "type": "apiKey", "in": "header", "name": "X-API-Key",
        "description": spec["components"]["securitySchemes"]["ApiKey"]["description"]}}
    marked = set()
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        operation = getattr(view, "openapi", None)
        if operation is None:
            continue
        protected = hasattr(view, "key_requirement")
        assert ("security" in operation) == protected, rule.rule
        assert {"401", "403"} <= set(operation["responses"]) or not protected, rule.rule
        if protected:
            marked.add(rule.rule)
    assert {"/v1/verify", "/v1/verify/batch", "/metrics", "/v1/identify", "/v1/subjects"} <= marked
