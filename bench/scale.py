#!/usr/bin/env python3
"""Gatehouse with very many routes: memory at rest and per route, a reload's peak, edit to
live, `validate`'s time and memory, and a /metrics scrape after traffic touched every route.

    bench/scale.py [--routes 100000] [--services 1000] [--bin target/release/gatehouse]
                   [--metrics "{max_routes: 1000}"] [--reloads 5]

Half the routes are prefixes (`/p123/*`), half RESTful (`/u123/{id}/orders`), over
`--services` services on one upstream: an nginx origin answering 200 (as peers.sh starts it),
or, without nginx, a port nothing listens on (502s are counted the same). Traffic comes from
wrk (one pass over every route). Needs wrk; prints one Markdown table for bench/RESULTS.md.
RSS is read from /proc: VmRSS at rest, VmHWM for a reload's peak after resetting it through
/proc/PID/clear_refs.
"""

import argparse
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request

from benchlib import free_port

HERE = os.path.dirname(os.path.abspath(__file__))




def config(n_routes, n_services, origin, metrics, extra_route=""):
    lines = [
        "upstreams:",
        f'  - {{name: origin, targets: [{{address: "127.0.0.1:{origin}"}}]}}',
        "services:",
    ]
    lines += [f"  - {{name: s{i}, upstream: origin}}" for i in range(n_services)]
    lines.append("routes:")
    for i in range(n_routes):
        path = f"/p{i}/*" if i % 2 == 0 else f"/u{i}/{{id}}/orders"
        lines.append(f'  - {{name: r{i}, paths: ["{path}"], service: s{i % n_services}}}')
    if extra_route:
        lines.append(extra_route)
    lines.append(f"observability:\n  metrics: {metrics}")
    return "\n".join(lines) + "\n"


def status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def get(url, timeout=5.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return None, b""


def wait_ready(admin, deadline_s=120):
    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        if get(f"http://{admin}/ready", 1.0)[0] == 200:
            return time.monotonic() - start
        time.sleep(0.05)
    raise SystemExit("gateway never became ready")


def start_origin(tmp):
    if not shutil.which("nginx"):
        return free_port(), None
    port = free_port()
    conf = os.path.join(tmp, "origin.conf")
    with open(conf, "w") as f:
        f.write(
            f"""worker_processes 1; pid {tmp}/origin.pid; error_log {tmp}/origin-error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok"; }} }} }}
"""
        )
    p = subprocess.Popen(["nginx", "-c", conf, "-g", "daemon off;"])
    time.sleep(0.3)
    return port, p


def run(args):
    tmp = tempfile.mkdtemp(prefix="gatehouse-scale.")
    origin, origin_proc = start_origin(tmp)
    cfg = os.path.join(tmp, "gateway.yaml")
    rows = []
    try:
        # validate first, alone: its peak RSS is what RUSAGE_CHILDREN reports.
        with open(cfg, "w") as f:
            f.write(config(args.routes, args.services, origin, args.metrics))
        size = os.path.getsize(cfg)
        t0 = time.monotonic()
        v = subprocess.run([args.bin, "validate", "-c", cfg], capture_output=True, text=True)
        took = time.monotonic() - t0
        if v.returncode != 0:
            raise SystemExit(f"validate failed:\n{v.stdout}{v.stderr}")
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        rows.append(("config file", f"{size / 1e6:.1f} MB"))
        rows.append(("`validate`: time, peak RSS", f"{took:.2f} s, {peak / 1e6:.0f} MB"))

        base = gateway_rss(args, tmp, origin, 1)
        proc, admin, listen = start_gateway(args, cfg)
        try:
            ready = wait_ready(admin)
            time.sleep(2)
            rest = status(proc.pid, "VmRSS")
            rows.append(("start to ready", f"{ready:.2f} s"))
            rows.append(("RSS at rest (1 route)", f"{base / 1e6:.0f} MB"))
            rows.append(("RSS at rest", f"{rest / 1e6:.0f} MB"))
            rows.append(("per route", f"{(rest - base) / args.routes:.0f} B"))

            # Reloads: reset the peak, edit (a route more each time), time until the new
            # route answers. Several, since one figure on a noisy machine says little.
            with open(f"/proc/{proc.pid}/clear_refs", "w") as f:
                f.write("5")
            lives = []
            for n in range(args.reloads):
                new = f'  - {{name: fresh{n}, paths: ["/fresh-route-{n}"], service: s0}}'
                with open(cfg + ".tmp", "w") as f:
                    f.write(config(args.routes, args.services, origin, args.metrics, new))
                t0 = time.monotonic()
                os.replace(cfg + ".tmp", cfg)
                while get(f"http://{listen}/fresh-route-{n}", 1.0)[0] in (404, None):
                    if time.monotonic() - t0 > 60:
                        raise SystemExit("the edit never went live")
                    time.sleep(0.01)
                lives.append(time.monotonic() - t0)
                time.sleep(2)
            reload_peak = status(proc.pid, "VmHWM")
            after = status(proc.pid, "VmRSS")
            lives.sort()
            rows.append(
                (
                    f"edit to live ({args.reloads} edits: median; all)",
                    f"{lives[len(lives) // 2]:.2f} s; " + ", ".join(f"{x:.2f}" for x in lives),
                )
            )
            rows.append(
                ("reload peak RSS", f"{reload_peak / 1e6:.0f} MB ({reload_peak / rest:.2f}× rest)")
            )
            rows.append(("RSS after the reload", f"{after / 1e6:.0f} MB"))

            sent = touch_every_route(args, listen, tmp)
            rows.append(("requests to touch every route", f"{sent}"))
            t0 = time.monotonic()
            code, body = get(f"http://{admin}/metrics", 60)
            took = time.monotonic() - t0
            if code != 200:
                raise SystemExit(f"/metrics answered {code}")
            series = sum(1 for l in body.splitlines() if l and not l.startswith(b"#"))
            rows.append(
                (
                    f"/metrics after traffic on every route (`{args.metrics}`)",
                    f"{len(body) / 1e6:.2f} MB, {series} series, {took:.2f} s",
                )
            )
            rows.append(("RSS after traffic", f"{status(proc.pid, 'VmRSS') / 1e6:.0f} MB"))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    finally:
        if origin_proc:
            origin_proc.terminate()
            origin_proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"| {args.routes} routes, {args.services} services | |")
    print("| --- | --- |")
    for k, v in rows:
        print(f"| {k} | {v} |")


def start_gateway(args, cfg):
    admin = f"127.0.0.1:{free_port()}"
    listen = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [args.bin, "run", "-c", cfg, "--listen", listen, "--admin", admin, "--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, admin, listen


def gateway_rss(args, tmp, origin, n):
    cfg = os.path.join(tmp, "small.yaml")
    with open(cfg, "w") as f:
        f.write(config(n, 1, origin, args.metrics))
    proc, admin, _ = start_gateway(args, cfg)
    try:
        wait_ready(admin)
        time.sleep(2)
        return status(proc.pid, "VmRSS")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def touch_every_route(args, listen, tmp):
    """One pass over every route with wrk: each of 2 threads takes every other route."""
    script = os.path.join(tmp, "touch.lua")
    with open(script, "w") as f:
        f.write(
            f"""
local n = {args.routes}
local threads = 0
function setup(thread) thread:set("id", threads); threads = threads + 1 end
function init(a) i = id end
function request()
  local r = i % n
  i = i + 2
  if r % 2 == 0 then return wrk.format("GET", "/p" .. r .. "/x") end
  return wrk.format("GET", "/u" .. r .. "/7/orders")
end
"""
        )
    # A bounded run long enough for one pass at a few thousand requests per second.
    secs = max(10, args.routes // 4000)
    out = subprocess.run(
        ["wrk", "-t2", "-c16", f"-d{secs}s", "-s", script, f"http://{listen}/"],
        capture_output=True,
        text=True,
    ).stdout
    for line in out.splitlines():
        if "requests in" in line:
            return int(line.split()[0])
    raise SystemExit(f"wrk said:\n{out}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--routes", type=int, default=100_000)
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--bin", default=os.path.join(HERE, "..", "target", "release", "gatehouse"))
    p.add_argument("--metrics", default="{}")
    p.add_argument("--reloads", type=int, default=5)
    run(p.parse_args())


if __name__ == "__main__":
    main()
