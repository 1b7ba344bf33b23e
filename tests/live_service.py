"""A real `python -m verifier serve` (gunicorn) on a free loopback port, for tests over HTTP."""

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Client:
    """Minimal HTTP client on http.client: one request per call, JSON or text back."""

    def __init__(self, port):
        self.port = port

    def request(self, method, path, body=None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {},
                         encode_chunked=(headers or {}).get("Transfer-Encoding") == "chunked")
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        content_type = response.getheader("Content-Type", "")
        payload = json.loads(data) if content_type.startswith("application/json") else data.decode()
        return response.status, payload, content_type

    def multipart(self, path, fields):
        """fields: list of (name, bytes) sent as file uploads, or (name, str) as text fields."""
        boundary = uuid.uuid4().hex
        parts = []
        for name, value in fields:
            if isinstance(value, bytes):
                head = (f'Content-Disposition: form-data; name="{name}"; filename="{name}.png"\r\n'
                        "Content-Type: application/octet-stream\r\n\r\n")
                parts.append(f"--{boundary}\r\n{head}".encode() + value + b"\r\n")
            else:
                parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return self.request("POST", path, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})

    def chunked(self, path, chunks, content_type):
        """A body sent with Transfer-Encoding: chunked (no Content-Length for the server to check)."""
        return self.request("POST", path, iter(chunks), {"Content-Type": content_type, "Transfer-Encoding": "chunked"})

    def json(self, path, payload):
        return self.request("POST", path, json.dumps(payload).encode(), {"Content-Type": "application/json"})


@contextlib.contextmanager
def running_service(bundle, log_path, env=None, timeout=120):
    """Start the service (2 workers x 2 threads), yield a Client once /readyz is 200, then kill it."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    env.pop("VERIFIER_METRICS_DIR", None)
    port = free_port()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "verifier", "serve", "--bundle", str(bundle), "--port", str(port),
             "--workers", "2", "--threads", "2", "--create-store"], env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    client = Client(port)
    client.log_path = log_path
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                pytest.fail(f"the service exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                if client.request("GET", "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the service did not become ready:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield client
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have exited already (a bad start)
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
