"""The Grafana dashboard's structure, checked without Grafana: it imports alone, its panels
have unique ids and tile the grid, every query goes to the `datasource` variable, and every
expression parses and names only metrics the operator and its agents export
(src/controller/metrics.rs, src/agent/metrics.rs)
or Prometheus and the process collector provide. Whether each query returns data is proven
against a real Prometheus on the real node (e2e/node/dashboard.rs)."""

import copy
import json
import pathlib
import re
import shutil
import subprocess
import tempfile
import unittest

REPO = pathlib.Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "charts/mail-incident-operator/files/grafana/mail-incident-operator.json"
METRICS_RS = [REPO / "src/controller/metrics.rs", REPO / "src/agent/metrics.rs"]
# Where the modes the mode gauges one-hot are named: the incident's and the agent's.
INCIDENT_MODES_RS = REPO / "src/api/incident.rs"
AGENT_MODES_RS = REPO / "src/agent/state.rs"
GRID_WIDTH = 24
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
ROWS = ["Incidents", "Per MTA (agents)", "Release", "Operator"]

# Besides ours: Prometheus' own per-target `up`, and the process collector's metrics that
# the operator and the agents export (the prometheus crate's "process" feature).
STANDARD_METRICS = {
    "up",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
    "process_threads",
}

# A histogram is queried through these series; its bare name has none.
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")

# What Grafana substitutes, as for a Prometheus scraping every second (promtool only parses).
GRAFANA_VARIABLES = {
    "__rate_interval": "4s",
    "__interval": "1s",
    "__range": "1h",
    "namespace": "mail",
    "incident": "outage",
}


def metrics_source():
    """The metrics modules' code, outside their tests."""
    return "".join(path.read_text().split("#[cfg(test)]")[0] for path in METRICS_RS)


def named_variants(path, enum):
    """The variants of `enum` as `named_variants!` in `path` writes them."""
    listed = re.search(r"named_variants!\(\s*" + enum + r',\s*"[^"]*",\s*\[([^\]]+)\]',
                       path.read_text()).group(1)
    return set(listed.replace(",", " ").split())


def exported_metrics(code):
    """The metric names the metrics modules register (their string literals that are
    metric names), histograms as the series Prometheus stores for them."""
    names = set(re.findall(r'"(mail_incident_[a-z0-9_]+)"', code))
    histograms = set(re.findall(r'HistogramOpts::new\(\s*"(mail_incident_[a-z0-9_]+)"', code))
    if not histograms <= names:
        raise AssertionError(f"histograms not among the names: {histograms - names}")
    return (names - histograms) | {h + s for h in histograms for s in HISTOGRAM_SERIES}


# ---- PromQL, far enough to tell metric names from everything else ----

TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<variable>\$\{[A-Za-z_][A-Za-z0-9_]*(?::[A-Za-z]+)?\}|\$[A-Za-z_][A-Za-z0-9_]*)
  | (?P<duration>(?:[0-9]+(?:ms|[smhdwy]))+)(?![A-Za-z0-9_])
  | (?P<number>0[xX][0-9a-fA-F]+|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)(?![A-Za-z_])
  | (?P<identifier>[A-Za-z_][A-Za-z0-9_:]*)
  | (?P<operator>=~|!~|!=|==|<=|>=|[-+*/%^<>=])
  | (?P<punctuation>[(){}\[\],:@])
    """,
    re.VERBOSE,
)

AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile",
}
# Prometheus 2.42's functions.
FUNCTIONS = {
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
    "delta", "deriv", "exp", "floor", "histogram_count", "histogram_fraction",
    "histogram_quantile", "histogram_sum", "holt_winters", "hour", "idelta", "increase",
    "irate", "label_join", "label_replace", "last_over_time", "ln", "log10", "log2",
    "max_over_time", "min_over_time", "minute", "month", "pi", "predict_linear",
    "present_over_time", "quantile_over_time", "rad", "rate", "resets", "round", "scalar",
    "sgn", "sin", "sinh", "sort", "sort_desc", "sqrt", "stddev_over_time", "stdvar_over_time",
    "sum_over_time", "tan", "tanh", "time", "timestamp", "vector", "year", "start", "end",
}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
SET_AND_MODIFIER_WORDS = {"and", "or", "unless", "bool", "atan2", "offset"}
MATCH_OPERATORS = {"=", "!=", "=~", "!~"}


class PromQLError(ValueError):
    pass


def tokenize(expr):
    tokens, at = [], 0
    while at < len(expr):
        match = TOKEN.match(expr, at)
        if not match:
            raise PromQLError(f"cannot read {expr[at:at + 20]!r} in {expr!r}")
        if match.lastgroup != "space":
            tokens.append((match.lastgroup, match.group()))
        at = match.end()
    return tokens


def metric_names(expr):
    """The metric names `expr` selects, in order; raises PromQLError for what it cannot
    read (unbalanced brackets, an unknown function, a stray token, a __name__ matcher)."""
    tokens = tokenize(expr)
    names, depth, at = [], 0, 0
    while at < len(tokens):
        kind, text = tokens[at]
        if text == "{":
            at = skip_matchers(tokens, at + 1, expr)
            continue
        if text == "[":
            at = skip_range(tokens, at + 1, expr)
            continue
        if text == "(":
            depth += 1
        elif text in (")", "}", "]"):
            if text != ")" or depth == 0:
                raise PromQLError(f"unbalanced {text!r} in {expr!r}")
            depth -= 1
        elif kind == "identifier":
            following = tokens[at + 1][1] if at + 1 < len(tokens) else None
            if text in GROUPING:
                if following == "(":
                    at = skip_label_list(tokens, at + 2, expr)
                    continue
                if text not in ("group_left", "group_right"):
                    raise PromQLError(f"{text} without a label list in {expr!r}")
            elif text in SET_AND_MODIFIER_WORDS or text.lower() in ("inf", "nan"):
                pass
            elif text in AGGREGATIONS and following in ("(", "by", "without"):
                pass
            elif following == "(":
                if text not in FUNCTIONS:
                    raise PromQLError(f"unknown function {text}() in {expr!r}")
            else:
                names.append(text)
        elif kind in ("variable", "duration") and (at == 0 or tokens[at - 1][1] != "offset"):
            raise PromQLError(f"{text} outside a range or offset in {expr!r}")
        at += 1
    if depth:
        raise PromQLError(f"unclosed '(' in {expr!r}")
    return names


def skip_matchers(tokens, at, expr):
    """Past the `}` of a label matcher list starting at `at`: label names and values are
    not metric names."""
    while at < len(tokens) and tokens[at][1] != "}":
        window = tokens[at:at + 3]
        if (len(window) < 3 or window[0][0] != "identifier" or window[1][1] not in MATCH_OPERATORS
                or window[2][0] != "string"):
            raise PromQLError(f"a label matcher that is not `label op \"value\"` in {expr!r}")
        if window[0][1] == "__name__":
            raise PromQLError(f"a metric selected by __name__ (not checked) in {expr!r}")
        at += 3
        if at < len(tokens) and tokens[at][1] == ",":
            at += 1
    if at == len(tokens):
        raise PromQLError(f"unclosed '{{' in {expr!r}")
    return at + 1


def skip_range(tokens, at, expr):
    """Past the `]` of a range or subquery (`[5m]`, `[$__rate_interval:$__interval]`)."""
    while at < len(tokens) and tokens[at][1] != "]":
        if tokens[at][0] not in ("duration", "variable") and tokens[at][1] != ":":
            raise PromQLError(f"{tokens[at][1]!r} in a range in {expr!r}")
        at += 1
    if at == len(tokens):
        raise PromQLError(f"unclosed '[' in {expr!r}")
    return at + 1


def skip_label_list(tokens, at, expr):
    """Past the `)` of a grouping's label list (`by (namespace, pod)`)."""
    while at < len(tokens) and tokens[at][1] != ")":
        if tokens[at][0] != "identifier" and tokens[at][1] != ",":
            raise PromQLError(f"{tokens[at][1]!r} in a label list in {expr!r}")
        at += 1
    if at == len(tokens):
        raise PromQLError(f"unclosed label list in {expr!r}")
    return at + 1


LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>[A-Za-z_][A-Za-z0-9_]*)\)$", re.S)


# ---- the dashboard ----

def all_panels(panels):
    """Every panel, the ones nested in (collapsed) rows included."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def queries(dashboard):
    """(where, expr) for every panel target and annotation."""
    for panel in all_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['id']} ({panel['title']}) target {target['refId']}", target["expr"]
    for annotation in dashboard["annotations"]["list"]:
        yield f"annotation {annotation['name']}", annotation.get("expr") or annotation["target"]["expr"]


def query_variables(dashboard):
    return [v for v in dashboard["templating"]["list"] if v["type"] == "query"]


def variable_query(variable):
    query = variable["query"]
    return query["query"] if isinstance(query, dict) else query


def id_problems(dashboard):
    ids = [p.get("id") for p in all_panels(dashboard["panels"])]
    problems = [f"panel without an integer id: {p.get('title')}"
                for p in all_panels(dashboard["panels"]) if not isinstance(p.get("id"), int)]
    problems += [f"panel id {i} used {ids.count(i)} times" for i in sorted(set(ids), key=str)
                 if ids.count(i) > 1]
    return problems


def grid_problems(panels):
    """Panels (of one level: a collapsed row's own panels are laid out when it opens) that
    leave the grid or overlap another."""
    problems = []
    boxes = []
    for panel in panels:
        g = panel["gridPos"]
        if g["w"] <= 0 or g["h"] <= 0 or g["x"] < 0 or g["y"] < 0 or g["x"] + g["w"] > GRID_WIDTH:
            problems.append(f"panel {panel['id']} leaves the grid: {g}")
        for other_id, o in boxes:
            if (g["x"] < o["x"] + o["w"] and o["x"] < g["x"] + g["w"]
                    and g["y"] < o["y"] + o["h"] and o["y"] < g["y"] + g["h"]):
                problems.append(f"panels {other_id} and {panel['id']} overlap: {o} {g}")
        boxes.append((panel["id"], g))
        if panel.get("collapsed"):
            problems += grid_problems(panel.get("panels", []))
    return problems


def datasource_problems(dashboard):
    problems = []
    for panel in all_panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        if panel.get("datasource") != DATASOURCE:
            problems.append(f"panel {panel['id']} datasource {panel.get('datasource')}")
        for target in panel.get("targets", []):
            if target.get("datasource") != DATASOURCE:
                problems.append(f"panel {panel['id']} target {target.get('refId')} datasource {target.get('datasource')}")
    for annotation in dashboard["annotations"]["list"]:
        if annotation.get("datasource") != DATASOURCE:
            problems.append(f"annotation {annotation['name']} datasource {annotation.get('datasource')}")
    for variable in query_variables(dashboard):
        if variable.get("datasource") != DATASOURCE:
            problems.append(f"variable {variable['name']} datasource {variable.get('datasource')}")
    return problems


def metric_problems(dashboard, known):
    """Expressions and variable queries that cannot be read, or name an unknown metric."""
    problems = []
    expressions = list(queries(dashboard))
    for variable in query_variables(dashboard):
        query = variable_query(variable)
        parsed = LABEL_VALUES.match(query)
        if not parsed:
            problems.append(f"variable {variable['name']}: not label_values(...): {query!r}")
            continue
        if parsed["selector"]:
            expressions.append((f"variable {variable['name']}", parsed["selector"]))
    for where, expr in expressions:
        try:
            names = metric_names(expr)
        except PromQLError as error:
            problems.append(f"{where}: {error}")
            continue
        if not names:
            problems.append(f"{where}: selects no metric: {expr!r}")
        problems += [f"{where}: no metric {name}" for name in names if name not in known]
    return problems


def substitute(expr, values):
    """The expression as Grafana sends it: $name and ${name} replaced."""
    def value(match):
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"no value for ${name} in {expr!r}")
        return values[name]
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", value, expr)


def load():
    return json.loads(DASHBOARD.read_text())


class Dashboard(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dashboard = load()
        cls.known = exported_metrics(metrics_source()) | STANDARD_METRICS

    def test_it_imports_alone_into_any_grafana(self):
        self.assertNotIn("__inputs", self.dashboard)
        self.assertNotIn("__requires", self.dashboard)
        self.assertIsNone(self.dashboard["id"])
        self.assertEqual(self.dashboard["uid"], "mail-incident-operator")
        self.assertGreaterEqual(self.dashboard["schemaVersion"], 39)

    def test_variables_are_the_datasource_a_namespace_and_incidents(self):
        variables = {v["name"]: v for v in self.dashboard["templating"]["list"]}
        self.assertEqual(list(variables), ["datasource", "namespace", "incident"])
        self.assertEqual((variables["datasource"]["type"], variables["datasource"]["query"]),
                         ("datasource", "prometheus"))
        self.assertEqual(variable_query(variables["namespace"]),
                         "label_values(mail_incident_mode, namespace)")
        self.assertEqual(variable_query(variables["incident"]),
                         'label_values(mail_incident_mode{namespace=~"$namespace"}, incident)')
        self.assertTrue(variables["incident"]["multi"] and variables["incident"]["includeAll"])
        for variable in query_variables(self.dashboard):
            self.assertEqual(variable["definition"], variable_query(variable))

    def test_rows_come_as_an_incident_commander_reads_them(self):
        rows = [p["title"] for p in self.dashboard["panels"] if p["type"] == "row"]
        self.assertEqual(rows, ROWS)
        self.assertEqual(self.dashboard["panels"][0]["type"], "row")

    def test_panel_ids_are_unique(self):
        self.assertEqual(id_problems(self.dashboard), [])

    def test_panels_tile_the_grid_without_overlapping(self):
        self.assertEqual(grid_problems(self.dashboard["panels"]), [])

    def test_every_panel_says_what_to_read_from_it(self):
        for panel in all_panels(self.dashboard["panels"]):
            if panel["type"] != "row":
                with self.subTest(panel=panel["title"]):
                    self.assertGreater(len(panel.get("description", "")), 40)
                    self.assertTrue(panel.get("targets"), "a panel with no query")

    def test_every_query_goes_to_the_datasource_variable(self):
        self.assertEqual(datasource_problems(self.dashboard), [])

    def test_every_expression_names_only_metrics_that_exist(self):
        self.assertEqual(metric_problems(self.dashboard, self.known), [])

    def test_the_annotations_mark_transitions_and_escalations(self):
        exprs = {a["name"]: metric_names(a["expr"]) for a in self.dashboard["annotations"]["list"]}
        self.assertEqual(set(exprs), {"Mode transitions", "Escalations"})
        self.assertEqual(set(exprs["Mode transitions"]), {"mail_incident_transitions_total"})
        self.assertEqual(set(exprs["Escalations"]), {"mail_incident_escalations_total"})
        for annotation in self.dashboard["annotations"]["list"]:
            self.assertIn('namespace=~"$namespace"', annotation["expr"])
            self.assertIn('incident=~"$incident"', annotation["expr"])

    def test_the_mode_timelines_map_each_mode_code_to_its_name_and_colour(self):
        """The one-hot mode gauges become one code per incident or pod (`mode="X"} * n`);
        each code's mapping must name that mode, every mode the operator and the agents
        export must have one, and the colours must say how bad it is."""
        incident_modes = named_variants(INCIDENT_MODES_RS, "EffectiveMode")
        agent_modes = named_variants(AGENT_MODES_RS, "MtaState")
        colours = {"Normal": "green", "AcceptAndQueue": "blue", "TempFail": "orange",
                   "HardReject": "red", "Releasing": "purple"}
        timelines = {"Mode of each incident": incident_modes, "Mode each agent reports": agent_modes}
        panels = {p["title"]: p for p in all_panels(self.dashboard["panels"])}
        for title, modes in timelines.items():
            with self.subTest(panel=title):
                expr = panels[title]["targets"][0]["expr"]
                codes = {int(c): m for m, c in re.findall(r'mode="(\w+)"\} \* (\d+)', expr)}
                mapping = panels[title]["fieldConfig"]["defaults"]["mappings"][0]["options"]
                self.assertEqual({int(k): v["text"] for k, v in mapping.items()}, codes)
                self.assertEqual(set(codes.values()), modes)
                self.assertEqual({v["text"]: v["color"] for v in mapping.values()},
                                 {m: colours[m] for m in modes})

    def test_promtool_parses_every_expression_with_the_variables_substituted(self):
        promtool = shutil.which("promtool")
        self.assertIsNotNone(promtool, "promtool not found: apt-get install prometheus (e2e/install-deps.sh does)")
        expressions = [expr for _, expr in queries(self.dashboard)]
        expressions += [LABEL_VALUES.match(variable_query(v))["selector"]
                        for v in query_variables(self.dashboard)
                        if LABEL_VALUES.match(variable_query(v))["selector"]]
        rules = {"groups": [{"name": "dashboard", "rules": [
            {"record": f"dashboard:query_{n}", "expr": substitute(expr, GRAFANA_VARIABLES)}
            for n, expr in enumerate(expressions)]}]}
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
            json.dump(rules, file)  # JSON is YAML
            file.flush()
            checked = subprocess.run([promtool, "check", "rules", file.name],
                                     capture_output=True, text=True, timeout=60)
        self.assertEqual(checked.returncode, 0, checked.stdout + checked.stderr)


class TheChecksCanFail(unittest.TestCase):
    """Each check above, shown a broken dashboard or expression, says so."""

    known = exported_metrics(metrics_source()) | STANDARD_METRICS

    def test_a_misspelt_metric_is_reported(self):
        broken = load()
        target = next(p for p in broken["panels"] if p.get("targets"))["targets"][0]
        target["expr"] = target["expr"].replace("mail_incident_mode", "mail_incident_modes")
        self.assertIn("no metric mail_incident_modes",
                      " ".join(metric_problems(broken, self.known)))

    def test_a_histogram_is_queried_through_its_series_only(self):
        self.assertIn("mail_incident_reconcile_duration_seconds_bucket", self.known)
        self.assertNotIn("mail_incident_reconcile_duration_seconds", self.known)
        self.assertNotIn("mail_incident_mode_bucket", self.known)

    def test_label_values_strings_functions_and_keywords_are_not_metric_names(self):
        expr = ('sum by (pod) (rate(mail_incident_agent_applies_total{pod="up", '
                'queue!~"process_.*", namespace=~"$namespace"}[$__rate_interval:$__interval]))\n'
                'or on (pod) label_replace(0 * max by (pod) (up offset 5m), "action", "none", "", "")'
                ' > bool inf')
        self.assertEqual(metric_names(expr), ["mail_incident_agent_applies_total", "up"])

    def test_what_cannot_be_read_is_an_error_not_a_pass(self):
        for expr in [
            "sum(rate(mail_incident_leader[5m])",          # unclosed
            "rates(mail_incident_leader[5m])",             # unknown function
            'mail_incident_mode{mode=Normal}',             # unquoted label value
            '{__name__="mail_incident_nope"}',             # name hidden in a matcher
            "mail_incident_leader $namespace",             # a stray variable
            "mail_incident_leader ; up",                   # junk
        ]:
            with self.subTest(expr=expr), self.assertRaises(PromQLError):
                metric_names(expr)

    def test_an_unreadable_variable_query_is_reported(self):
        broken = load()
        query_variables(broken)[1]["query"]["query"] = "label_values(mail_incident_nope{namespace=~\"$namespace\"}, incident)"
        self.assertIn("variable incident: no metric mail_incident_nope",
                      " ".join(metric_problems(broken, self.known)))

    def test_overlaps_duplicates_and_other_datasources_are_reported(self):
        broken = load()
        panels = [p for p in broken["panels"] if p["type"] != "row"]
        panels[1]["gridPos"] = copy.deepcopy(panels[0]["gridPos"])
        panels[2]["id"] = panels[3]["id"]
        panels[4]["targets"][0]["datasource"] = {"type": "prometheus", "uid": "prometheus"}
        self.assertTrue(grid_problems(broken["panels"]))
        self.assertTrue(id_problems(broken))
        self.assertTrue(datasource_problems(broken))


if __name__ == "__main__":
    unittest.main()
