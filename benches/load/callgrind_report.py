"""Per-request figures from a callgrind output file (benches/load/callgrind.sh).

Usage: callgrind_report.py CALLGRIND_OUT REQUESTS [TOP]

Prints user-space instructions per request, then the TOP functions by self cost and by
inclusive cost (the cost of the calls made from each function, per request). Reads the
format directly (name compression, relative positions), since callgrind_annotate's
self-cost view attributes everything to the thread's entry for a mid-run dump.
"""

import collections
import re
import sys

NAME = re.compile(r"\((\d+)\)(?: (.*))?")


def main() -> None:
    path, requests = sys.argv[1], int(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 30
    names: dict[str, str] = {}

    def name(token: str) -> str:
        m = NAME.match(token)
        if not m:
            return token
        if m.group(2):
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), m.group(1))

    current = ""
    callee = ""
    in_call = False
    self_cost: collections.Counter[str] = collections.Counter()
    calls_from: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("fn="):
                current = name(line[3:])
            elif line.startswith("cfn="):
                callee = name(line[4:])
            elif line.startswith("calls="):
                in_call = True
            elif line[:1].isdigit() or line[:1] in ("+", "-", "*"):
                parts = line.split()
                if len(parts) < 2:
                    continue
                cost = int(parts[1])
                if in_call:
                    in_call = False
                    if callee != current:
                        calls_from[callee] += cost
                    continue
                self_cost[current] += cost
                total += cost
    if requests <= 0:
        sys.exit("no requests counted")
    print(f"user-space instructions per request: {total / requests:,.0f}")
    print("\nself, per request:")
    for fn, cost in self_cost.most_common(top):
        print(f"{cost / requests:>9,.0f}  {fn[:150]}")
    print("\ncalled (inclusive), per request:")
    for fn, cost in calls_from.most_common(top):
        print(f"{cost / requests:>9,.0f}  {fn[:150]}")


if __name__ == "__main__":
    main()
