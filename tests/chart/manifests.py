#!/usr/bin/env python3
"""Questions tests/chart/check.sh asks about rendered manifests, the schema and the rules.

  manifests.py objects < rendered.yaml          one "Kind/name" line per object
  manifests.py get KIND NAME PATH < rendered    the value at a dotted PATH of that object, as JSON
  manifests.py rules < rendered.yaml            the PrometheusRule's spec.groups as a rules file
  manifests.py alerts RULES_FILE                one "alert runbook_url" line per alert
  manifests.py dashboard < rendered.yaml        checks the dashboard ConfigMap holds a Grafana dashboard
  manifests.py schema-covers VALUES SCHEMA      every value the schema knows is in values.yaml and the
                                                other way round, for the maps the chart owns

Needs PyYAML (Debian python3-yaml, which tests/e2e/cluster/build/host-deps.sh installs).
"""
import json
import sys

import yaml


def docs():
    return [d for d in yaml.safe_load_all(sys.stdin) if d]


def find(objects, kind, name):
    for o in objects:
        if o.get("kind") == kind and o["metadata"]["name"] == name:
            return o
    raise SystemExit(f"no {kind}/{name} in the rendered chart")


def dig(value, path):
    for part in path.split(".") if path else []:
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            return None
    return value


# Maps whose keys are Kubernetes' or the user's, not the chart's: values.yaml need not list them.
PASSED_THROUGH = {"resources", "tolerations", "affinity", "labelSelector", "stringMap"}


def schema_covers(values, schema):
    defs = schema.get("definitions", {})
    problems = []

    def resolve(node):
        ref = node.get("$ref", "")
        name = ref.rsplit("/", 1)[-1] if ref else None
        return (defs[name], name) if name else (node, None)

    def walk(node, value, path):
        node, name = resolve(node)
        if name in PASSED_THROUGH or "properties" not in node:
            return
        props = node["properties"]
        for key in props:
            if key == "global" and not path:
                continue
            if not isinstance(value, dict) or key not in value:
                problems.append(f"schema has {'.'.join(path + [key])}, values.yaml does not")
            else:
                walk(props[key], value[key], path + [key])
        if isinstance(value, dict):
            for key in value:
                if key not in props:
                    problems.append(f"values.yaml has {'.'.join(path + [key])}, the schema does not")

    walk(schema, values, [])
    return problems


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "objects":
        for o in docs():
            print(f"{o['kind']}/{o['metadata']['name']}")
    elif cmd == "get":
        kind, name, path = args
        print(json.dumps(dig(find(docs(), kind, name), path), sort_keys=True))
    elif cmd == "rules":
        rules = [o for o in docs() if o["kind"] == "PrometheusRule"]
        if len(rules) != 1:
            raise SystemExit(f"{len(rules)} PrometheusRules rendered, expected 1")
        yaml.safe_dump({"groups": rules[0]["spec"]["groups"]}, sys.stdout, sort_keys=False)
    elif cmd == "alerts":
        with open(args[0]) as f:
            for group in yaml.safe_load(f)["groups"]:
                for rule in group["rules"]:
                    if "alert" in rule:
                        print(rule["alert"], rule.get("annotations", {}).get("runbook_url", "-"))
    elif cmd == "dashboard":
        maps = [o for o in docs() if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")]
        if len(maps) != 1:
            raise SystemExit(f"{len(maps)} dashboard ConfigMaps rendered, expected 1")
        if maps[0]["metadata"].get("labels", {}).get("grafana_dashboard") != "1":
            raise SystemExit("the dashboard ConfigMap lacks the label grafana_dashboard: \"1\"")
        dashboard = json.loads(maps[0]["data"]["staticpodset.json"])
        if not dashboard.get("panels") or dashboard.get("uid") != "staticpodset":
            raise SystemExit("the dashboard has no panels or not the uid staticpodset")
        print(f"{len(dashboard['panels'])} panels")
    elif cmd == "schema-covers":
        with open(args[0]) as f:
            values = yaml.safe_load(f)
        with open(args[1]) as f:
            schema = json.load(f)
        problems = schema_covers(values, schema)
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems else 0
    else:
        raise SystemExit(__doc__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
