"""deploy/nginx.conf in front of the real service: slow and abusive clients stop at nginx.

The repo's config, with only its two ports changed, runs as a foreground nginx (temp
prefix) in front of `python -m verifier serve` on loopback; those tests are skipped where
nginx is missing. Also gunicorn's worker recycling (max_requests with jitter).
"""

import runpy
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.live_service import Client, free_port, running_service
from tests.synthetic import identity_images, png_bytes

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")  # /usr/sbin: not on a user's PATH
CONFIG = Path(__file__).parent.parent / "deploy" / "nginx.conf"
GUNICORN_CONF = Path(__file__).parent.parent / "verifier" / "web" / "gunicorn_conf.py"

# The main context around the repo's http-context file (Debian's /etc/nginx/nginx.conf does this in
# production), everything under a temp prefix; one foreground process, no switch to another user.
MAIN = """daemon off;
master_process off;
error_log {prefix}/error.log;
pid {prefix}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/verifier.conf;
}}
"""


def render(upstream_port, listen_port):
    """deploy/nginx.conf with the test's ports: each replaced line must be there exactly once."""
    text = CONFIG.read_text()
    for old, new in (("listen 80;", f"listen 127.0.0.1:{listen_port};"),
                     ("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream_port};")):
        assert text.count(old) == 1, f"deploy/nginx.conf should have exactly one {old!r}"
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="module")
def proxy(calibrated_bundle, tmp_path_factory):
    """gunicorn on loopback behind a foreground nginx running the repo's config; a Client for nginx."""
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx)")
    work = tmp_path_factory.mktemp("proxy")
    with running_service(calibrated_bundle, work / "gunicorn.log", timeout=90) as service:
        port = free_port()
        (work / "verifier.conf").write_text(render(service.port, port))
        (work / "nginx.conf").write_text(MAIN.format(prefix=work))
        process = subprocess.Popen([NGINX, "-p", str(work), "-c", str(work / "nginx.conf"), "-e", str(work / "error.log")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            client = Client(port)
            deadline = time.monotonic() + 10
            while True:
                try:
                    if client.request("GET", "/healthz")[0] == 200:
                        break
                except OSError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"nginx did not start:\n{(work / 'error.log').read_text()}")
                time.sleep(0.1)
            yield client
        finally:
            process.terminate()
            process.wait(timeout=10)


def trickle(port, head, stop):
    """A slowloris client: one byte of `head` a second until `stop` is set or nginx hangs up."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for byte in head:
            if stop.wait(1.0):
                return
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                return


def test_slow_clients_do_not_stall_the_service(proxy):
    """More trickling clients than gunicorn has threads (2 x 2): /healthz still answers at once."""
    stop = threading.Event()
    headers = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    body = b"POST /v1/verify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    clients = [threading.Thread(target=trickle, args=(proxy.port, head, stop), daemon=True)
               for head in (headers, headers, headers, body + b"{" * 100, body + b"{" * 100)]
    # the body clients send their headers at once, then trickle the body
    for thread in clients:
        thread.start()
    try:
        time.sleep(1.5)
        for _ in range(3):
            start = time.monotonic()
            status, payload, _ = proxy.request("GET", "/healthz")
            assert status == 200 and payload == {"status": "ok"}
            assert time.monotonic() - start < 1.0
            time.sleep(0.5)
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=5)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_oversized_upload_gets_a_readable_413(proxy, chunked):
    """30 MiB, announced or chunked: http.client sends it all and reads nginx's JSON 413 (no broken pipe)."""
    body = b"x" * (30 * 1024 * 1024)
    if chunked:
        chunks = (body[i:i + 1024 * 1024] for i in range(0, len(body), 1024 * 1024))
        status, payload, content_type = proxy.chunked("/v1/verify", chunks, "application/json")
    else:
        status, payload, content_type = proxy.request("POST", "/v1/verify", body, {"Content-Type": "application/json"})
    assert status == 413 and content_type.startswith("application/json")
    assert payload["error"]["code"] == "request_too_large"


def test_a_verify_works_through_the_proxy(proxy):
    images = identity_images(n_identities=1, per_identity=2)["id00"]
    status, body, _ = proxy.multipart("/v1/verify", [("image_a", png_bytes(images[0])),
                                                     ("image_b", png_bytes(images[1]))])
    assert status == 200, body
    assert body["decision"] in ("same", "different") and "distance" in body


def test_requests_past_the_burst_get_429(proxy):
    """Last in the module: it spends this address's burst (40 at 20 r/s)."""
    for _ in range(200):
        status, payload, _ = proxy.request("GET", "/healthz")
        if status != 200:
            break
    assert status == 429, payload
    assert payload["error"]["code"] == "rate_limited"


def test_gunicorn_recycles_workers_with_jitter(monkeypatch):
    """Workers are replaced after max_requests (+ jitter) requests; both come from the environment."""
    from gunicorn.config import Config

    defaults = runpy.run_path(str(GUNICORN_CONF))
    assert (defaults["max_requests"], defaults["max_requests_jitter"]) == (1000, 100)
    monkeypatch.setenv("VERIFIER_MAX_REQUESTS", "50")
    monkeypatch.setenv("VERIFIER_MAX_REQUESTS_JITTER", "7")
    settings = runpy.run_path(str(GUNICORN_CONF))
    config = Config()
    for name in ("max_requests", "max_requests_jitter"):
        config.set(name, settings[name])  # gunicorn knows and accepts both names
    assert (config.max_requests, config.max_requests_jitter) == (50, 7)
