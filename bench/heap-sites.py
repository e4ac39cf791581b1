#!/usr/bin/env python3
"""What an idle socket's heap is made of: the allocation sites still live in a heaptrack
trace, per socket, largest first (used by bench/socket-memory.sh).

    heaptrack_print -f TRACE --print-leaks 1 ... | bench/heap-sites.py N [ROWS]

A site is the allocation's stack, shown by its innermost frames in sockgate's own code or a
vendored crate (`src/…`, `engineioxide/…`); sites with fewer than N/5 live allocations (one-off
state, not per socket) are left out of the rows but counted in the total."""
import re
import sys

SCALE = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}


def blocks(lines):
    """(bytes, allocations, frames) for each 'leaked over … calls from:' block."""
    block = None
    for line in lines:
        head = re.match(r"^([\d.]+)([KMG]?)B? leaked over (\d+) calls from:$", line.strip())
        if head:
            if block:
                yield block
            block = (float(head.group(1)) * SCALE[head.group(2)], int(head.group(3)), [])
        elif block and line.strip().startswith("at "):
            where = line.strip()[3:]
            if where.startswith("vendor/") or where.startswith("src/"):
                block[2].append(where.removeprefix("vendor/"))
    if block:
        yield block


def main():
    sockets = int(sys.argv[1])
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    found = list(blocks(sys.stdin))
    total = sum(size for size, _, _ in found)
    # heaptrack splits a site by the paths that reached it: one row per site.
    sites = {}
    for size, calls, frames in found:
        where = " < ".join(frames[:3]) or "(dependencies only)"
        bytes_, count = sites.get(where, (0, 0))
        sites[where] = (bytes_ + size, count + calls)
    per_socket = sorted(
        ((size, calls, where) for where, (size, calls) in sites.items() if calls >= sockets / 5),
        key=lambda row: -row[0],
    )
    print(f"{'B/socket':>8}  {'B each':>6} x {'n/socket':<8} site (innermost first)")
    for size, calls, where in per_socket[:rows]:
        print(f"{size / sockets:8.0f}  {size / calls:6.0f} x {calls / sockets:<8.1f} {where}")
    print(f"{total / sockets:8.0f}  live heap per socket, all sites (N = {sockets})")


if __name__ == "__main__":
    main()
