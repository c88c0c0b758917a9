#!/usr/bin/env python3
"""What a native engine for the OWASP CRS must understand: counts the rules, operators,
variables, transformations and actions of a CRS install (default: Debian's modsecurity-crs),
per paranoia level, so the size of a SecLang subset can be judged before writing it.

    bench/waf/crs_census.py [RULES_DIR]
"""
import collections, glob, os, re, sys

rules_dir = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/modsecurity-crs/rules"
ops, variables, transforms, actions = (collections.Counter() for _ in range(4))
by_pl = collections.Counter()
rules = chained = 0


def directives(text):
    """SecLang directives, continuation lines joined, comments dropped."""
    buf = ""
    for line in text.splitlines():
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        yield (buf + s).strip()
        buf = ""


def split_args(d):
    """A directive's arguments: bare words or double-quoted strings."""
    return re.findall(r'"((?:[^"\\]|\\.)*)"|(\S+)', d)


for path in sorted(glob.glob(os.path.join(rules_dir, "REQUEST-9*.conf"))):
    pl = 1
    chain_next = False
    for d in directives(open(path, encoding="utf-8", errors="replace").read()):
        if d.startswith("SecMarker"):
            m = re.search(r"END-REQUEST-\d+-[A-Z-]+|EXECUTING-PARANOIA-LEVEL", d)
            continue
        if not d.startswith("SecRule") and not d.startswith("SecAction"):
            continue
        args = [a or b for a, b in split_args(d)][1:]
        if d.startswith("SecRule"):
            if len(args) < 2:
                continue
            var, op = args[0], args[1]
            act = args[2] if len(args) > 2 else ""
            # The paranoia gates: "TX:EXECUTING_PARANOIA_LEVEL @lt N" skipAfter markers.
            g = re.match(r"TX:EXECUTING_PARANOIA_LEVEL", var)
            if g:
                m = re.search(r"@lt (\d)", op)
                if m:
                    pl = int(m.group(1))
                continue
            for v in re.split(r"\|", var):
                v = v.lstrip("!&")
                variables[v.split(":")[0]] += 1
            m = re.match(r"!?@(\w+)", op)
            ops[m.group(1) if m else "rx (implicit)"] += 1
        else:
            act = args[0] if args else ""
        for a in re.findall(r"(?:^|,)\s*([a-zA-Z]+)(?::('[^']*'|[^,]*))?", act):
            name, val = a
            if name == "t":
                transforms[val] += 1
            else:
                actions[name] += 1
        if not chain_next:
            rules += 1
            by_pl[pl] += 1
        else:
            chained += 1
        chain_next = "chain" in re.findall(r"(?:^|,)\s*(\w+)", act)

print(f"{rules} rules (+{chained} chained conditions) in {rules_dir}/REQUEST-9*.conf")
print("rules per paranoia level:", dict(sorted(by_pl.items())))
for title, c in (("operators", ops), ("variables", variables), ("transformations", transforms), ("actions", actions)):
    print(f"\n{title} ({len(c)}):")
    print("  " + ", ".join(f"{k} {n}" for k, n in c.most_common()))
