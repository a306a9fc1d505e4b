#!/usr/bin/env python3
"""Where the time of a StaticPodSet create or update goes, hop by hop.

Driven by tests/bench/rollout-breakdown.sh, which sets the environment (the cluster's kubectl,
NODES, the static pod directories, the CRI sockets) and calls one of:

  hops.py watch OUT NS             record every watch event of the benchmark's objects, with the
                                   time this host received it, as JSON lines, until killed
  hops.py analyze OUT NS SET T0 REV [LOGS_DIR]
                                   the milestones of revision REV of SET after T0 (epoch seconds),
                                   per node, as one JSON object on stdout

Milestones come from what each component itself shows, on one clock (this host's):
  - the API objects as the watches deliver them (received times, not the objects' one-second
    timestamps): the StaticPodRevision created, each node's entry naming REV, the mirror pod
    created and Ready, the agent's report, the set's status;
  - the operator's and agents' own log lines, with the kubelet's nanosecond receive times
    (`kubectl logs --timestamps`): the operator's admission dry run, the agent's "manifest
    written"/"removed";
  - the container runtime: when the kubelet started the new container (`crictl inspect`).
"""

import json
import os
import re
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone


def watch(out_path, ns):
    paths = [
        f"/apis/staticpods.dev/v1alpha1/namespaces/{ns}/staticpodsets",
        f"/apis/staticpods.dev/v1alpha1/namespaces/{ns}/staticpodrevisions",
        "/apis/staticpods.dev/v1alpha1/nodestaticpods",
        f"/api/v1/namespaces/{ns}/pods",
    ]
    lock = threading.Lock()
    out = open(out_path, "a", buffering=1)

    def follow(path):
        while True:
            rv = json.loads(subprocess.check_output(["kubectl", "get", "--raw", path]))["metadata"][
                "resourceVersion"
            ]
            proc = subprocess.Popen(
                ["kubectl", "get", "--raw", f"{path}?watch=1&resourceVersion={rv}&allowWatchBookmarks=false"],
                stdout=subprocess.PIPE,
                text=True,
            )
            with lock:
                out.write(json.dumps({"t": time.time(), "type": "WATCHING", "path": path}) + "\n")
            for line in proc.stdout:
                t = time.time()
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                with lock:
                    out.write(json.dumps({"t": t, "type": event.get("type"), "object": event.get("object")}) + "\n")
            proc.wait()

    threads = [threading.Thread(target=follow, args=(p,), daemon=True) for p in paths]
    for th in threads:
        th.start()
    while True:
        time.sleep(3600)


def parse_time(text):
    """RFC 3339 with up to nanoseconds, as kubectl --timestamps and crictl print it."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text)
    if not m:
        return None
    base = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")
    tz = timezone.utc if m.group(3) == "Z" else datetime.strptime(m.group(3).replace(":", ""), "%z").tzinfo
    frac = float("0." + m.group(2)) if m.group(2) else 0.0
    return base.replace(tzinfo=tz).timestamp() + frac


def first(events, pred, after):
    for e in events:
        if e["t"] >= after and pred(e):
            return e["t"]
    return None


def log_times(path, pattern, after):
    """Receive times of log lines matching `pattern` (a regex) after `after`."""
    times = []
    if not path or not os.path.exists(path):
        return times
    for line in open(path, errors="replace"):
        stamp, _, rest = line.partition(" ")
        t = parse_time(stamp)
        if t is not None and t >= after and re.search(pattern, rest):
            times.append(t)
    return times


def analyze(out_path, ns, set_name, t0, rev, logs_dir=None):
    events = [json.loads(line) for line in open(out_path) if line.strip()]
    events = [e for e in events if e.get("type") != "WATCHING"]
    events.sort(key=lambda e: e["t"])
    nodes = os.environ["NODES_LIST"].split()

    def kind(e, k):
        return (e.get("object") or {}).get("kind") == k

    def pod_report(obj, node):
        for r in ((obj.get("status") or {}).get("pods") or []):
            if r.get("setNamespace") == ns and r.get("setName") == set_name:
                return r
        return None

    def entry(obj):
        for p in ((obj.get("spec") or {}).get("pods") or []):
            if p.get("setNamespace") == ns and p.get("setName") == set_name:
                return p
        return None

    def ready(pod):
        conds = (pod.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)

    def mirror_rev(pod):
        return ((pod.get("metadata") or {}).get("annotations") or {}).get("staticpods.dev/revision")

    result = {"set": {}, "nodes": {}}
    result["set"]["revision created"] = first(
        events,
        lambda e: kind(e, "StaticPodRevision")
        and e["type"] == "ADDED"
        and e["object"]["spec"].get("hash") == rev,
        t0,
    )
    n_nodes = len(nodes)
    result["set"]["set status complete"] = first(
        events,
        lambda e: kind(e, "StaticPodSet")
        and e["object"]["metadata"]["name"] == set_name
        and (e["object"].get("status") or {}).get("updateRevision") == rev
        and (e["object"].get("status") or {}).get("updatedNumberScheduled") == n_nodes
        and (e["object"].get("status") or {}).get("numberAvailable") == n_nodes,
        t0,
    )
    if logs_dir:
        dry = log_times(os.path.join(logs_dir, "operator.log"), r"admission dry run", t0)
        result["set"]["operator admission dry run"] = dry[0] if dry else None
    for node in nodes:
        mirror = f"{set_name}-{node}"
        m = {}
        m["entry names the revision"] = first(
            events,
            lambda e: kind(e, "NodeStaticPods")
            and e["object"]["metadata"]["name"] == node
            and (entry(e["object"]) or {}).get("revision") == rev,
            t0,
        )
        m["old mirror pod deleted"] = first(
            events,
            lambda e: kind(e, "Pod")
            and e["type"] == "DELETED"
            and e["object"]["metadata"]["name"] == mirror
            and mirror_rev(e["object"]) != rev,
            t0,
        )
        m["mirror pod created"] = first(
            events,
            lambda e: kind(e, "Pod")
            and e["type"] == "ADDED"
            and e["object"]["metadata"]["name"] == mirror
            and mirror_rev(e["object"]) == rev,
            t0,
        )
        m["mirror pod Ready"] = first(
            events,
            lambda e: kind(e, "Pod")
            and e["type"] != "DELETED"
            and e["object"]["metadata"]["name"] == mirror
            and mirror_rev(e["object"]) == rev
            and ready(e["object"]),
            t0,
        )
        m["agent report Ready"] = first(
            events,
            lambda e: kind(e, "NodeStaticPods")
            and e["object"]["metadata"]["name"] == node
            and ((pod_report(e["object"], node) or {}).get("mirrorPod") or {}).get("revision") == rev
            and ((pod_report(e["object"], node) or {}).get("mirrorPod") or {}).get("ready") is True,
            t0,
        )
        if logs_dir:
            agent_log = os.path.join(logs_dir, f"agent-{node}.log")
            key = re.escape(f"{ns}/{set_name}")
            removed = log_times(agent_log, rf"manifest removed.*{key}|{key}.*manifest removed", t0)
            written = log_times(agent_log, rf"manifest (re)?written.*{key}|{key}.*manifest (re)?written", t0)
            m["agent removed the old manifest"] = removed[0] if removed else None
            m["agent wrote the manifest"] = written[-1] if written else None
            started = os.path.join(logs_dir, f"started-{node}")
            if os.path.exists(started):
                m["kubelet started the container"] = parse_time(open(started).read().strip())
        result["nodes"][node] = m
    # Relative to T0, in seconds.
    rel = lambda t: None if t is None else round(t - t0, 3)
    result["set"] = {k: rel(v) for k, v in result["set"].items()}
    result["nodes"] = {n: {k: rel(v) for k, v in m.items()} for n, m in result["nodes"].items()}
    return result


def main(argv):
    if len(argv) >= 3 and argv[0] == "watch":
        watch(argv[1], argv[2])
    elif len(argv) >= 6 and argv[0] == "analyze":
        logs = argv[6] if len(argv) > 6 else None
        print(json.dumps(analyze(argv[1], argv[2], argv[3], float(argv[4]), argv[5], logs)))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
