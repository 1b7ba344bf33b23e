"""Fault benchmark: soak, a worker SIGKILLed under load, PostgreSQL stopped and restarted mid-traffic.

    python bench/faults.py [--bundle bundles/face] [--soak-minutes 10] [--clients 4]
                           [--kill-seconds 30] [--worker-max-requests 0] [--postgres] [--pg-down-seconds 5]
                           [--skip soak,kill]

Everything runs on loopback, in this run, against the real service (`python -m verifier serve`,
gunicorn), with two ORL faces as payload (bench/serve.py's helpers); every phase is bounded in
time, and every request has a timeout.

1. soak: `--clients` threads on POST /v1/verify for `--soak-minutes`; worker RSS (sum and each,
   from /proc) and p50/p99 over the first and the last minute, and the error count. gunicorn's
   worker recycling (VERIFIER_MAX_REQUESTS, 1000 by default) is off here unless
   --worker-max-requests says otherwise, so that the RSS at the end is that of the same processes.
2. kill: the same load; one gunicorn worker (a child of the master) is SIGKILLed; failed requests
   (against the requests in flight at that moment), the time until no request fails any more,
   and whether gunicorn replaced the worker (the master has as many children again, a new pid).
3. postgres (`--postgres`): a throwaway PostgreSQL server the way .ci/postgres.sh starts one
   (a temp data dir, a free port, run as the postgres user when root); the service on it
   (DATABASE_URL); create-and-enroll traffic (POST /v1/subjects, then POST
   /v1/subjects/<id>/templates with both images); `pg_ctl stop -m fast`, `--pg-down-seconds`
   down, start again; 503s while down, the first 201 after the restart, and then the store
   counted with psql: every 201's template ids present, no subject with a partial batch.

The last line is one JSON object. Servers are stopped at the end, whatever happens.
"""

import argparse
import glob
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.serve import (
    ROOT,
    children,
    free_port,
    load,
    multipart,
    payload_images,
    rss_mb,
    stop,
    wait_until,
)
from verifier.core.bundle import read_meta
from verifier.core.errors import VerifierError
from verifier.core.profiles import Profile
from verifier.settings import DEFAULT_BUNDLE

TIMEOUT = 30  # seconds, every request


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", default=DEFAULT_BUNDLE)
    parser.add_argument("--soak-minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4, help="client threads")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kill-seconds", type=float, default=30.0, help="load after the SIGKILL")
    parser.add_argument("--postgres", action="store_true", help="run the PostgreSQL phase")
    parser.add_argument("--pg-down-seconds", type=float, default=5.0)
    parser.add_argument("--pg-before-seconds", type=float, default=10.0, help="enroll traffic before the stop")
    parser.add_argument("--pg-after-seconds", type=float, default=15.0, help="enroll traffic after the restart")
    parser.add_argument("--worker-max-requests", type=int, default=0,
                        help="VERIFIER_MAX_REQUESTS for the soak's service: 0 (default) turns gunicorn's worker "
                             "recycling off so that RSS compares the same processes; -1 keeps the service's own")
    parser.add_argument("--max-requests", type=int, default=200000, help="cap on requests in any one phase")
    parser.add_argument("--skip", default="", help="phases to skip, comma-separated: soak,kill")
    parser.add_argument("--log-dir", default=None)
    return parser


def serve(args, bundle, port, log_path, env):
    argv = [sys.executable, "-m", "verifier", "serve", "--bundle", str(bundle), "--port", str(port),
            "--workers", str(args.workers), "--threads", str(args.threads), "--create-store"]
    with open(log_path, "w") as log:
        process = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **env))
    try:
        wait_until(port, "/readyz", process, log_path)
    except BaseException:
        stop(process)
        raise
    return process


class Load:
    """Client threads, each on its own keep-alive connection, until stopped (or `cap` requests).

    `request(conn, i)` sends one request and returns the status; an exception counts as status 0.
    Every request is recorded as (start, end, status) on the monotonic clock.
    """

    def __init__(self, port, clients, request, cap):
        self.port, self.request, self.cap = port, request, cap
        self.records, self.lock, self.done = [], threading.Lock(), threading.Event()
        self.in_flight = [None] * clients  # start time of each client's open request
        self.counter = 0
        self.threads = [threading.Thread(target=self._client, args=(k,), daemon=True) for k in range(clients)]

    def _next(self):
        with self.lock:
            self.counter += 1
            return self.counter if self.counter <= self.cap else None

    def _client(self, k):
        conn = None
        while not self.done.is_set():
            i = self._next()
            if i is None:
                return
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
            t0 = time.monotonic()
            self.in_flight[k] = t0
            try:
                status = self.request(conn, i)
            except (OSError, http.client.HTTPException):
                status = 0
                conn.close()
                conn = None
            self.in_flight[k] = None
            with self.lock:
                self.records.append((t0, time.monotonic(), status))
            if status == 0:
                time.sleep(0.05)  # a refused connection must not spin
        if conn is not None:
            conn.close()

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        for thread in self.threads:
            thread.join(TIMEOUT + 5)

    def snapshot(self):
        with self.lock:
            return list(self.records)


def verify_request(body, headers):
    def send(conn, _):
        conn.request("POST", "/v1/verify", body, headers)
        response = conn.getresponse()
        response.read()
        return response.status
    return send


def window(records, t0, t1):
    """p50/p99 (ms), requests and errors of the requests that started in [t0, t1)."""
    rows = [r for r in records if t0 <= r[0] < t1]
    ms = np.asarray([(end - start) * 1000 for start, end, status in rows if status == 200])
    return {"requests": len(rows), "errors": sum(1 for r in rows if r[2] != 200),
            "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None}


def worker_rss(master):
    per = {pid: rss_mb(pid) for pid in children(master)}
    return {"sum_mb": round(sum(v for v in per.values() if v), 1), "per_worker_mb": list(per.values())}


def soak(args, service, port, send):
    seconds = args.soak_minutes * 60
    minute = min(60.0, seconds)
    print(f"soak: {args.clients} clients on /v1/verify for {seconds:.0f} s")
    with Load(port, args.clients, send, args.max_requests) as load:
        t0 = time.monotonic()
        seen = set(children(service.pid))
        while time.monotonic() < t0 + minute:
            time.sleep(0.5)
            seen |= set(children(service.pid))
        rss_first = worker_rss(service.pid)
        while time.monotonic() < t0 + seconds:
            time.sleep(0.5)
            seen |= set(children(service.pid))
        rss_last = worker_rss(service.pid)
        t1 = time.monotonic()
    records = load.snapshot()
    first, last = window(records, t0, t0 + minute), window(records, t1 - minute, t1)
    total = window(records, t0, t1 + TIMEOUT)
    print(f"  first minute: p50 {first['p50_ms']} ms, p99 {first['p99_ms']} ms, {first['requests']} requests, "
          f"{first['errors']} errors; worker RSS sum {rss_first['sum_mb']} MB {rss_first['per_worker_mb']}")
    print(f"  last minute:  p50 {last['p50_ms']} ms, p99 {last['p99_ms']} ms, {last['requests']} requests, "
          f"{last['errors']} errors; worker RSS sum {rss_last['sum_mb']} MB {rss_last['per_worker_mb']}")
    print(f"  whole soak: {total['requests']} requests ({total['requests'] / (t1 - t0):.1f}/s), "
          f"{total['errors']} errors; {len(seen)} worker pids seen ({len(seen) - args.workers} restarts)")
    return {"worker_restarts": len(seen) - args.workers, "seconds": round(t1 - t0, 1), "clients": args.clients, "first_minute": first | {"rss": rss_first},
            "last_minute": last | {"rss": rss_last}, "requests": total["requests"], "errors": total["errors"]}


def kill(args, service, port, send):
    before = children(service.pid)
    print(f"kill: {args.clients} clients on /v1/verify; workers {before}; SIGKILL {before[0]} after 5 s")
    with Load(port, args.clients, send, args.max_requests) as load:
        time.sleep(5)
        in_flight = sum(1 for t in load.in_flight if t is not None)
        killed_at = time.monotonic()
        os.kill(before[0], signal.SIGKILL)
        replaced_s, after = None, before
        deadline = killed_at + args.kill_seconds
        while time.monotonic() < deadline:
            after = children(service.pid)
            if replaced_s is None and len(after) == len(before) and before[0] not in after:
                replaced_s = round(time.monotonic() - killed_at, 2)
            time.sleep(0.1)
    records = load.snapshot()
    failed = [r for r in records if r[2] != 200]
    failed_after = [r for r in records if r[2] != 200 and r[1] >= killed_at]
    last_failure = max((r[1] for r in failed_after), default=None)
    ok_after = [r for r in records if r[2] == 200 and r[0] >= (last_failure or killed_at)]
    normal_s = round((min(r[1] for r in ok_after) if ok_after else float("nan")) - killed_at, 2)
    replaced = len(after) == len(before) and before[0] not in after
    new = sorted(set(after) - set(before))
    log = (Path(args.log_dir_path) / "service.log").read_text()
    ready = [pid for pid in new if f"worker {pid}: bundle" in log]
    statuses = sorted({r[2] for r in failed})
    print(f"  failed requests: {len(failed)} (statuses {statuses}; {in_flight} requests in flight at the kill, "
          f"across all workers), out of {len(records)}")
    print(f"  answering normally again {normal_s} s after the kill (first 200 after the last failure); "
          f"replacement worker {'up' if replaced else 'NOT seen'}"
          f"{f' after {replaced_s} s' if replaced_s is not None else ''}; workers now {after}, "
          f"new {new} of which {ready} logged their bundle ready")
    return {"workers_before": before, "workers_after": after, "killed": before[0], "replaced": replaced,
            "replaced_after_s": replaced_s, "new_workers_ready": ready, "in_flight_at_kill": in_flight, "failed": len(failed),
            "failed_statuses": statuses, "requests": len(records), "normal_after_s": normal_s,
            "only_in_flight_failed": len(failed) <= in_flight}


# -- PostgreSQL -------------------------------------------------------------------------------

class Postgres:
    """A throwaway server as .ci/postgres.sh starts one: temp data dir, loopback, trust, free port."""

    def __init__(self):
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                       key=lambda p: [int(x) for x in p.split("/")[4].split(".") if x.isdigit()])
        if not found:
            raise RuntimeError("no /usr/lib/postgresql/*/bin/initdb (apt-get install postgresql)")
        self.bin = Path(found[-1]).parent
        self.dir = Path(tempfile.mkdtemp(prefix="verifier-pg-"))
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/verifier_faults"

    def sh(self, command):
        argv = (["su", "postgres", "-s", "/bin/sh", "-c", command] if os.geteuid() == 0 else ["sh", "-c", command])
        return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120)

    def init(self):
        self.sh(f"{self.bin}/initdb -D {self.dir}/data -U postgres --auth=trust -E UTF8")
        self.start()
        self.sh(f"{self.bin}/createdb -h 127.0.0.1 -p {self.port} -U postgres verifier_faults")

    def start(self):
        self.sh(f"{self.bin}/pg_ctl -D {self.dir}/data -l {self.dir}/log -w "
                f"-o '-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1' start")

    def stop(self):
        self.sh(f"{self.bin}/pg_ctl -D {self.dir}/data -w stop -m fast")

    def query(self, sql):
        out = self.sh(f"{self.bin}/psql -h 127.0.0.1 -p {self.port} -U postgres -d verifier_faults -At -F '|' "
                      f"-c \"{sql}\"").stdout
        return [line.split("|") for line in out.splitlines() if line]

    def cleanup(self):
        try:
            self.stop()
        except (subprocess.SubprocessError, OSError):
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


def enroll_request(images, outcomes, lock):
    """Create subject f-<i>, then enroll both images into it; the enroll's outcome is recorded."""
    body, headers = multipart(images)
    body = body.replace(b'name="image_a"', b'name="image"').replace(b'name="image_b"', b'name="image"')

    def send(conn, i):
        subject = f"f-{i:06d}"
        conn.request("POST", "/v1/subjects", json.dumps({"id": subject}), {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        if response.status != 201:
            with lock:
                outcomes.append((time.monotonic(), subject, "create", response.status, None))
            return response.status
        conn.request("POST", f"/v1/subjects/{subject}/templates", body, headers)
        response = conn.getresponse()
        data = response.read()
        ids = json.loads(data).get("template_ids") if response.status == 201 else None
        with lock:
            outcomes.append((time.monotonic(), subject, "enroll", response.status, ids))
        return response.status
    return send


def postgres_phase(args, bundle, images, log_dir):
    pg = Postgres()
    service = None
    try:
        pg.init()
        port = free_port()
        service = serve(args, bundle, port, log_dir / "service-pg.log", {"DATABASE_URL": pg.url})
        outcomes, lock = [], threading.Lock()
        send = enroll_request(images, outcomes, lock)
        clients = args.clients
        print(f"postgres: {clients} clients create + enroll (2 images) against PostgreSQL {pg.bin.parent.name} "
              f"on port {pg.port}; stop after {args.pg_before_seconds:.0f} s for {args.pg_down_seconds:.0f} s")
        with Load(port, clients, send, args.max_requests) as load:
            time.sleep(args.pg_before_seconds)
            stop_at = time.monotonic()
            pg.stop()
            down_at = time.monotonic()
            time.sleep(args.pg_down_seconds)
            up_begin = time.monotonic()
            pg.start()
            up_at = time.monotonic()
            time.sleep(args.pg_after_seconds)
        records = load.snapshot()
        time.sleep(1)
        stop(service)
        service = None
        def by_status(rows):  # {"create 503": n, "enroll 201": n, ...}
            keys = sorted({(r[2], r[3]) for r in rows})
            return {f"{kind} {status}": sum(1 for r in rows if (r[2], r[3]) == (kind, status)) for kind, status in keys}

        during = [o for o in outcomes if stop_at <= o[0] < up_at]
        before = [o for o in outcomes if o[0] < stop_at]
        after = [o for o in outcomes if o[0] >= up_at]
        first_ok = min((o[0] for o in after if o[3] == 201), default=None)
        recovered_s = round(first_ok - up_at, 2) if first_ok is not None else None
        after_first = [o for o in after if first_ok is not None and o[0] > first_ok]
        errors_after_recovery = sum(1 for o in after_first if o[3] not in (201,))
        # the store, counted after
        rows = pg.query("SELECT subject_id, id FROM templates")
        stored = {}
        for subject, template in rows:
            stored.setdefault(subject, set()).add(template)
        subjects = {row[0] for row in pg.query("SELECT id FROM subjects")}
        enrolled_ok = [o for o in outcomes if o[2] == "enroll" and o[3] == 201]
        lost = [o[1] for o in enrolled_ok if not set(o[4]) <= stored.get(o[1], set())]
        sizes = {o[1]: len(o[4]) for o in enrolled_ok}
        partial = [s for s, ids in stored.items() if len(ids) not in (sizes.get(s, 2), 0)]
        unanswered = [s for s in stored if s not in sizes]  # committed, but the client did not see a 201
        print(f"  before the stop: {by_status(before)}; while down ({up_at - stop_at:.1f} s, stop took "
              f"{down_at - stop_at:.1f} s, start {up_at - up_begin:.1f} s): {by_status(during)}; "
              f"after the restart: {by_status(after)}")
        print(f"  first 201 enroll {recovered_s} s after PostgreSQL was up again; "
              f"{errors_after_recovery} non-201 answers after it")
        print(f"  store after: {len(subjects)} subjects, {len(rows)} templates; {len(enrolled_ok)} enrolls answered "
              f"201: {len(lost)} with template ids missing (lost), {len(partial)} subjects with a partial batch, "
              f"{len(unanswered)} stored without a 201 seen")
        statuses_down = by_status(during)
        return {"requests": len(records), "before": by_status(before), "while_down": statuses_down,
                "after": by_status(after), "down_s": round(up_at - stop_at, 1), "recovered_after_s": recovered_s,
                "errors_after_recovery": errors_after_recovery, "subjects": len(subjects), "templates": len(rows),
                "enrolled_201": len(enrolled_ok), "lost": len(lost), "partial": len(partial),
                "stored_without_201": len(unanswered),
                "only_503_while_down": all(key.split()[1] in ("503", "201") for key in statuses_down)}
    finally:
        stop(service)
        pg.cleanup()


def main():
    args = build_parser().parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    bundle = Path(args.bundle).resolve()
    try:
        meta = read_meta(bundle)
    except VerifierError as exc:
        sys.exit(f"error: {exc.message}")
    images = payload_images(Profile.from_dict(meta["profile"]))
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="bench-faults-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    args.log_dir_path = str(log_dir)
    results = {"benchmark": "faults", "bundle": meta["bundle_id"], "workers": args.workers,
               "threads": args.threads, "cpus": os.cpu_count(), "log_dir": str(log_dir)}
    print(f"bundle {meta['bundle_id']}, {args.workers} workers x {args.threads} threads, {os.cpu_count()} CPUs, "
          f"client on the same machine; logs in {log_dir}")
    body, headers = multipart(images)
    send = verify_request(body, headers)
    if not {"soak", "kill"} <= skip:
        port = free_port()
        env = {"DATABASE_URL": f"sqlite:///{log_dir / 'faults.db'}"}
        if args.worker_max_requests >= 0:
            env["VERIFIER_MAX_REQUESTS"] = str(args.worker_max_requests)
        results["worker_max_requests"] = args.worker_max_requests
        service = serve(args, bundle, port, log_dir / "service.log", env)
        try:
            load(port, body, headers, 20, 2)  # warm-up, not counted
            if "soak" not in skip:
                results["soak"] = soak(args, service, port, send)
            if "kill" not in skip:
                results["kill"] = kill(args, service, port, send)
        finally:
            stop(service)
    if args.postgres:
        try:
            results["postgres"] = postgres_phase(args, bundle, images, log_dir)
        except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
            detail = getattr(exc, "stderr", None) or ""
            print(f"postgres phase failed: {exc} {detail[-500:]}")
            results["postgres"] = {"error": str(exc)}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
