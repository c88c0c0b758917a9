#!/usr/bin/env python3
"""Paired per-rep ratios from a peers.sh results.tsv: candidate / base (nginx unless named) in
the same rep, per path, for CPU-us/request, requests/s and instructions/request; prints each
rep and the median.
Usage: bench/paired.py RESULTS.tsv [CANDIDATE] [BASE]"""
import csv, re, statistics, sys

rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
cand = sys.argv[2] if len(sys.argv) > 2 else "gh"
base = sys.argv[3] if len(sys.argv) > 3 else "nginx"

def insn(r):
    m = re.search(r"instructions/req=([0-9.]+)", r.get("perf", ""))
    return float(m.group(1)) if m else None

by = {(r["proto"], r["path"], r["rep"], r["peer"]): r for r in rows}
for proto, path in sorted({(r["proto"], r["path"]) for r in rows}):
    cpu, rps, ins = [], [], []
    for rep in sorted({r["rep"] for r in rows}, key=int):
        n, c = by.get((proto, path, rep, base)), by.get((proto, path, rep, cand))
        if not n or not c:
            continue
        cpu.append(float(c["proxy_cpu_us_req"]) / float(n["proxy_cpu_us_req"]))
        rps.append(float(c["rps"]) / float(n["rps"]))
        if insn(c) and insn(n):
            ins.append(insn(c) / insn(n))
        print(f"{proto} {path:5} rep{rep}: cpu {cpu[-1]:.3f}  rps {rps[-1]:.3f}" + (f"  insn {ins[-1]:.3f}" if ins else ""))
    med = lambda v: f"{statistics.median(v):.3f}" if v else "-"
    print(f"{proto} {path:5} median: cpu/req {med(cpu)}  rps {med(rps)}  instructions/req {med(ins)}  ({cand} / {base}, paired per rep)")
