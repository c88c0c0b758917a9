#!/usr/bin/env python3
"""Detection and false positives of a WAF at URL, on the corpora beside this script.

Each line of corpus/attack/*.txt and corpus/benign/*.txt is one sample, sent three ways: as a
query argument (GET /search?q=...), as a form field (POST comment=...), and as a JSON string
(POST {"comment": ...}); corpus/benign/json.txt lines are sent as whole JSON bodies instead.
A sample counts as blocked in a placement when the answer is 403. Attack lines that are
already percent-encoded are encoded again on purpose: double encoding is an evasion.

    bench/waf/evaluate.py http://127.0.0.1:PORT [--json]

WAF_CORPUS=DIR takes the corpus from DIR instead (its attack/ and benign/, either may be
absent): bench/waf/heldout.sh makes one from Debian's wfuzz wordlists.
"""
import http.client, json, os, sys, urllib.parse

base = sys.argv[1].rstrip("/")
as_json = "--json" in sys.argv
host, port = urllib.parse.urlsplit(base).hostname, urllib.parse.urlsplit(base).port
here = os.path.dirname(os.path.abspath(__file__))
conn = [None]


def send(method, path, body=None, ctype=None):
    for _ in range(3):
        try:
            if conn[0] is None:
                conn[0] = http.client.HTTPConnection(host, port, timeout=10)
            headers = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) waf-evaluate",
                       "Accept": "text/html,application/json"}
            if body is not None:
                headers["Content-Type"] = ctype
            conn[0].request(method, path, body=body, headers=headers)
            r = conn[0].getresponse()
            r.read()
            if r.getheader("connection", "").lower() == "close":
                conn[0].close(); conn[0] = None
            return r.status
        except (OSError, http.client.HTTPException):
            conn[0] = None
    return -1


def placements(sample, whole_json=False):
    if whole_json:
        return {"json": send("POST", "/api/items", sample.encode(), "application/json")}
    q = urllib.parse.quote(sample, safe="")
    return {
        "query": send("GET", "/search?q=" + q),
        "form": send("POST", "/comments", ("comment=" + q).encode(), "application/x-www-form-urlencoded"),
        "json": send("POST", "/api/items", json.dumps({"comment": sample}).encode(), "application/json"),
    }


def run(kind):
    out = {}
    folder = os.path.join(os.environ.get("WAF_CORPUS", os.path.join(here, "corpus")), kind)
    if not os.path.isdir(folder):
        return out
    for name in sorted(os.listdir(folder)):
        lines = [l.rstrip("\n") for l in open(os.path.join(folder, name), encoding="utf-8") if l.strip()]
        whole = kind == "benign" and name == "json.txt"
        rows = [placements(l, whole) for l in lines]
        family = name[:-4]
        out[family] = {"samples": len(lines), "blocked": {}, "missed": [], "errors": 0}
        for p in rows[0]:
            out[family]["blocked"][p] = sum(1 for r in rows if r[p] == 403)
        out[family]["errors"] = sum(1 for r in rows for s in r.values() if s not in (200, 403, 404))
        # Attack samples blocked in no placement; benign ones blocked in any.
        out[family]["missed"] = [l for l, r in zip(lines, rows) if 403 not in r.values()][:50]
        out[family]["flagged"] = [l for l, r in zip(lines, rows) if 403 in r.values()][:50]
        out[family]["any"] = sum(1 for r in rows if 403 in r.values())
    return out


attack, benign = run("attack"), run("benign")
if as_json:
    print(json.dumps({"attack": attack, "benign": benign}, ensure_ascii=False, indent=1))
    sys.exit(0)
print("%-10s %7s  %-28s %s" % ("family", "samples", "blocked (query/form/json)", "in any placement"))
for kind, table in (("attack", attack), ("benign", benign)):
    n = hit = 0
    for fam, t in table.items():
        b = t["blocked"]
        cells = "/".join(str(b.get(p, "-")) for p in ("query", "form", "json"))
        print("%-10s %7d  %-28s %d (%.0f %%)%s" % (fam, t["samples"], cells, t["any"],
              100.0 * t["any"] / t["samples"], "  errors: %d" % t["errors"] if t["errors"] else ""))
        n += t["samples"]; hit += t["any"]
    label = "detected" if kind == "attack" else "false positives"
    if n:
        print("== %s: %d of %d samples %s (%.1f %%)\n" % (kind, hit, n, label, 100.0 * hit / n))
