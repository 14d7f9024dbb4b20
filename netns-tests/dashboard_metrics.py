#!/usr/bin/env python3
"""Checks that a Grafana dashboard queries only metrics that ringlink exports.

Usage: dashboard_metrics.py DASHBOARD.json METRICS.txt [METRICS.txt...]

Every PromQL expression in the dashboard (each "expr", and each query
variable's query) is reduced to the metric names it selects and the label
names of their matchers. Each name must be the name of a series in one of
the scraped /metrics texts (a histogram's _bucket, _sum and _count series
count, its bare family name does not, as in Prometheus), and each matcher
label must be on that metric's series, except job and instance, which
Prometheus adds at scrape time.

Exit 0 when everything is found, 1 when something is missing (each listed),
2 when the dashboard or a text cannot be read or an expression yields no
metric (the parser did not understand it, so it checked nothing).
"""

import json
import re
import sys

NAME = r"[A-Za-z_:][A-Za-z0-9_:]*"

# Words that PromQL reads as operators or modifiers, never as metric names.
KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring",
    "group_left", "group_right", "bool", "offset", "inf", "nan",
}

# Labels that the Prometheus server attaches to every scraped series.
TARGET_LABELS = {"job", "instance"}


class DashboardError(Exception):
    pass


def expressions(dashboard):
    """(where, PromQL) for every query in the dashboard, walking nested
    rows and any panel type."""
    found = []

    def walk(node, where):
        if isinstance(node, dict):
            title = node.get("title") or node.get("name") or where
            expr = node.get("expr")
            if isinstance(expr, str) and expr.strip():
                found.append((title, expr))
            for value in node.values():
                walk(value, title)
        elif isinstance(node, list):
            for item in node:
                walk(item, where)

    walk(dashboard.get("panels", []), "panels")
    walk(dashboard.get("annotations", {}), "annotations")
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        promql = grafana_query(query) if isinstance(query, str) else ""
        if promql.strip():
            found.append(("variable $" + var.get("name", "?"), promql))
    return found


def grafana_query(query):
    """The PromQL inside a Grafana variable query: label_values(sel, label)
    selects `sel` (label_values(label) alone selects no metric)."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*(" + NAME + r")\s*\)\s*", query, re.S)
    if m:
        return m.group(1)
    m = re.fullmatch(r"\s*label_values\(\s*" + NAME + r"\s*\)\s*", query)
    if m:
        return ""
    return query


def selectors(expr):
    """(metric, {label names}) for each metric selector in a PromQL expression."""
    # Strings first: a label value may hold anything, braces included.
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    # Grafana variables ($job, ${job}, [[job]]) and range or subquery
    # durations ([5m], [$__rate_interval], [1h:1m]).
    text = re.sub(r"\$\{[^}]*\}|\$" + NAME, "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\boffset\s+-?[0-9a-z]+", "", text)
    # Numbers, whose exponent or hex digits would read as names (1e3, 0x1f).
    text = re.sub(r"\b[0-9][0-9A-Za-z_.]*", " ", text)
    # Grouping clauses name labels, not metrics.
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    out = []
    for m in re.finditer(r"(" + NAME + r")\s*(\{[^}]*\})?|(\{[^}]*\})", text):
        name, matchers = m.group(1), m.group(2) or m.group(3)
        if name is None:
            # A bare {...} selects by __name__ or by labels alone: which
            # metrics it means is not written in the expression.
            raise DashboardError("a selector without a metric name")
        if name.lower() in KEYWORDS or name[0].isdigit():
            continue
        if not matchers and text[m.end():].lstrip().startswith("("):
            continue  # a function or an aggregation
        labels = set(re.findall(r"(" + NAME + r")\s*(?:=~|!~|!=|=)", matchers or ""))
        out.append((name, labels))
    return out


def exported(paths):
    """{series name: {label names}} over every sample line of the texts."""
    series = {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                m = re.match(r"(" + NAME + r")(\{[^}]*\})?\s", line)
                if not m:
                    raise DashboardError(f"{path}: not a sample line: {line!r}")
                labels = set(re.findall(r"(" + NAME + r')="', m.group(2) or ""))
                series.setdefault(m.group(1), set()).update(labels)
    return series


def main(argv):
    if len(argv) < 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    try:
        with open(argv[1], encoding="utf-8") as f:
            dashboard = json.load(f)
        have = exported(argv[2:])
        if not have:
            raise DashboardError("the metrics texts hold no series")
        missing = []
        checked = set()
        for where, expr in expressions(dashboard):
            try:
                found = selectors(expr)
            except DashboardError as e:
                raise DashboardError(f"{where}: {e}: {expr}") from None
            if not found:
                raise DashboardError(f"{where}: no metric found in: {expr}")
            for name, labels in found:
                checked.add(name)
                if name not in have:
                    missing.append(f"{where}: metric {name} is not exported")
                    continue
                for label in sorted(labels - TARGET_LABELS - have[name]):
                    missing.append(f"{where}: {name} has no label {label}")
    except (OSError, ValueError, DashboardError) as e:
        print(f"dashboard_metrics: {e}", file=sys.stderr)
        return 2
    for line in dict.fromkeys(missing):
        print(line)
    print(f"{len(checked)} metric names in the dashboard, {len(have)} series names exported, "
          f"{len(set(missing))} not found")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
