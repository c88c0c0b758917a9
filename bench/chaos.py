#!/usr/bin/env python3
"""Chaos under load: the real binary behind bounded concurrent GET load, while things break.

    bench/chaos.py [--bin target/release/gatehouse] [--clients 16] [--reloads 100]

Phases, each under load from `--clients` keep-alive clients sending GETs back to back, each
reported with its requests and failures (a failure: anything but a 200, a reset, a timeout):

1. reloads: the config file is rewritten and SIGHUP sent `--reloads` times, a changed
   response header each time; the last one must be what answers.
2. target killed: one of three origins (nginx, one process each) is killed with SIGKILL and
   started again two seconds later; connect failures and resets are retried onto the others.
3. Redis killed: the route's `rate-limit` counts in Redis (`policy: redis`, a limit no run
   reaches); redis-server is killed with SIGKILL and started again two seconds later. While
   it is gone the limit falls back to counting on the node; no request may fail for it.
4. restart: SIGUSR2, the node hands its sockets to a new process and drains.
5. PostgreSQL killed: a second node keeps its config in a PostgreSQL of its own (initdb in a
   temporary directory, run as the `postgres` user); PostgreSQL is stopped (`-m immediate`),
   the node is restarted with SIGUSR2 while it is down (the new process serves from its
   on-disk snapshot), then PostgreSQL comes back.

Loopback only; every phase is bounded in time. Needs nginx, redis-server and PostgreSQL's
server binaries (Debian's postgresql). The goal for GET is zero failed
requests in every phase.
"""

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from benchlib import free_port, wait_port

HERE = os.path.dirname(os.path.abspath(__file__))






def start_redis(port):
    p = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                          "--save", "", "--appendonly", "no"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return p


def start_origin(d, port, name):
    conf = os.path.join(d, f"{name}.conf")
    with open(conf, "w") as f:
        f.write(f"""master_process off;
daemon off;
worker_processes 1;
pid {d}/{name}.pid;
error_log {d}/{name}-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port} reuseport;
    location / {{ return 200 "{name}"; }}
  }}
}}
""")
    p = subprocess.Popen(["nginx", "-c", conf])
    wait_port(port)
    return p


def config(port, origins, mark, redis):
    targets = ", ".join(f'{{address: "127.0.0.1:{o}"}}' for o in origins)
    return f"""listen: [{{address: "127.0.0.1:{port}"}}]
redis: "redis://127.0.0.1:{redis}"
node: {{workers: 2}}
upstreams:
  - name: origins
    targets: [{targets}]
    health:
      passive: {{consecutive_failures: 1, base_ejection: 5s, max_ejection_percent: 50}}
services:
  - name: s
    upstream: origins
    retries: 2
    retry: {{on: [connect_failure, reset, 502, 503], methods: [GET]}}
routes:
  - {{name: all, paths: ["/*"], service: s}}
plugins:
  - name: response-transformer
    route: all
    config: {{headers: {{set: {{x-config: "{mark}"}}}}}}
  - name: rate-limit
    route: all
    config: {{limit: 1000000000, window: 1s, key: ip, policy: redis}}
"""


class Load:
    def __init__(self, port, clients):
        self.port, self.clients = port, clients
        self.ok = self.failed = 0
        self.last_mark = None
        self.stop = False
        self.errors = {}

    async def one(self, reader, writer):
        writer.write(b"GET /x HTTP/1.1\r\nHost: chaos\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        fields = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                fields[k.strip().lower()] = v.strip()
        await reader.readexactly(int(fields.get("content-length", "0")))
        return status, fields

    async def client(self):
        while not self.stop:
            try:
                r, w = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.port), 5)
            except Exception as e:
                self.fail(e)
                await asyncio.sleep(0.05)
                continue
            while not self.stop:
                try:
                    status, fields = await asyncio.wait_for(self.one(r, w), 10)
                except Exception as e:
                    self.fail(e)
                    break
                if status != 200:
                    self.fail(f"status {status}")
                else:
                    self.ok += 1
                    self.last_mark = fields.get("x-config")
                if fields.get("connection", "").lower() == "close":
                    break
            w.close()

    def fail(self, e):
        self.failed += 1
        key = type(e).__name__ if isinstance(e, Exception) else str(e)
        self.errors[key] = self.errors.get(key, 0) + 1

    def snapshot(self):
        return self.ok, self.failed, dict(self.errors)


def pg_bin(name):
    base = "/usr/lib/postgresql"
    versions = sorted(os.listdir(base)) if os.path.isdir(base) else []
    if not versions:
        raise SystemExit("needs PostgreSQL (apt-get install -y postgresql)")
    return os.path.join(base, versions[-1], "bin", name)


def as_postgres(args):
    return subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c", " ".join(args)],
                          check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Postgres:
    """A PostgreSQL of the script's own, on a free port, trust auth on loopback."""

    def __init__(self, d):
        self.dir = os.path.join(d, "pg")
        os.chmod(d, 0o711)  # mkdtemp's 0700 would keep the postgres user out
        os.makedirs(self.dir)
        shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        as_postgres([pg_bin("initdb"), "-D", self.dir, "-A", "trust", "-U", "postgres"])
        self.start()

    def start(self):
        as_postgres([pg_bin("pg_ctl"), "-D", self.dir, "-w", "-l", self.dir + "/log",
                     "-o", f"'-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1'",
                     "start"])

    def stop(self):
        as_postgres([pg_bin("pg_ctl"), "-D", self.dir, "-m", "immediate", "-w", "stop"])


def wait_ok(port, within=30.0):
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=1)
            s.sendall(b"GET /x HTTP/1.1\r\nHost: chaos\r\nConnection: close\r\n\r\n")
            if s.recv(64).startswith(b"HTTP/1.1 200"):
                s.close()
                return
            s.close()
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the node on {port} never answered 200")


async def wait_exit(pid, within=30.0):
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as f:
                if ") Z " in f.read():
                    return
        except (ProcessLookupError, FileNotFoundError):
            return
        await asyncio.sleep(0.1)


async def store_phase(args, d, ports, redis_port):
    """Phase 5, on a store-mode node of its own."""
    pg = Postgres(d)
    port, admin = free_port(), free_port()
    data = os.path.join(d, "node-data")
    node = subprocess.Popen(
        [args.bin, "run", "--store", f"postgres://postgres@127.0.0.1:{pg.port}/postgres",
         "--data-dir", data, "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}",
         "--redis", f"redis://127.0.0.1:{redis_port}"],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "store-node.log"), "w"),
        env=dict(os.environ, GATEHOUSE_LOG="warn"))
    try:
        wait_port(admin)
        cfg = os.path.join(d, "store.yaml")
        with open(cfg, "w") as f:
            f.write(config(port, ports, "store", redis_port).split("\n", 1)[1])
        applied = subprocess.run([args.bin, "config", "apply", "-f", cfg, "--yes",
                                  "--admin", f"http://127.0.0.1:{admin}"],
                                 capture_output=True, text=True)
        if applied.returncode != 0:
            raise SystemExit(f"config apply failed: {applied.stderr}{applied.stdout}")
        wait_ok(port)
        load = Load(port, args.clients)
        tasks = [asyncio.create_task(load.client()) for _ in range(args.clients)]
        await asyncio.sleep(1.0)

        async def kill_pg():
            pg.stop()
            await asyncio.sleep(2.0)
            os.kill(node.pid, signal.SIGUSR2)
            await wait_exit(node.pid)
            await asyncio.sleep(1.0)
            pg.start()
            await asyncio.sleep(1.0)

        row = await phase(load, "PostgreSQL (config store) killed; node restarted while it is down",
                          kill_pg)
        load.stop = True
        await asyncio.gather(*tasks, return_exceptions=True)
        return row
    finally:
        subprocess.run(["pkill", "-f", data], check=False)
        node.wait(10)
        try:
            pg.stop()
        except subprocess.CalledProcessError:
            pass


async def phase(load, name, action):
    ok0, failed0, err0 = load.snapshot()
    t = time.time()
    await action()
    await asyncio.sleep(1.0)
    ok1, failed1, err1 = load.snapshot()
    errors = {k: v - err0.get(k, 0) for k, v in err1.items() if v - err0.get(k, 0)}
    return (name, ok1 - ok0, failed1 - failed0, errors, time.time() - t)


async def run(args, d):
    port = free_port()
    ports = [free_port() for _ in range(3)]
    origins = [start_origin(d, p, f"o{i}") for i, p in enumerate(ports)]
    redis_port = free_port()
    redis = [start_redis(redis_port)]
    cfg = os.path.join(d, "gateway.yaml")
    with open(cfg, "w") as f:
        f.write(config(port, ports, "0", redis_port))
    gw = subprocess.Popen([args.bin, "run", "-c", cfg, "--admin", "127.0.0.1:0"],
                          stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "gw.log"), "w"),
                          env=dict(os.environ, GATEHOUSE_LOG="warn"))
    wait_port(port)
    load = Load(port, args.clients)
    tasks = [asyncio.create_task(load.client()) for _ in range(args.clients)]
    await asyncio.sleep(1.0)
    rows = []
    serving = [gw.pid]

    async def reloads():
        for i in range(1, args.reloads + 1):
            with open(cfg + ".tmp", "w") as f:
                f.write(config(port, ports, str(i), redis_port))
            os.replace(cfg + ".tmp", cfg)
            os.kill(serving[0], signal.SIGHUP)
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)
        if load.last_mark != str(args.reloads):
            load.fail(f"last reload not serving (x-config {load.last_mark})")

    async def kill_target():
        origins[1].kill()
        origins[1].wait()
        await asyncio.sleep(2.0)
        origins[1] = start_origin(d, ports[1], "o1")

    async def kill_redis():
        redis[0].kill()
        redis[0].wait()
        await asyncio.sleep(2.0)
        redis[0] = start_redis(redis_port)
        await asyncio.sleep(1.0)

    async def restart():
        os.kill(serving[0], signal.SIGUSR2)
        old = serving[0]
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                os.kill(old, 0)
                with open(f"/proc/{old}/stat") as f:
                    if ") Z " in f.read():
                        break
            except (ProcessLookupError, FileNotFoundError):
                break
            await asyncio.sleep(0.1)

    try:
        rows.append(await phase(load, f"{args.reloads} config reloads", reloads))
        rows.append(await phase(load, "one of three targets killed, restarted 2 s later", kill_target))
        rows.append(await phase(load, "Redis (policy: redis limit) killed, restarted 2 s later", kill_redis))
        rows.append(await phase(load, "restart (SIGUSR2) of the node", restart))
        load.stop = True
        await asyncio.gather(*tasks, return_exceptions=True)
        rows.append(await store_phase(args, d, ports, redis_port))
    finally:
        load.stop = True
        await asyncio.gather(*tasks, return_exceptions=True)
        subprocess.run(["pkill", "-f", cfg], check=False)
        gw.wait(10)
        for o in origins + redis:
            o.kill()
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(HERE, "..", "target", "release", "gatehouse"))
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--reloads", type=int, default=100)
    args = ap.parse_args()
    if shutil.which("nginx") is None:
        raise SystemExit("needs nginx (apt-get install -y nginx)")
    d = tempfile.mkdtemp(prefix="chaos.")
    try:
        rows = asyncio.run(run(args, d))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    print("| phase | GET requests | failed | failures by kind | seconds |")
    print("|---|---|---|---|---|")
    failed = 0
    for name, ok, bad, errors, secs in rows:
        failed += bad
        print(f"| {name} | {ok} | {bad} | {errors or '-'} | {secs:.1f} |")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
