"""Side by side, in one run: lua_shared_dict and resty.larder in the same nginx
(run by lua/bench.sh). Prints Markdown tables."""

import os
import signal
import statistics
import sys
import threading
import time

from nginxctl import Nginx, process_state, remove_cache_files, unique_name, wait_until

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
N = int(os.environ.get("BENCH_N", "1000000"))
TRIALS = int(os.environ.get("BENCH_KILL_TRIALS", "5"))


def throughput(nginx, cache):
    rows = {}
    for backend in ("shared", "larder"):
        for _ in range(RUNS):
            r = nginx.request("/t/bench", {"backend": backend, "cache": cache, "n": N}, timeout=120)
            if "error" in r:
                raise SystemExit("bench: %s: %s" % (backend, r["error"]))
            for op, v in r.items():
                rows.setdefault(op, {}).setdefault(backend, []).append(v)
    print("\n### ops/s in one worker, %d ops per run, %d runs each (median)\n" % (N, RUNS))
    print("| op | lua_shared_dict | resty.larder | larder / dict |")
    print("|---|---|---|---|")
    for op in ("get", "set", "incr"):
        s, l = statistics.median(rows[op]["shared"]), statistics.median(rows[op]["larder"])
        print("| %s | %d | %d | %.2f |" % ({"get": "get (hit)"}.get(op, op), s, l, l / s))


def mixed(nginx, cache):
    print("\n### mixed value sizes (10 B to 100 KiB), cache mostly empty, 4 MiB each\n")
    print("| | lua_shared_dict | resty.larder |")
    print("|---|---|---|")
    res = {
        b: nginx.request("/t/mixed", {"backend": b, "cache": cache, "n": 2000}, timeout=120)
        for b in ("shared", "larder")
    }
    for field, label in (
        ("sets", "sets"),
        ("no_memory", '"no memory" failures'),
        ("live_max", "most bytes live at once"),
        ("capacity", "capacity (bytes)"),
    ):
        print("| %s | %d | %d |" % (label, res["shared"][field], res["larder"][field]))


def kill_trial(nginx, backend, cache):
    """Stops the hammering worker at a random moment, probes from the other worker,
    kills the stopped one, probes again. Returns a dict of what was seen."""
    params = {"backend": backend, "cache": cache, "seconds": 3, "keys": 16, "size": 65536}

    def hammer():
        try:
            nginx.request("/t/hammer", params, timeout=10)
        except (OSError, RuntimeError):
            pass  # its worker is killed mid-request: the connection drops

    t = threading.Thread(target=hammer)
    t.start()

    def whois():
        # A request that the hammering worker accepted waits behind it: give up soon.
        try:
            pid = nginx.request("/t/whois", timeout=0.5)["pid"]
        except OSError:
            return 0
        # The name outlives a worker killed in an earlier trial: only a live one counts.
        return pid if pid in nginx.worker_pids() else 0

    pid = wait_until(whois, 10, "the hammer to start")
    time.sleep(0.3)  # let it write for a while: the stop lands wherever it is then
    os.kill(pid, signal.SIGSTOP)
    wait_until(lambda: process_state(pid) == "T", 5, "the worker to stop")
    seen = {"blocked": False, "lock_errors": False}
    probe = {"backend": backend, "cache": cache, "keys": 16, "lock_timeout_ms": 200}
    try:
        r = nginx.request("/t/verify", probe, timeout=5)
        seen["lock_errors"] = bool(r["errors"])
    except OSError:
        seen["blocked"] = True  # the other worker never answered while the writer was stopped
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: process_state(pid) in (None, "Z"), 5, "the worker to die")
    after = wait_until(
        lambda: nginx.request("/t/verify", probe, timeout=10), 20, "an answer after the kill"
    )
    seen["answered_after_kill"] = True
    seen["torn"] = after["torn"]
    t.join(timeout=15)
    return seen


def kills(nginx, cache):
    print(
        "\n### a writer stopped inside a write (SIGSTOP), then SIGKILLed; %d trials each\n" % TRIALS
    )
    print("| | lua_shared_dict | resty.larder |")
    print("|---|---|---|")
    res = {}
    for backend in ("shared", "larder"):
        trials = [kill_trial(nginx, backend, cache) for _ in range(TRIALS)]
        res[backend] = {
            "other worker blocked while the writer was stopped": sum(t["blocked"] for t in trials),
            "other worker answered, a lock wait timed out": sum(t["lock_errors"] for t in trials),
            "answered after the kill": sum(t["answered_after_kill"] for t in trials),
            "torn values read after the kill": sum(t["torn"] for t in trials),
        }
    for label in res["shared"]:
        print("| %s | %d | %d |" % (label, res["shared"][label], res["larder"][label]))


def main():
    cache = unique_name("bench")
    nginx = Nginx()
    try:
        throughput(nginx, cache)
        mixed(nginx, cache)
        kills(nginx, cache)
        log = nginx.error_log()
        print(
            '\nnginx error.log: %d "was locked by" (the master force-unlocking a dead worker\'s'
            ' zone), %d "exited on signal 9"'
            % (log.count("was locked by"), log.count("exited on signal 9"))
        )
    finally:
        nginx.close()
        remove_cache_files(cache)


if __name__ == "__main__":
    # A SIGTERM (a CI timeout, a Ctrl-C'd wrapper) unwinds like an exception, so that
    # the finally blocks and tearDowns stop nginx and remove the cache files.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
