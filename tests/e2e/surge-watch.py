#!/usr/bin/env python3
"""Watches one StaticPodSet through a surge update: its mirror pods, its status, and every node's
HTTP answer.

Usage: surge-watch.py NAMESPACE SET NODE=URL... (KUBECTL/KUBECONFIG from the env)

Follows `kubectl get pods --watch` for the set's two mirror pod names per node
(`<set>-<node>` and `<set>-surge-<node>`) and `kubectl get sps --watch` for the set's status
(every event, not samples), and polls each node's URL every 50 ms in a thread of its own. With
PRIMED_FILE set, creates that file once every node has answered and the status has been seen: the
caller changes the set only after that. On SIGTERM prints one JSON line:

  {"pod_events": N, "status_events": N,
   "pods_at_once": {node: most of the set's mirror pods that existed on the node at once},
   "names": [every mirror pod name seen],
   "min_available": lowest status.numberAvailable seen, "desired": status.desiredNumberScheduled,
   "status_changes": [[seconds since start, [current, ready, updated, available]], ...],
   "http": {node: {"ok": N, "failed": N, "bodies": [distinct answers, in order]}}}
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

INTERVAL = 0.05
namespace, set_name = sys.argv[1], sys.argv[2]
targets = dict(a.split("=", 1) for a in sys.argv[3:])
nodes = list(targets)
names = {}
for n in nodes:
    names[f"{set_name}-{n}"] = n
    names[f"{set_name}-surge-{n}"] = n
kubectl = os.environ.get("KUBECTL", "kubectl")
lock = threading.Lock()
live = {n: set() for n in nodes}
pods_at_once = {n: 0 for n in nodes}
seen_names = []
http = {n: {"ok": 0, "failed": 0, "bodies": []} for n in nodes}
status = {"events": 0, "min_available": None, "desired": None, "changes": []}
START = time.monotonic()
pod_events = 0
stopping = threading.Event()


def watch_pods():
    global pod_events
    proc = subprocess.Popen([kubectl, "get", "pods", "-n", namespace, "--watch",
                             "--output-watch-events", "-o", "json"], stdout=subprocess.PIPE, text=True)
    for obj in objects(proc):
        pod = obj.get("object", {})
        name = pod.get("metadata", {}).get("name")
        if name not in names:
            continue
        node = names[name]
        with lock:
            pod_events += 1
            if name not in seen_names:
                seen_names.append(name)
            if obj.get("type") == "DELETED":
                live[node].discard(name)
            else:
                live[node].add(name)
            pods_at_once[node] = max(pods_at_once[node], len(live[node]))


def watch_status():
    proc = subprocess.Popen([kubectl, "get", "sps", "-n", namespace, set_name, "--watch", "-o", "json"],
                            stdout=subprocess.PIPE, text=True)
    for obj in objects(proc):
        st = obj.get("status", {})
        if "desiredNumberScheduled" not in st:
            continue
        with lock:
            status["events"] += 1
            status["desired"] = st.get("desiredNumberScheduled", 0)
            available = st.get("numberAvailable", 0)
            if status["min_available"] is None or available < status["min_available"]:
                status["min_available"] = available
            counts = [st.get(k, 0) for k in ("currentNumberScheduled", "numberReady",
                                             "updatedNumberScheduled", "numberAvailable")]
            if not status["changes"] or status["changes"][-1][1] != counts:
                status["changes"].append((round(time.monotonic() - START, 2), counts))


def objects(proc):
    """The JSON documents kubectl prints one after another."""
    decoder, buf = json.JSONDecoder(), ""
    for line in proc.stdout:
        buf += line
        while True:
            stripped = buf.lstrip()
            if not stripped:
                buf = ""
                break
            try:
                obj, end = decoder.raw_decode(stripped)
            except ValueError:
                break
            buf = stripped[end:]
            yield obj


def poll(node, url):
    while not stopping.is_set():
        t = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=0.5) as r:
                body = r.read().decode().strip()
            ok = r.status == 200
        except Exception:  # refused, reset, timed out: the node does not serve
            body, ok = None, False
        with lock:
            h = http[node]
            if ok:
                h["ok"] += 1
                if body not in h["bodies"]:
                    h["bodies"].append(body)
            else:
                h["failed"] += 1
        time.sleep(max(0.0, INTERVAL - (time.monotonic() - t)))


def report(*_):
    stopping.set()
    with lock:
        print(json.dumps({"pod_events": pod_events, "status_events": status["events"],
                          "pods_at_once": pods_at_once, "names": seen_names,
                          "min_available": status["min_available"], "desired": status["desired"],
                          "status_changes": status["changes"],
                          "http": http}), flush=True)
    os._exit(0)


signal.signal(signal.SIGTERM, report)
for fn in (watch_pods, watch_status):
    threading.Thread(target=fn, daemon=True).start()
for node, url in targets.items():
    threading.Thread(target=poll, args=(node, url), daemon=True).start()
primed = os.environ.get("PRIMED_FILE")
while True:
    time.sleep(0.1)
    with lock:
        ready = all(http[n]["ok"] > 0 for n in nodes) and status["events"] > 0
    if primed and ready and not os.path.exists(primed):
        # Counted from here: failures before the first answer are the pods starting.
        with lock:
            for h in http.values():
                h["failed"] = 0
        open(primed, "w").close()
