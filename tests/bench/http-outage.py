#!/usr/bin/env python3
"""Measures each node's HTTP outage while a pod is replaced.

Usage: http-outage.py OLD_BODY NEW_BODY TIMEOUT_S NODE=URL...

Polls every URL every 50 ms (each node in its own thread) until every node serves NEW_BODY or the
timeout passes. For each node prints one line:

    NODE outage=SECONDS last_old=T first_new=T failed_polls=N

where the outage runs from the last poll that got OLD_BODY (the old pod still served) to the first
poll that got NEW_BODY (the new pod serves), both as seconds since the start. The resolution is the
poll interval. Exits 1 if a node never served NEW_BODY.

Prints `polling` first, once every node has answered OLD_BODY: the caller makes its change after that.
"""

import sys
import threading
import time
import urllib.request

INTERVAL = 0.05


def poll(node, url, old, new, deadline, start, results, saw_old):
    last_old = None
    failed = 0
    while time.monotonic() < deadline:
        t = time.monotonic() - start
        try:
            with urllib.request.urlopen(url, timeout=0.5) as r:
                body = r.read().decode().strip()
        except Exception:  # refused, reset, timed out: the node is not serving
            body = None
        if body == old:
            last_old = t
            saw_old(node)
        elif body == new:
            results[node] = (last_old, t, failed)
            return
        else:
            failed += 1
        time.sleep(max(0.0, INTERVAL - (time.monotonic() - start - t)))
    results[node] = (last_old, None, failed)


def main():
    old, new, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
    targets = [a.split("=", 1) for a in sys.argv[4:]]
    start = time.monotonic()
    deadline = start + timeout
    results = {}
    lock = threading.Lock()
    seen = set()

    def saw_old(node):
        with lock:
            if node not in seen:
                seen.add(node)
                if len(seen) == len(targets):
                    print("polling", flush=True)

    threads = [
        threading.Thread(target=poll, args=(n, u, old, new, deadline, start, results, saw_old))
        for n, u in targets
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = True
    for node, _ in targets:
        last_old, first_new, failed = results[node]
        if first_new is None or last_old is None:
            ok = False
            print(f"{node} outage=unknown last_old={last_old} first_new={first_new} failed_polls={failed}")
            continue
        print(
            f"{node} outage={first_new - last_old:.2f} last_old={last_old:.2f} "
            f"first_new={first_new:.2f} failed_polls={failed}"
        )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
