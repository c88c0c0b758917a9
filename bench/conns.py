#!/usr/bin/env python3
"""Client connections at scale: RSS per idle keep-alive connection, and many clients at once.

    bench/conns.py [--idle 19000] [--active 1000] [--bin target/release/gatehouse]
                   [--peers own,hyper,nginx]

For each peer (the gateway with `node.http1.server: own`, with `hyper`, and nginx's
`proxy_pass` as peers.sh configures it), in turn, in front of one nginx origin:

- idle: opens `--idle` connections, each sends one GET and reads its answer, then all stay
  open and idle; RSS (VmRSS from /proc) before and after gives KiB per idle connection and
  the figure for 100 000 connections. The hard limit on open files here is 20 000 per
  process, so 19 000 is the most one process can hold.
- active: `--active` clients at once, each on its own connection, send requests back to
  back for `--seconds`; every answer must be a 200 (errors are counted and printed).

- slow (`--slow N`, Gatehouse peers only): N connections that each sent part of a head and
  then nothing (slowloris), held at once; RSS per connection. They end at `client_timeout`
  (300 s here, 30 s by default).
- websockets (`--websockets N`, Gatehouse peers only): N WebSocket upgrades through the
  gateway to an echo origin in this process, all held open at once, each echoing a message
  after all are up. Each tunnel holds two descriptors in the gateway (client and upstream),
  so under the 20 000 limit 9 000 is about the most one process can hold.

Needs nginx. Prints one Markdown table for bench/RESULTS.md. Loopback only; every loop is
bounded in time.
"""

import argparse
import asyncio
import os
import resource
import shutil
import subprocess
import tempfile
import time

from benchlib import free_port, rss_kib, wait_port

HERE = os.path.dirname(os.path.abspath(__file__))
BODY = "hello " * 16 + "hello!!!!"










def start_origin(d):
    port = free_port()
    conf = os.path.join(d, "origin.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1;
pid {d}/origin.pid;
error_log {d}/origin-error.log;
worker_rlimit_nofile 20000;
events {{ worker_connections 19000; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{ return 200 "{BODY}"; }}
  }}
}}
""")
    p = subprocess.Popen(["nginx", "-c", conf, "-g", "daemon off;"])
    wait_port(port)
    return p, port


def start_peer(name, d, origin, binary):
    port = free_port()
    if name == "nginx":
        conf = os.path.join(d, "proxy.conf")
        with open(conf, "w") as f:
            f.write(f"""worker_processes 1;
pid {d}/proxy.pid;
error_log {d}/proxy-error.log;
worker_rlimit_nofile 20000;
events {{ worker_connections 19990; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  upstream origin {{ server 127.0.0.1:{origin}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
""")
        p = subprocess.Popen(["nginx", "-c", conf, "-g", "daemon off;"])
    else:
        conf = os.path.join(d, f"{name}.yaml")
        with open(conf, "w") as f:
            f.write(f"""node:
  workers: 1
  client_timeout: 300s
  http1: {{server: {name}}}
upstreams:
  - {{name: origin, targets: [{{address: "127.0.0.1:{origin}"}}]}}
services:
  - {{name: s, upstream: origin}}
routes:
  - {{name: all, paths: ["/*"], service: s}}
""")
        p = subprocess.Popen(
            [binary, "run", "-c", conf, "--listen", f"127.0.0.1:{port}",
             "--admin", "127.0.0.1:0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=dict(os.environ, GATEHOUSE_LOG="warn"))
    wait_port(port)
    return p, port


REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


async def one_exchange(reader, writer):
    writer.write(REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return status


async def open_idle(port, n, batch=500):
    conns, failed = [], 0
    for start in range(0, n, batch):
        async def one():
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
            status = await asyncio.wait_for(one_exchange(r, w), 10)
            return (r, w, status)
        got = await asyncio.gather(*[one() for _ in range(min(batch, n - start))],
                                   return_exceptions=True)
        for g in got:
            if isinstance(g, Exception) or g[2] != 200:
                failed += 1
            else:
                conns.append(g)
    return conns, failed


async def idle(pid, port, n, batch):
    # One request first, so that the upstream pool and lazily built state exist.
    r, w = await asyncio.open_connection("127.0.0.1", port)
    await one_exchange(r, w)
    w.close()
    await asyncio.sleep(1.0)
    before = rss_kib(pid)
    conns, failed = await open_idle(port, n, batch)
    await asyncio.sleep(2.0)
    after = rss_kib(pid)
    # Still open? Each answers one more request.
    alive = 0
    sample = conns[:200]
    for r, w, _ in sample:
        try:
            if await asyncio.wait_for(one_exchange(r, w), 5) == 200:
                alive += 1
        except Exception:
            pass
    for _, w, _ in conns:
        w.close()
    held = len(conns)
    return before, after, held, failed, alive, len(sample)


async def active(port, clients, seconds):
    stop = time.time() + seconds
    counts = {"ok": 0, "err": 0}

    async def client():
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        except Exception:
            counts["err"] += 1
            return
        while time.time() < stop:
            try:
                status = await asyncio.wait_for(one_exchange(r, w), 10)
                counts["ok" if status == 200 else "err"] += 1
            except Exception:
                counts["err"] += 1
                return
        w.close()

    await asyncio.gather(*[client() for _ in range(clients)])
    return counts


UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: bench\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")


async def ws_origin():
    """Answers an upgrade with 101 and then echoes bytes (the tunnel does not parse frames)."""
    async def conn(reader, writer):
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                         b"Upgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
            while data := await reader.read(4096):
                writer.write(data)
        except Exception:
            pass
        writer.close()
    server = await asyncio.start_server(conn, "127.0.0.1", 0, backlog=4096)
    return server, server.sockets[0].getsockname()[1]


async def websockets(pid, port, n, batch=100):
    before = rss_kib(pid)
    socks, failed = [], 0
    for start in range(0, n, batch):
        async def one():
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
            w.write(UPGRADE)
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
            if b" 101 " not in head.split(b"\r\n")[0]:
                raise RuntimeError(head[:40])
            return r, w
        got = await asyncio.gather(*[one() for _ in range(min(batch, n - start))],
                                   return_exceptions=True)
        for g in got:
            if isinstance(g, Exception):
                failed += 1
            else:
                socks.append(g)
    await asyncio.sleep(1.0)
    after = rss_kib(pid)

    async def echo(r, w):
        w.write(b"ping")
        return await asyncio.wait_for(r.readexactly(4), 10) == b"ping"
    echoed = await asyncio.gather(*[echo(r, w) for r, w in socks], return_exceptions=True)
    ok = sum(1 for e in echoed if e is True)
    for _, w in socks:
        w.close()
    return len(socks), failed, ok, before, after


async def slow(pid, port, n, batch=100):
    before = rss_kib(pid)
    socks, failed = [], 0
    for start in range(0, n, batch):
        async def one():
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
            w.write(b"GET /slow HTTP/1.1\r\nHost: bench\r\nX-Slow: aaaa")
            await w.drain()
            return r, w
        got = await asyncio.gather(*[one() for _ in range(min(batch, n - start))],
                                   return_exceptions=True)
        failed += sum(1 for g in got if isinstance(g, Exception))
        socks += [g for g in got if not isinstance(g, Exception)]
    await asyncio.sleep(2.0)
    after = rss_kib(pid)
    for _, w in socks:
        w.close()
    return len(socks), failed, before, after


def ws_peer(d, origin_port, binary, server):
    port = free_port()
    conf = os.path.join(d, f"ws-{server}.yaml")
    with open(conf, "w") as f:
        f.write(f"""node: {{workers: 1, http1: {{server: {server}}}}}
upstreams:
  - {{name: ws, targets: [{{address: "127.0.0.1:{origin_port}"}}], keepalive: {{max_connections: 20000}}}}
services:
  - {{name: s, upstream: ws}}
routes:
  - {{name: all, paths: ["/*"], service: s}}
""")
    p = subprocess.Popen([binary, "run", "-c", conf, "--listen", f"127.0.0.1:{port}",
                          "--admin", "127.0.0.1:0"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=dict(os.environ, GATEHOUSE_LOG="warn"))
    wait_port(port)
    return p, port


async def ws_run(d, binary, servers, n):
    server, origin_port = await ws_origin()
    rows = []
    for name in servers:
        p, port = ws_peer(d, origin_port, binary, name)
        try:
            rows.append((name,) + await websockets(p.pid, port, n))
        finally:
            p.terminate()
            p.wait(10)
    server.close()
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--idle", type=int, default=19000)
    ap.add_argument("--active", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--bin", default=os.path.join(HERE, "..", "target", "release", "gatehouse"))
    ap.add_argument("--peers", default="own,hyper,nginx")
    ap.add_argument("--websockets", type=int, default=0)
    ap.add_argument("--slow", type=int, default=0)
    ap.add_argument("--batch", type=int, default=100,
                    help="connections opened at once while filling up")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if shutil.which("nginx") is None:
        raise SystemExit("needs nginx (apt-get install -y nginx)")
    d = tempfile.mkdtemp(prefix="conns.")
    origin, origin_port = start_origin(d)
    rows = []
    try:
        for name in args.peers.split(","):
            p, port = start_peer(name, d, origin_port, args.bin)
            try:
                before, after, held, failed, alive, sampled = asyncio.run(
                    idle(p.pid, port, args.idle, args.batch))
                per = (after - before) / max(held, 1)
                counts = asyncio.run(active(port, args.active, args.seconds))
                rows.append((name, held, failed, before, after, per, alive, sampled, counts))
            finally:
                p.terminate()
                p.wait(10)
    finally:
        origin.terminate()
        origin.wait(10)
        shutil.rmtree(d, ignore_errors=True)
    slow_rows = []
    if args.slow:
        d = tempfile.mkdtemp(prefix="conns-slow.")
        origin, origin_port = start_origin(d)
        try:
            for name in [p for p in args.peers.split(",") if p in ("own", "hyper")]:
                p, port = start_peer(name, d, origin_port, args.bin)
                try:
                    slow_rows.append((name,) + asyncio.run(slow(p.pid, port, args.slow)))
                finally:
                    p.terminate()
                    p.wait(10)
        finally:
            origin.terminate()
            origin.wait(10)
            shutil.rmtree(d, ignore_errors=True)
    if args.websockets:
        d = tempfile.mkdtemp(prefix="conns-ws.")
        servers = [p for p in args.peers.split(",") if p in ("own", "hyper")]
        try:
            ws_rows = asyncio.run(ws_run(d, args.bin, servers, args.websockets))
        finally:
            shutil.rmtree(d, ignore_errors=True)
    print(f"| peer | idle connections held | failed to open | RSS before (MiB) | RSS after (MiB) "
          f"| KiB per idle connection | at 100 000 (MiB) | still answering | "
          f"{args.active} clients × {args.seconds:.0f} s: 200s | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, held, failed, before, after, per, alive, sampled, c in rows:
        print(f"| {name} | {held} | {failed} | {before / 1024:.1f} | {after / 1024:.1f} "
              f"| {per:.2f} | {per * 100000 / 1024:.0f} | {alive}/{sampled} "
              f"| {c['ok']} | {c['err']} |")


    if slow_rows:
        print()
        print("| server | slow heads held at once | failed to open | RSS before (MiB) "
              "| RSS after (MiB) | KiB per connection |")
        print("|---|---|---|---|---|---|")
        for name, held, failed, before, after in slow_rows:
            print(f"| {name} | {held} | {failed} | {before / 1024:.1f} | {after / 1024:.1f} "
                  f"| {(after - before) / max(held, 1):.2f} |")
    if args.websockets:
        print()
        print("| server | WebSockets held at once | failed to open | echoed after all were up "
              "| RSS before (MiB) | RSS after (MiB) | KiB per tunnel |")
        print("|---|---|---|---|---|---|---|")
        for name, held, failed, ok, before, after in ws_rows:
            print(f"| {name} | {held} | {failed} | {ok} | {before / 1024:.1f} | {after / 1024:.1f} "
                  f"| {(after - before) / max(held, 1):.2f} |")


if __name__ == "__main__":
    main()
