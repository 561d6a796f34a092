"""What promtool does not check about the alert rules: that the file is what the chart's
PrometheusRule can embed as it stands, that every alert follows the house conventions
(name, severity, annotations, runbook URL), that every alert has a runbook with the four
sections and a line in docs/runbooks/README.md, and that the unit tests cover every alert
both firing and silent.

Usage: check_rules.py REPO_ROOT. Exits 1 listing every problem found.
"""

import re
import sys
from pathlib import Path

import yaml

RULES = Path("charts/mail-incident-operator/files/prometheus/mail-incident-operator.rules.yaml")
TESTS = Path("charts/mail-incident-operator/files/prometheus/tests")
RUNBOOKS = Path("docs/runbooks")
RUNBOOK_BASE = "https://github.com/mailops-dev/mail-incident-operator/blob/main/docs/runbooks/"
SEVERITIES = {"critical", "warning", "info"}
ANNOTATIONS = ("summary", "description", "runbook_url")
SECTIONS = ("Meaning", "Impact", "Diagnosis", "Mitigation")
NAME = re.compile(r"^MailIncident[A-Z][A-Za-z]+$")
# Prometheus templates use $labels and $value; anything else between braces (.Values,
# include, {{- ...) is Helm's, which the chart never renders in this file.
TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.S)


def check_rules(root, problems):
    """Returns {alert name: set of severities}."""
    path = root / RULES
    text = path.read_text()
    for template in TEMPLATE.findall(text):
        if "$labels" not in template and "$value" not in template:
            problems.append(f"{RULES}: {{{{{template}}}}} is not a Prometheus template ($labels, $value)")
        if template.startswith("-") or template.endswith("-"):
            problems.append(f"{RULES}: {{{{{template}}}}} trims whitespace, Helm syntax")
    document = yaml.safe_load(text)
    if not isinstance(document, dict) or list(document) != ["groups"]:
        problems.append(f"{RULES}: the top-level key must be exactly `groups`")
        return {}
    alerts = {}
    for group in document["groups"]:
        for rule in group.get("rules", []):
            name = rule.get("alert")
            if name is None:
                continue
            where = f"{RULES}: {name}"
            if not NAME.match(name):
                problems.append(f"{where}: the name is not MailIncident<CamelCase>")
            severity = rule.get("labels", {}).get("severity")
            if severity not in SEVERITIES:
                problems.append(f"{where}: severity {severity!r} is not one of {sorted(SEVERITIES)}")
            annotations = rule.get("annotations", {})
            for key in ANNOTATIONS:
                if not annotations.get(key):
                    problems.append(f"{where}: no {key} annotation")
            url = annotations.get("runbook_url")
            if url != f"{RUNBOOK_BASE}{name}.md":
                problems.append(f"{where}: runbook_url {url!r} is not {RUNBOOK_BASE}{name}.md")
            description = annotations.get("description", "")
            # absent() has no value to give (always 1).
            if "$value" not in description and not rule["expr"].startswith("absent("):
                problems.append(f"{where}: the description does not give the value")
            if severities := alerts.get(name):
                if severity in severities:
                    problems.append(f"{where}: two rules with severity {severity}")
            alerts.setdefault(name, set()).add(severity)
    if not alerts:
        problems.append(f"{RULES}: no alert")
    return alerts


def check_runbooks(root, alerts, problems):
    directory = root / RUNBOOKS
    for name in alerts:
        path = directory / f"{name}.md"
        if not path.is_file():
            problems.append(f"{RUNBOOKS}/{name}.md: missing (the runbook_url of {name})")
            continue
        lines = path.read_text().splitlines()
        if not lines or lines[0] != f"# {name}":
            problems.append(f"{RUNBOOKS}/{name}.md: the first line is not `# {name}`")
        headings = [line[3:].strip() for line in lines if line.startswith("## ")]
        found = [h for h in headings if h in SECTIONS]
        if found != list(SECTIONS):
            problems.append(
                f"{RUNBOOKS}/{name}.md: sections {found}, expected {list(SECTIONS)} in that order"
            )
    for path in sorted(directory.glob("*.md")):
        if path.name != "README.md" and path.stem not in alerts:
            problems.append(f"{RUNBOOKS}/{path.name}: no alert of that name")
    readme = directory / "README.md"
    if not readme.is_file():
        problems.append(f"{RUNBOOKS}/README.md: missing")
        return
    rows = {}
    for line in readme.read_text().splitlines():
        match = re.match(r"^\|\s*\[`?(MailIncident\w+)`?\]\((\w+)\.md\)\s*\|\s*([^|]+?)\s*\|", line)
        if match:
            rows[match.group(1)] = (match.group(2), match.group(3))
    for name, severities in alerts.items():
        if name not in rows:
            problems.append(f"{RUNBOOKS}/README.md: no row linking {name}.md")
            continue
        link, listed = rows[name]
        if link != name:
            problems.append(f"{RUNBOOKS}/README.md: the row of {name} links {link}.md")
        missing = {s for s in severities if s not in listed}
        if missing:
            problems.append(f"{RUNBOOKS}/README.md: the row of {name} does not say {sorted(missing)}")


def check_tests(root, alerts, problems):
    firing = {}
    silent = set()
    for path in sorted((root / TESTS).glob("*.yaml")):
        document = yaml.safe_load(path.read_text())
        rule_files = [(path.parent / f).resolve() for f in document.get("rule_files", [])]
        if (root / RULES).resolve() not in rule_files:
            problems.append(f"{TESTS}/{path.name}: rule_files does not name {RULES.name}")
        for test in document.get("tests", []):
            for case in test.get("alert_rule_test", []):
                name = case["alertname"]
                expected = case.get("exp_alerts") or []
                if not expected:
                    silent.add(name)
                for alert in expected:
                    firing.setdefault(name, set()).add(alert.get("exp_labels", {}).get("severity"))
                    missing = [k for k in ANNOTATIONS if k not in alert.get("exp_annotations", {})]
                    if missing:
                        problems.append(f"{TESTS}/{path.name}: {name} expected without {missing}")
    for name, severities in alerts.items():
        if not severities <= firing.get(name, set()):
            problems.append(f"{TESTS}: no case where {name} fires with severity {sorted(severities - firing.get(name, set()))}")
        if name not in silent:
            problems.append(f"{TESTS}: no case where {name} stays silent")
    for name in set(firing) | silent:
        if name not in alerts:
            problems.append(f"{TESTS}: tests an alert that does not exist: {name}")


def main():
    root = Path(sys.argv[1]).resolve()
    problems = []
    alerts = check_rules(root, problems)
    check_runbooks(root, alerts, problems)
    check_tests(root, alerts, problems)
    for problem in problems:
        print(f"check_rules: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"check_rules: {len(alerts)} alerts, each with its runbook, README row and tests both ways")
    return 0


if __name__ == "__main__":
    sys.exit(main())
