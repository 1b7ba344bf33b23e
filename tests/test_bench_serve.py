"""bench/serve.py's CPU accounting: a server's workers count whether still running or replaced."""

import os
import signal
import subprocess
import sys
import time

from bench.serve import children, cpu_seconds

BURN = "import time\nend = time.process_time() + {seconds}\nwhile time.process_time() < end: pass\n"

# a master that runs one worker to its end (replaced, as gunicorn's max_requests does) while a
# second keeps running, then waits to be measured
MASTER = f"""
import subprocess, sys, time
subprocess.run([sys.executable, "-c", {BURN.format(seconds=0.4)!r}], check=True)
live = subprocess.Popen([sys.executable, "-c", {BURN.format(seconds=0.3)!r} + "time.sleep(60)"])
print("ready", flush=True)
time.sleep(60)
"""


def test_cpu_seconds_counts_a_reaped_worker_and_a_live_one():
    master = subprocess.Popen([sys.executable, "-c", MASTER], stdout=subprocess.PIPE, text=True)
    try:
        assert master.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 20
        while cpu_seconds(master.pid) < 0.65 and time.monotonic() < deadline:  # /proc rounds down to ticks
            time.sleep(0.05)
        assert len(children(master.pid)) == 1  # the first worker is gone: only its time remains
        # 0.4 + 0.3 s burnt and three interpreters started; a worker counted twice, or a field
        # beside the four read (the priority: 20 ticks), would pass 0.9
        assert 0.65 <= cpu_seconds(master.pid) < 0.9
    finally:
        for pid in children(master.pid):
            os.kill(pid, signal.SIGKILL)
        master.kill()
        master.wait()
        master.stdout.close()


def test_cpu_seconds_of_a_process_that_is_gone_is_zero():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    assert cpu_seconds(process.pid) == 0.0
