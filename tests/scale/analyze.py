#!/usr/bin/env python3
"""Numbers for tests/scale/bench-scale.sh: reads what the script saved (API server /metrics
snapshots, the audit log, the operator's /proc samples, object lists) and prints JSON or a table.

Subcommands (all print to stdout):
  entries LIST.json PREFIX SLICES BACKGROUND   checks each node carries exactly its sets
  nsp-times LIST.json SET T0 [DELAY] per-node written (seen by the agent: Ready less DELAY s) / ready seconds after T0
  pod-times PODS.json T0            per-pod Running/Ready seconds after T0 (p50, p99, max)
  phase NAME T0 T1 BEFORE AFTER AUDIT SAMPLES   one phase: requests, p99, writes by user, CPU, RSS
  sizes DIR                         largest NodeStaticPods and bytes per resource, from DIR/*.json
  merge OUT.json FILES...           one results document from phase files
  table RESULTS.json                the human table
"""
import json
import math
import os
import re
import sys
from collections import Counter, defaultdict
from datetime import datetime

MUTATING = {"POST", "PUT", "PATCH", "DELETE", "APPLY", "DELETECOLLECTION"}
METRIC_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)')
LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def ts(text):
    """An RFC 3339 timestamp as epoch seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def pct(values):
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    v = sorted(values)

    def at(q):
        return round(v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))], 2)

    return {"n": len(v), "p50": at(0.5), "p99": at(0.99), "max": round(v[-1], 2)}


def load_metrics(path):
    """{(name, frozenset(labels)): value} from a Prometheus text dump."""
    out = {}
    with open(path) as f:
        for line in f:
            if line.startswith("#"):
                continue
            m = METRIC_RE.match(line)
            if not m:
                continue
            name, _, labels, value = m.groups()
            if not (name.startswith("apiserver_request_total")
                    or name.startswith("apiserver_request_duration_seconds_bucket")
                    or name.startswith("apiserver_storage")
                    or name == "apiserver_storage_objects"):
                continue
            try:
                out[(name, frozenset(LABEL_RE.findall(labels or "")))] = float(value)
            except ValueError:
                pass
    return out


def diff_metrics(before, after):
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


def requests_by(d):
    """Requests by 'VERB resource[/subresource]'."""
    c = Counter()
    for (name, labels), v in d.items():
        if name != "apiserver_request_total":
            continue
        lab = dict(labels)
        res = lab.get("resource", "")
        if lab.get("subresource"):
            res += "/" + lab["subresource"]
        c[f'{lab.get("verb", "?")} {res}'] += int(v)
    return dict(c.most_common())


def mutating_p99(d):
    """The upper bound of the bucket holding the 99th percentile of mutating calls, in seconds."""
    buckets = defaultdict(float)
    for (name, labels), v in d.items():
        if name != "apiserver_request_duration_seconds_bucket":
            continue
        lab = dict(labels)
        if lab.get("verb") not in MUTATING:
            continue
        buckets[float(lab["le"])] += v
    if not buckets or buckets.get(math.inf, 0) == 0:
        return None
    total = buckets[math.inf]
    for le in sorted(buckets):
        if buckets[le] >= 0.99 * total:
            return le if le != math.inf else "inf"
    return None


def audit_window(path, t0, t1):
    """Requests in [t0, t1) from the audit log: writes by user, and the operator's requests."""
    writes = Counter()
    operator = Counter()
    last_operator_write = None
    if not os.path.exists(path):
        return {}, {}, None
    with open(path) as f:
        for line in f:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            t = ts(e["stageTimestamp"])
            if t < t0 or t >= t1:
                continue
            user = e.get("user", {}).get("username", "?")
            ref = e.get("objectRef", {})
            res = ref.get("resource", "?")
            if ref.get("subresource"):
                res += "/" + ref["subresource"]
            verb = e.get("verb", "?")
            if verb in ("create", "update", "patch", "delete", "deletecollection"):
                writes[f"{user} {res}"] += 1
                if user == "sps-operator" and res != "leases":
                    last_operator_write = t if last_operator_write is None else max(last_operator_write, t)
            if user == "sps-operator":
                operator[f"{verb} {res}"] += 1
    return dict(writes.most_common()), dict(operator.most_common()), last_operator_write


def samples_window(path, t0, t1):
    """Operator CPU seconds and peak RSS within [t0, t1] from 'epoch pid rss_kb cpu_ticks' lines."""
    hz = os.sysconf("SC_CLK_TCK")
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                p = line.split()
                if len(p) == 4:
                    rows.append((float(p[0]), p[1], int(p[2]), int(p[3])))
    inside = [r for r in rows if t0 - 1.5 <= r[0] <= t1 + 1.5]
    if not inside:
        return {"cpu_seconds": None, "rss_mib_max": None, "rss_mib_end": None}
    cpu = 0
    by_pid = defaultdict(list)
    for r in inside:
        by_pid[r[1]].append(r)
    for pid, rs in by_pid.items():
        # A process started inside the window counts from zero.
        first = rs[0][3] if rs[0][0] <= t0 else 0
        cpu += rs[-1][3] - first
    return {
        "cpu_seconds": round(cpu / hz, 2),
        "rss_mib_max": round(max(r[2] for r in inside) / 1024, 1),
        "rss_mib_end": round(inside[-1][2] / 1024, 1),
    }


def nsp_items(path):
    with open(path) as f:
        return json.load(f)["items"]


def cmd_entries(path, prefix, slices, background):
    """Each PREFIX node (index i) must carry 'bench' and every bg-NNN set with NNN % slices ==
    i % slices (all of them when slices is 1): prints '<nodes checked> <nodes wrong>'."""
    slices, background = int(slices), int(background)
    bad = []
    n = 0
    for o in nsp_items(path):
        name = o["metadata"]["name"]
        if not name.startswith(prefix):
            continue
        n += 1
        i = int(name[len(prefix):])
        want = sorted(["bench"] + [f"bg-{j:03d}" for j in range(1, background + 1)
                                   if slices == 1 or j % slices == i % slices])
        got = sorted(p["setName"] for p in o.get("spec", {}).get("pods", []))
        if got != want:
            bad.append(f"{name}: {got}")
    print(n, len(bad))
    for b in bad[:5]:
        print("  " + b, file=sys.stderr)


def cmd_nsp_times(path, set_name, t0, ready_delay="0"):
    """Per node: when the set's entry was written and when its mirror pod was Ready.

    Written is when the (simulated) agent saw the entry: its mirror pod's readySince less the
    fleet's fixed Ready delay. Entries of earlier releases, applied by a field manager per set,
    have that manager's time; entries not Ready yet fall back to assignedTime (when planned).
    """
    t0, delay = float(t0), float(ready_delay)
    written, ready = [], []
    for o in nsp_items(path):
        entry = next((p for p in o.get("spec", {}).get("pods", []) if p["setName"] == set_name), None)
        if entry is None:
            continue
        manager = f"staticpodset/{entry['setNamespace']}/{set_name}"
        mf = [m for m in o["metadata"].get("managedFields", []) if m.get("manager") == manager]
        rep = next((p for p in o.get("status", {}).get("pods", []) if p["setName"] == set_name), None)
        mirror = (rep or {}).get("mirrorPod") or {}
        is_ready = mirror.get("ready") and mirror.get("upToDate") and mirror.get("readySince")
        if mf and mf[0].get("time"):
            written.append(max(0.0, ts(mf[0]["time"]) - t0))
        elif is_ready:
            written.append(max(0.0, ts(mirror["readySince"]) - delay - t0))
        elif entry.get("assignedTime"):
            written.append(max(0.0, ts(entry["assignedTime"]) - t0))
        if is_ready:
            ready.append(max(0.0, ts(mirror["readySince"]) - t0))
    print(json.dumps({"written": pct(written), "ready": pct(ready)}))


def cmd_pod_times(path, t0):
    t0 = float(t0)
    running = []
    for p in nsp_items(path):
        cond = next((c for c in p.get("status", {}).get("conditions", []) if c["type"] == "Ready"), None)
        if cond and cond["status"] == "True" and cond.get("lastTransitionTime"):
            running.append(max(0.0, ts(cond["lastTransitionTime"]) - t0))
    print(json.dumps({"ready": pct(running)}))


def cmd_phase(name, t0, t1, before, after, audit, samples, *extra):
    t0, t1 = float(t0), float(t1)
    d = diff_metrics(load_metrics(before), load_metrics(after))
    req = requests_by(d)
    mut = sum(v for k, v in req.items() if k.split()[0] in MUTATING)
    writes, operator, last_op_write = audit_window(audit, t0, t1)
    out = {
        "phase": name,
        "seconds": round(t1 - t0, 2),
        "requests": req,
        "mutating_requests": mut,
        "mutating_p99_le_seconds": mutating_p99(d),
        "writes_by_user": writes,
        "operator_requests": operator,
        "last_operator_write_after_s": None if last_op_write is None else round(last_op_write - t0, 2),
        "operator": samples_window(samples, t0, t1),
    }
    per_user = Counter()
    for k, v in writes.items():
        per_user[k.split()[0]] += v
    out["writes_per_s"] = {u: round(v / max(t1 - t0, 1e-9), 2) for u, v in per_user.most_common()}
    for kv in extra:
        k, _, v = kv.partition("=")
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    print(json.dumps(out))


def cmd_sizes(directory):
    out = {}
    for fn in sorted(os.listdir(directory)):
        if not fn.endswith(".json"):
            continue
        with open(os.path.join(directory, fn)) as f:
            items = json.load(f)["items"]
        sizes = [len(json.dumps(i, separators=(",", ":"))) for i in items]
        out[fn[:-5]] = {"objects": len(items), "bytes": sum(sizes), "largest": max(sizes, default=0)}
    print(json.dumps(out))


def cmd_merge(out_path, *files):
    doc = {"phases": []}
    for fn in files:
        with open(fn) as f:
            v = json.load(f)
        if "phase" in v:
            doc["phases"].append(v)
        else:
            doc.update(v)
    with open(out_path, "w") as f:
        json.dump(doc, f, indent=1)


def fmt(v):
    return "-" if v is None else str(v)


def cmd_table(path):
    with open(path) as f:
        doc = json.load(f)
    m = doc.get("meta", {})
    print(f'shape {m.get("shape")}: {m.get("nodes")} nodes x {m.get("sets")} sets, '
          f'{m.get("entries")} (set,node) entries, operator {m.get("profile")} build, '
          f'node writes {m.get("write_mode", "apply")}, ready delay {m.get("ready_delay")}, '
          f'machine {m.get("machine")}'
          + (f', operator env {m["operator_env"]}' if m.get("operator_env") else ''))
    print()
    print(f'{"phase":<18}{"seconds":>9}{"op CPU s":>10}{"op RSS MiB":>11}{"mut. req":>10}'
          f'{"mut p99<=s":>11}  detail')
    for p in doc["phases"]:
        op = p.get("operator", {})
        detail = []
        for key in ("all_written_s", "entries_written", "all_ready_s", "to_ready", "pods_ready",
                    "rollout_done", "computed_with_delay_s", "ready_s", "all_released_s"):
            if key in p:
                v = p[key]
                if isinstance(v, dict):
                    v = f'p50 {fmt(v.get("p50"))} p99 {fmt(v.get("p99"))} max {fmt(v.get("max"))} (n={v.get("n")})'
                detail.append(f"{key}: {v}")
        if "writes_per_s" in p and p["phase"] in ("steady", "idle"):
            detail.append("writes/s: " + ", ".join(f"{k} {v}" for k, v in p["writes_per_s"].items()))
        print(f'{p["phase"]:<18}{p["seconds"]:>9}{fmt(op.get("cpu_seconds")):>10}'
              f'{fmt(op.get("rss_mib_max")):>11}{p["mutating_requests"]:>10}'
              f'{fmt(p["mutating_p99_le_seconds"]):>11}  {"; ".join(detail)}')
    print()
    for p in doc["phases"]:
        top = list(p["requests"].items())[:8]
        print(f'{p["phase"]}: requests ' + ", ".join(f"{k}={v}" for k, v in top))
        if p.get("operator_requests"):
            top = list(p["operator_requests"].items())[:8]
            print(f'{"":<{len(p["phase"])}}  operator ' + ", ".join(f"{k}={v}" for k, v in top))
    if "sizes" in doc:
        print()
        for k, v in doc["sizes"].items():
            print(f'{k}: {v["objects"]} objects, {v["bytes"]} bytes, largest {v["largest"]} bytes')
    if "etcd_db_bytes" in doc:
        print(f'etcd db size: {doc["etcd_db_bytes"]} bytes')


def main(argv):
    cmds = {
        "entries": cmd_entries, "nsp-times": cmd_nsp_times,
        "pod-times": cmd_pod_times, "phase": cmd_phase, "sizes": cmd_sizes,
        "merge": cmd_merge, "table": cmd_table,
    }
    if len(argv) < 2 or argv[1] not in cmds:
        print(__doc__, file=sys.stderr)
        return 2
    cmds[argv[1]](*argv[2:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
