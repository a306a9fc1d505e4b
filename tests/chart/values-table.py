#!/usr/bin/env python3
"""Writes the values table of charts/staticpodset/README.md from values.yaml and its comments.

Each key's description is the comment block right above it plus its trailing comment; a map whose
keys follow gets a row only when it has a description. The table sits between the README's
<!-- values-table:begin --> and <!-- values-table:end --> lines.

  values-table.py          rewrite the table
  values-table.py --check  exit 1, with a diff, when the README's table is not what values.yaml gives

Standard library only: values.yaml is read line by line, which its plain block style allows.
"""
import difflib
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
VALUES = ROOT / "charts/staticpodset/values.yaml"
README = ROOT / "charts/staticpodset/README.md"
BEGIN, END = "<!-- values-table:begin -->", "<!-- values-table:end -->"
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w./-]*):(?:\s+(?P<rest>.*))?$")


def split_comment(text):
    """Value and trailing comment of a line's remainder; a '#' inside quotes is part of the value."""
    quote = None
    for i, c in enumerate(text):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or text[i - 1] == " "):
            return text[:i].strip(), text[i + 1:].strip()
    return text.strip(), ""


def block_list(lines, start, indent):
    """A block sequence below a key, as one flow-style string, and the index after it."""
    items, i = [], start
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            i += 1
            continue
        if len(line) - len(line.lstrip()) < indent:
            break
        if stripped.startswith("- "):
            items.append([])
            stripped = stripped[2:]
        value, _ = split_comment(stripped)
        items[-1].append(value)
        i += 1
    rendered = [p[0] if len(p) == 1 and ": " not in p[0] else "{" + ", ".join(p) + "}" for p in items]
    return "[" + ", ".join(rendered) + "]", i


def rows(text):
    lines = text.splitlines()
    out, path, comments, i = [], [], [], 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            comments = []
            i += 1
            continue
        if stripped.startswith("#"):
            comments.append(stripped.lstrip("#").strip())
            i += 1
            continue
        m = KEY.match(line)
        if not m:
            raise SystemExit(f"{VALUES}:{i + 1}: cannot read {line!r}")
        indent = len(m["indent"])
        while path and path[-1][0] >= indent:
            path.pop()
        path.append((indent, m["key"]))
        key = ".".join(k for _, k in path)
        value, trailing = split_comment(m["rest"] or "")
        description = " ".join(c for c in comments + [trailing] if c)
        comments = []
        i += 1
        if value:
            out.append((key, value, description))
            continue
        nxt = next((l for l in lines[i:] if l.strip() and not l.strip().startswith("#")), "")
        nxt_indent = len(nxt) - len(nxt.lstrip())
        if nxt.strip().startswith("- ") and nxt_indent >= indent:
            value, i = block_list(lines, i, nxt_indent)
            out.append((key, value, description))
        elif nxt_indent > indent:
            if description:
                out.append((key, None, description))
        else:
            out.append((key, "", description))
    return out


def table(text):
    cell = lambda s: s.replace("|", "\\|")
    lines = ["| value | default | what it does |", "|---|---|---|"]
    for key, value, description in rows(text):
        default = "" if value is None else f"`{cell(value)}`" if value not in ('""', "") else '`""`'
        lines.append(f"| `{key}` | {default} | {cell(description)} |")
    return "\n".join(lines)


def main():
    check = sys.argv[1:] == ["--check"]
    if sys.argv[1:] not in ([], ["--check"]):
        raise SystemExit(__doc__)
    readme = README.read_text()
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"{README} has no {BEGIN} ... {END} lines")
    head, rest = readme.split(BEGIN, 1)
    old, tail = rest.split(END, 1)
    new = "\n" + table(VALUES.read_text()) + "\n"
    if old == new:
        return 0
    if check:
        diff = difflib.unified_diff(old.splitlines(), new.splitlines(), "README.md", "values.yaml", lineterm="")
        print(f"{README.relative_to(ROOT)}: the values table is stale; run tests/chart/values-table.py", file=sys.stderr)
        print("\n".join(diff), file=sys.stderr)
        return 1
    README.write_text(head + BEGIN + new + END + tail)
    return 0


if __name__ == "__main__":
    sys.exit(main())
