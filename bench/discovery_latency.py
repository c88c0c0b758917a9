#!/usr/bin/env python3
"""How soon an etcd change of one upstream's target is live on every worker of a gateway with
10 000 routes: the time from sending the etcd put to the moment every one of K keep-alive
client connections (spread over the workers by SO_REUSEPORT) gets its answer from the new
target. The put's own round trip is included, so the figure is an upper bound.

    bench/discovery_latency.py GATEHOUSE_BIN ETCD_ENDPOINT [CHANGES] [ROUTES]
"""
import base64, http.client, http.server, json, os, socket, subprocess, sys, tempfile, threading, time, urllib.request

bin_, etcd = sys.argv[1], sys.argv[2]
changes = int(sys.argv[3]) if len(sys.argv) > 3 else 20
routes = int(sys.argv[4]) if len(sys.argv) > 4 else 10000
CONNS, WORKERS = 8, 2


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def origin(name):
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            # One write: the head and body in separate segments would meet Nagle and the
            # gateway's delayed ACK, and the origin, not discovery, would be measured.
            body = name.encode()
            self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        def log_message(self, *a): pass
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return "127.0.0.1:%d" % srv.server_address[1]


def put(key, value):
    b = lambda s: base64.b64encode(s.encode()).decode()
    req = urllib.request.Request(etcd + "/v3/kv/put", data=json.dumps({"key": b(key), "value": b(value)}).encode())
    urllib.request.urlopen(req, timeout=5).read()


a, b = origin("A"), origin("B")
prefix = "/lat-%d/" % os.getpid()
put(prefix + "t", a)
port, admin = free_port(), free_port()
lines = ["listen: [{address: '127.0.0.1:%d'}]" % port, "node: {workers: %d}" % WORKERS, "upstreams:"]
lines += ["  - {name: u%d, targets: [{address: '%s'}]}" % (i, a) for i in range(100)]
lines += ["  - {name: watched, discovery: {etcd: {endpoints: ['%s'], prefix: '%s'}}}" % (etcd, prefix), "services:"]
lines += ["  - {name: s%d, upstream: u%d}" % (i, i) for i in range(100)]
lines += ["  - {name: watched, upstream: watched, retries: 0}", "routes:"]
lines += ["  - {name: r%d, paths: ['/r%d/*'], service: s%d}" % (i, i, i % 100) for i in range(routes)]
lines += ["  - {name: watched, paths: ['/watched/*'], service: watched}"]
cfg = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
cfg.write("\n".join(lines) + "\n"); cfg.close()
gw = subprocess.Popen([bin_, "run", "-c", cfg.name, "--admin", "127.0.0.1:%d" % admin,
                       "--data-dir", tempfile.mkdtemp()], env=dict(os.environ, GATEHOUSE_LOG="warn"))
try:
    conns = []
    deadline = time.time() + 60
    while not conns and time.time() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/watched/"); r = c.getresponse(); body = r.read()
            if r.status == 200 and body == b"A":
                conns = [c] + [http.client.HTTPConnection("127.0.0.1", port, timeout=5) for _ in range(CONNS - 1)]
        except OSError:
            time.sleep(0.2)
    assert conns, "the gateway never served the watched route"
    samples = []
    current = a
    for n in range(changes):
        target, want = (b, b"B") if current == a else (a, b"A")
        t0 = time.perf_counter()
        put(prefix + "t", target)
        pending = set(range(CONNS))
        while pending:
            for i in list(pending):
                conns[i].request("GET", "/watched/"); r = conns[i].getresponse(); body = r.read()
                if body == want:
                    pending.discard(i)
            if time.perf_counter() - t0 > 5:
                raise SystemExit("change %d never went live" % n)
        samples.append((time.perf_counter() - t0) * 1000)
        current = target
        time.sleep(0.05)
    samples.sort()
    pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))]
    print("routes=%d changes=%d connections=%d workers=%d: live on every connection after "
          "p50 %.1f ms, p90 %.1f ms, max %.1f ms (from sending the etcd put)"
          % (routes, changes, CONNS, WORKERS, pick(0.5), pick(0.9), samples[-1]))
finally:
    gw.terminate(); gw.wait()
    os.unlink(cfg.name)
