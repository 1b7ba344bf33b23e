"""Serving benchmark: the real service (gunicorn, fast path) against a naive `model.predict` server.

    python bench/serve.py [--bundle bundles/face] [--requests 600] [--naive-requests 60]

Starts, on loopback and in this run, `python -m verifier serve` and bench/naive_server.py
on the same bundle; sends a bounded number of POST /v1/verify requests (two images each)
at 1, 2 and 4 concurrent keep-alive clients; prints p50/p99 latency and verifications/s
for both, the speed-up, and the RSS of the gunicorn workers; ends with one JSON line. The
service runs with VERIFIER_MAX_REQUESTS=0, so that the steady state is measured: a worker
replaced mid-run would charge its start-up (TensorFlow-free, but the model loaded and warmed)
to that level's requests.
The client runs on the same machine, so it takes part of the CPU the servers could use.
Both servers are stopped at the end, whatever happens.
"""

import argparse
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

import cv2

from bench import dlib_face, machine
from verifier.core.bundle import read_meta
from verifier.core.errors import VerifierError
from verifier.core.profiles import Profile
from verifier.settings import DEFAULT_BUNDLE

# the small-CNN profiles' goals; the face pipeline (detection, alignment, a 5.6M-parameter ResNet) has its own
GOALS = {"verifications_per_s": 300, "p50_ms_one_client": 5.0, "worker_rss_mb": 400}
FACE_GOALS = {"verifications_per_s": 50, "p50_ms_one_client": 40.0, "worker_rss_mb": 400}
DLIB_SPEEDUP_GOAL = 3.0  # the face pipeline against face_recognition's dlib pipeline, same images, same run


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def payload_images(profile):
    """Two PNG images: ORL faces of two people for the face profile, else seeded blobs at 2x size."""
    import cv2

    if profile.name.startswith("face"):
        try:
            from imagesets import load_orl

            data = load_orl()
            first = data.images[0]
            second = next(data.images[i] for i in range(len(data)) if data.labels[i] != data.labels[0])
            return [cv2.imencode(".png", image)[1].tobytes() for image in (first, second)]
        except Exception as exc:  # the benchmark still runs on synthetic images
            print(f"(ORL faces unavailable: {exc}; using synthetic images)")
    rng = np.random.default_rng(0)
    shape = (profile.height * 2, profile.width * 2)
    images = [cv2.GaussianBlur((rng.random(shape) * 255).astype(np.uint8), (0, 0), 2) for _ in range(2)]
    return [cv2.imencode(".png", image)[1].tobytes() for image in images]


def multipart(images):
    boundary = uuid.uuid4().hex
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n"
        for name, data in zip(("image_a", "image_b"), images)) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def start(argv, log_path):
    with open(log_path, "w") as log:
        return subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", VERIFIER_MAX_REQUESTS="0"))


def stop(process):
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_until(port, path, process, log_path, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"server exited with {process.returncode}; log:\n{Path(log_path).read_text()[-3000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.25)
    sys.exit(f"server on port {port} not ready after {timeout}s; log:\n{Path(log_path).read_text()[-3000:]}")


def cpu_seconds(master):
    """User + system CPU time used so far by a server process and all its workers, live or gone.

    A worker that gunicorn replaced and reaped has its time counted in its master's
    cutime/cstime, so its time is not lost (only a worker reaped between the reads of its stat
    and of the master's would count twice).
    """
    ticks = 0
    for pid, own_only in [(pid, True) for pid in children(master)] + [(master, False)]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += sum(int(v) for v in fields[11:13 if own_only else 15])
    return ticks / os.sysconf("SC_CLK_TCK")


def load(port, body, headers, total, clients, server=None):
    """`total` requests split over `clients` threads, each on its own keep-alive connection.

    Besides latency and throughput, reports the CPU milliseconds per verification spent by the
    server processes and by this client: figures that other load on the machine does not inflate
    much, from which the throughput of an otherwise idle machine can be estimated.
    """
    latencies, errors = [], []
    lock = threading.Lock()

    def client(count):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        for _ in range(count):
            t0 = time.perf_counter()
            conn.request("POST", "/v1/verify", body, headers)
            response = conn.getresponse()
            response.read()
            mine.append(time.perf_counter() - t0)
            if response.status != 200:
                errors.append(response.status)
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(total // clients + (i < total % clients),))
               for i in range(clients)]
    server_cpu, client_cpu = cpu_seconds(server) if server else 0.0, time.process_time()
    start_time = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start_time
    server_cpu = (cpu_seconds(server) if server else 0.0) - server_cpu
    client_cpu = time.process_time() - client_cpu
    ms = np.asarray(latencies) * 1000.0
    return {"clients": clients, "requests": total, "errors": len(errors),
            "p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "verifications_per_s": round(total / wall, 1),
            "server_cpu_ms_per_verification": round(server_cpu * 1000 / total, 2),
            "client_cpu_ms_per_verification": round(client_cpu * 1000 / total, 2)}


def rss_mb(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def children(pid):
    """Direct children of a process (the gunicorn workers of a master)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return sorted(out)


def build_parser():
    parser = argparse.ArgumentParser(description="Benchmark the verifier service against a naive server.")
    parser.add_argument("--bundle", default=DEFAULT_BUNDLE)
    parser.add_argument("--requests", type=int, default=600, help="requests per concurrency level (service)")
    parser.add_argument("--naive-requests", type=int, default=60, help="requests per concurrency level (naive)")
    parser.add_argument("--clients", default="1,2,4", help="concurrency levels")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--log-dir", default=None, help="where the servers' logs go (default: a temp dir)")
    return parser


@contextlib.contextmanager
def running(argv, log_path, port, ready_path):
    """A server process, ready on `port`, stopped when the block ends whatever happens."""
    process = start(argv, log_path)
    try:
        wait_until(port, ready_path, process, log_path)
        yield process
    finally:
        stop(process)


def measure(servers, body, headers, levels, results):
    """Load each server at each concurrency level; one printed row and one results row each."""
    print(f"{'server':8} {'clients':>7} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'verif/s':>8} "
          f"{'errors':>6} {'server CPU ms/verif':>19} {'client CPU ms/verif':>19}")
    for name, target, total, server in servers:
        for clients in levels:
            row = load(target, body, headers, total, clients, server)
            results[name].append(row)
            print(f"{name:8} {clients:>7} {total:>8} {row['p50_ms']:>8} {row['p99_ms']:>8} "
                  f"{row['verifications_per_s']:>8} {row['errors']:>6} "
                  f"{row['server_cpu_ms_per_verification']:>19} {row['client_cpu_ms_per_verification']:>19}")


def judge(results, levels, profile):
    """Speed-ups over the naive server, the idle-machine estimate and the goals, into `results`."""
    best = max(row["verifications_per_s"] for row in results["service"])
    best_naive = max(row["verifications_per_s"] for row in results["naive"])
    one = next(row for row in results["service"] if row["clients"] == levels[0])
    one_naive = next(row for row in results["naive"] if row["clients"] == levels[0])
    results["speedup_throughput"] = round(best / best_naive, 1)
    results["speedup_p50_one_client"] = round(one_naive["p50_ms"] / one["p50_ms"], 1)
    cpu = results["service"][-1]
    results["idle_machine_estimate_per_s"] = round(
        1000 * os.cpu_count() / (cpu["server_cpu_ms_per_verification"] + cpu["client_cpu_ms_per_verification"]))
    goals = FACE_GOALS if profile.detector else GOALS
    results["goals"] = {
        "verifications_per_s": {"goal": goals["verifications_per_s"], "got": best,
                                "met": best >= goals["verifications_per_s"]},
        "p50_ms_one_client": {"goal": goals["p50_ms_one_client"], "got": one["p50_ms"],
                              "met": one["p50_ms"] <= goals["p50_ms_one_client"]},
        "worker_rss_mb": {"goal": goals["worker_rss_mb"], "got": max(results["worker_rss_mb"]),
                          "met": max(results["worker_rss_mb"]) <= goals["worker_rss_mb"]},
    }
    return one


def compare_dlib(results, images, one):
    """face_recognition's dlib pipeline on the same two images, against our p50 at one client."""
    decoded = [cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_UNCHANGED) for image in images]
    results["dlib_ms_per_verification"] = round(dlib_face.time_verification(*decoded), 1)
    ratio = round(results["dlib_ms_per_verification"] / one["p50_ms"], 1)
    results["goals"]["faster_than_dlib"] = {"goal": DLIB_SPEEDUP_GOAL, "got": ratio, "met": ratio >= DLIB_SPEEDUP_GOAL}
    print(f"face_recognition's dlib pipeline, same two images, one thread, in-process: "
          f"{results['dlib_ms_per_verification']} ms a verification ({ratio}x our p50 at 1 client)")


def print_summary(results, levels):
    cpu = results["service"][-1]
    print(f"speed-up over model.predict per request: {results['speedup_throughput']}x throughput, "
          f"{results['speedup_p50_one_client']}x p50 at {levels[0]} client(s)")
    print(f"CPU per verification at {cpu['clients']} clients: server {cpu['server_cpu_ms_per_verification']} ms + "
          f"client {cpu['client_cpu_ms_per_verification']} ms -> about {results['idle_machine_estimate_per_s']} "
          f"verifications/s if this machine's {os.cpu_count()} CPUs did nothing else")
    print(f"gunicorn worker RSS (MB): {results['worker_rss_mb']}; naive server RSS {results['naive_rss_mb']} MB")
    for goal, check in results["goals"].items():
        print(f"goal {goal}: {check['got']} vs {check['goal']} -> {'met' if check['met'] else 'NOT met'}")


def benchmark(args, meta, profile, images, service, port, naive, naive_port):
    """Warm both servers up, load them at every level, judge the results and print them; returns the results."""
    body, headers = multipart(images)
    levels = [int(c) for c in args.clients.split(",")]
    results = {"bundle": meta["bundle_id"], "machine": machine.describe(), "service": [], "naive": []}
    load(port, body, headers, 50, 2)  # warm-up, not counted
    load(naive_port, body, headers, 4, 1)
    results["load_average_before"] = [round(x, 2) for x in os.getloadavg()]
    print(f"bundle {meta['bundle_id']} ({meta['profile']['name']}), {args.workers} workers x {args.threads} "
          f"threads, {machine.summary(results['machine'])}, client on the same machine, load average "
          f"{results['load_average_before'][0]} before (other work competes for the CPUs)")
    measure((("service", port, args.requests, service.pid), ("naive", naive_port, args.naive_requests, naive.pid)),
            body, headers, levels, results)
    results["worker_rss_mb"] = [rss for rss in map(rss_mb, children(service.pid)) if rss is not None]
    results["naive_rss_mb"] = rss_mb(naive.pid)
    one = judge(results, levels, profile)
    if profile.detector and dlib_face.available():
        compare_dlib(results, images, one)
    print_summary(results, levels)
    return results


def main():
    args = build_parser().parse_args()
    bundle = Path(args.bundle).resolve()
    try:
        meta = read_meta(bundle)
    except VerifierError as exc:
        sys.exit(f"error: {exc.message}")
    profile = Profile.from_dict(meta["profile"])
    images = payload_images(profile)
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="bench-serve-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with running([sys.executable, "-m", "verifier", "serve", "--bundle", str(bundle), "--port", str(port),
                  "--workers", str(args.workers), "--threads", str(args.threads)],
                 log_dir / "service.log", port, "/readyz") as service:
        naive_port = free_port()
        with running([sys.executable, str(ROOT / "bench" / "naive_server.py"), "--bundle", str(bundle),
                      "--port", str(naive_port)], log_dir / "naive.log", naive_port, "/healthz") as naive:
            results = benchmark(args, meta, profile, images, service, port, naive, naive_port)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
