#!/usr/bin/env python3
"""Watches the mirror pods of one StaticPodSet and records every moment too many nodes are
unavailable at once.

Usage: rollout-watch.py NAMESPACE SET MAX_UNAVAILABLE NODE... (KUBECTL/KUBECONFIG from the env)

A node is available while its mirror pod `<set>-<node>` exists and is Ready. The watcher follows
`kubectl get pods --watch` (every event, not samples), and on SIGTERM prints one JSON line:
{"events": N, "max_unavailable_seen": K, "violations": [...], "outages": {node: count}}.
An outage is a transition of a node from available to unavailable; the caller checks that each
updated node had one, which proves the watcher sees what it must catch.
With PRIMED_FILE set, creates that file once every node has been seen available: from then on the
watcher judges, so the caller starts its update only after the file exists.
"""

import json
import os
import signal
import subprocess
import sys
import time

namespace, set_name, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
nodes = sys.argv[4:]
pods = {f"{set_name}-{n}": n for n in nodes}
state = {n: False for n in nodes}
outages = {n: 0 for n in nodes}
violations = []
events = 0
max_seen = 0

proc = subprocess.Popen(
    [os.environ.get("KUBECTL", "kubectl"), "get", "pods", "-n", namespace, "--watch",
     "--output-watch-events", "-o", "json"],
    stdout=subprocess.PIPE, text=True)


def report(*_):
    proc.terminate()
    print(json.dumps({"events": events, "max_unavailable_seen": max_seen,
                      "violations": violations, "outages": outages}), flush=True)
    sys.exit(0)


signal.signal(signal.SIGTERM, report)

decoder = json.JSONDecoder()
buf = ""
primed = False
for line in proc.stdout:
    buf += line
    while True:
        stripped = buf.lstrip()
        if not stripped:
            buf = ""
            break
        try:
            event, end = decoder.raw_decode(stripped)
        except json.JSONDecodeError:
            break
        buf = stripped[end:]
        obj = event.get("object", {})
        node = pods.get(obj.get("metadata", {}).get("name"))
        if node is None:
            continue
        events += 1
        ready = event.get("type") != "DELETED" and any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in obj.get("status", {}).get("conditions", []) or [])
        if state[node] and not ready:
            outages[node] += 1
        state[node] = ready
        # The initial listing arrives as one ADDED event per pod: judge only once every node
        # has been seen available, as before an update.
        if not primed:
            primed = all(state.values())
            if primed and os.environ.get("PRIMED_FILE"):
                open(os.environ["PRIMED_FILE"], "w").close()
            continue
        down = [n for n, up in state.items() if not up]
        max_seen = max(max_seen, len(down))
        if len(down) > limit:
            violations.append({"time": time.time(), "unavailable": down})
report()
