"""Argo CD's health check and actions for MailIncident (deploy/argocd/): every case of their
health_test.yaml and action_test.yaml, run on real Lua 5.1 in sandbox.lua, with only the
libraries Argo CD opens for argocd-cm scripts. What Argo CD makes of a script's result
(util/lua/lua.go: ExecuteHealthLua, ExecuteResourceActionDiscovery, ExecuteResourceAction)
is done here the same way, and compared whole, both ways."""

import datetime
import json
import os
import pathlib
import shutil
import subprocess
import tempfile
import unittest
from unittest import mock

import yaml

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
ARGOCD = REPO / "deploy" / "argocd"
CUSTOMIZATIONS = ARGOCD / "resource_customizations"
SANDBOX = HERE / "sandbox.lua"

# The health codes Argo CD accepts from a script (util/lua/lua.go, isValidHealthStatusCode).
HEALTH_CODES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def lua():
    path = shutil.which("lua5.1")
    if path is None:
        raise RuntimeError("lua5.1 not found: apt-get install lua5.1 (Argo CD's scripts run on Lua 5.1)")
    return path


class LuaError(Exception):
    """A script failed; the message is the one Argo CD reports."""


def lua_type(value):
    return {str: "string", bool: "boolean", int: "number", float: "number", type(None): "nil"}[type(value)]


def run_script(script, obj, now=None, tz="UTC"):
    """What `script` returns for `obj` in the sandbox, the clock frozen at `now` (Unix
    seconds) if given, in time zone `tz`; raises LuaError when the script fails."""
    command = [lua(), str(SANDBOX), str(script)]
    if now is not None:
        command.append(str(now))
    done = subprocess.run(
        command,
        input=json.dumps(obj),
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "TZ": tz},
    )
    if done.returncode != 0:
        raise AssertionError(f"sandbox.lua failed on {script}: {done.stderr}")
    outcome = json.loads(done.stdout)
    if "error" in outcome:
        raise LuaError(outcome["error"])
    return outcome["result"]


def health_of(script, obj):
    """ExecuteHealthLua: the health status Argo CD shows."""
    result = run_script(script, obj)
    if result is None or isinstance(result, list):
        # nil, or a table JSON makes an array of: Argo CD reads an empty status.
        return {"status": "", "message": ""}
    if not isinstance(result, dict):
        raise LuaError(f"expect table output from Lua script, not {lua_type(result)}")
    if any(not isinstance(result.get(key, ""), str) for key in ("status", "message")):
        return {"status": "", "message": ""}
    health = {"status": result.get("status", ""), "message": result.get("message", "")}
    if health["status"] not in HEALTH_CODES:
        return {"status": "Unknown", "message": "Lua returned an invalid health status"}
    return health


def resource_action(name, fields):
    """An appv1.ResourceAction with Go's zero values for what is not given."""
    action = {"name": name, "disabled": False, "iconClass": "", "displayName": "", "params": None}
    action.update(fields)
    return action


def actions_of(script, obj):
    """ExecuteResourceActionDiscovery: the actions Argo CD offers."""
    result = run_script(script, obj)
    if result == []:
        return []
    if not isinstance(result, dict):
        raise LuaError(f"expect table output from Lua script, not {lua_type(result)}")
    kinds = {"name": str, "disabled": bool, "iconClass": str, "displayName": str, "params": list}
    actions = []
    for name, value in result.items():
        if value == []:
            actions.append(resource_action(name, {}))
            continue
        if not isinstance(value, dict) or any(
            key in kinds and not isinstance(field, kinds[key]) for key, field in value.items()
        ):
            raise LuaError(f"error unmarshaling resource action: {name}: {value!r}")
        actions.append(resource_action(name, {k: v for k, v in value.items() if k in kinds}))
    return actions


def clean_returned(new, old):
    """cleanReturnedObj/cleanReturnedArray: Lua cannot tell an empty map from an empty
    array, so an empty array where the input had a map becomes an empty map again."""
    if isinstance(new, dict) and isinstance(old, dict):
        return {key: clean_returned(value, old[key]) if key in old else value for key, value in new.items()}
    if isinstance(new, list) and isinstance(old, dict):
        return {} if not new else new
    if isinstance(new, list) and isinstance(old, list):
        return [clean_returned(item, old[i]) if i < len(old) else item for i, item in enumerate(new)]
    return new


def action_result(script, obj, now):
    """ExecuteResourceAction for an action that returns the modified object: the object
    Argo CD patches the live one towards."""
    result = run_script(script, obj, now)
    if isinstance(result, list):
        raise AssertionError(f"{script} returned a list of impacted resources: this runner supports none")
    if not isinstance(result, dict):
        raise LuaError(f"expect table output from Lua script, not {lua_type(result)}")
    return clean_returned(result, obj)


def unix_seconds(rfc3339):
    return int(datetime.datetime.fromisoformat(rfc3339).timestamp())


def load(path):
    return yaml.safe_load(path.read_text())


def test_files(name):
    """(the kind's directory, its parsed `name`) for every kind that has one."""
    return [(path.parent, load(path)) for path in sorted(CUSTOMIZATIONS.rglob(name))]


class Health(unittest.TestCase):
    """Each case of every health_test.yaml."""


class Actions(unittest.TestCase):
    """Each case of every action_test.yaml: discovery, then actions."""


def add_case(test_class, name, check):
    assert not hasattr(test_class, name), f"two cases named {name}"
    setattr(test_class, name, check)


for kind, cases in test_files("health_test.yaml"):
    for case in cases["tests"]:

        def check(self, kind=kind, case=case):
            expected = {"status": "", "message": "", **case["healthStatus"]}
            self.assertEqual(health_of(kind / "health.lua", load(kind / case["inputPath"])), expected)

        add_case(Health, f"test_{kind.name}_{pathlib.Path(case['inputPath']).stem}", check)

for actions_dir, cases in test_files("action_test.yaml"):
    kind = actions_dir.parent.name
    for case in cases.get("discoveryTests", []):

        def check(self, actions_dir=actions_dir, case=case):
            offered = actions_of(actions_dir / "discovery.lua", load(actions_dir / case["inputPath"]))
            expected = [resource_action(a["name"], a) for a in case["result"]]
            key = lambda action: action["name"]  # noqa: E731
            self.assertEqual(sorted(offered, key=key), sorted(expected, key=key))

        add_case(Actions, f"test_{kind}_discovery_{pathlib.Path(case['inputPath']).stem}", check)
    for number, case in enumerate(cases.get("actionTests", []), 1):

        def check(self, actions_dir=actions_dir, case=case):
            script = actions_dir / case["action"] / "action.lua"
            obj = load(actions_dir / case["inputPath"])
            now = unix_seconds(case["now"]) if "now" in case else None
            if "expectedErrorMessage" in case:
                with self.assertRaises(LuaError) as failure:
                    action_result(script, obj, now)
                self.assertEqual(str(failure.exception), case["expectedErrorMessage"])
            else:
                expected = load(actions_dir / case["expectedOutputPath"])
                self.assertEqual(action_result(script, obj, now), expected)

        stem = pathlib.Path(case["inputPath"]).stem
        add_case(Actions, f"test_{kind}_{number:02d}_{case['action']}_{stem}", check)


class TestData(unittest.TestCase):
    def test_every_testdata_file_is_a_case(self):
        used = set()
        for kind, cases in test_files("health_test.yaml"):
            used |= {kind / case["inputPath"] for case in cases["tests"]}
        for actions_dir, cases in test_files("action_test.yaml"):
            for case in cases.get("discoveryTests", []) + cases.get("actionTests", []):
                used |= {actions_dir / case[key] for key in ("inputPath", "expectedOutputPath") if key in case}
        present = set(CUSTOMIZATIONS.rglob("testdata/*"))
        self.assertEqual(present - used, set())
        self.assertEqual(used - present, set())

    def test_extend_does_not_depend_on_the_servers_time_zone(self):
        for actions_dir, cases in test_files("action_test.yaml"):
            for case in cases["actionTests"]:
                if case["action"] != "extend" or "expectedOutputPath" not in case:
                    continue
                script = actions_dir / "extend" / "action.lua"
                obj = load(actions_dir / case["inputPath"])
                now = unix_seconds(case["now"])
                self.assertEqual(
                    run_script(script, obj, now, tz="Pacific/Chatham"),
                    run_script(script, obj, now, tz="UTC"),
                )


class ArgoCdConfigMap(unittest.TestCase):
    """argocd-cm-patch.yaml carries exactly the scripts that are tested here."""

    def test_the_patch_holds_the_health_script_and_every_action(self):
        data = load(ARGOCD / "argocd-cm-patch.yaml")["data"]
        kind = CUSTOMIZATIONS / "mailops.dev" / "MailIncident"
        self.assertEqual(data["resource.customizations.health.mailops.dev_MailIncident"], (kind / "health.lua").read_text())
        actions = yaml.safe_load(data["resource.customizations.actions.mailops.dev_MailIncident"])
        self.assertEqual(actions["discovery.lua"], (kind / "actions" / "discovery.lua").read_text())
        scripts = {d["name"]: d["action.lua"] for d in actions["definitions"]}
        on_disk = {p.parent.name: p.read_text() for p in (kind / "actions").glob("*/action.lua")}
        self.assertEqual(scripts, on_disk)
        self.assertEqual(set(data), {
            "resource.customizations.health.mailops.dev_MailIncident",
            "resource.customizations.actions.mailops.dev_MailIncident",
        })


class TemporaryScript:
    """A Lua script in a temporary file, for the tests of the runner and the sandbox."""

    def __init__(self, source):
        self.file = tempfile.NamedTemporaryFile("w", suffix=".lua")
        self.file.write(source)
        self.file.flush()

    def __enter__(self):
        return self.file.name

    def __exit__(self, *_):
        self.file.close()


class ArgoCdReadings(unittest.TestCase):
    """This runner reads a script's result as Argo CD does, odd results included."""

    def health(self, source):
        with TemporaryScript(source) as script:
            return health_of(script, {})

    def test_a_health_status_argo_cd_does_not_know_reads_unknown(self):
        self.assertEqual(
            self.health('return {status = "Fine"}'),
            {"status": "Unknown", "message": "Lua returned an invalid health status"},
        )

    def test_no_health_table_reads_as_an_empty_status(self):
        # Go's JSON decoding into HealthStatus fails on these, and Argo CD takes that for empty.
        for source in ("return nil", "return {}", 'return {"Healthy"}', "return {status = 5}"):
            self.assertEqual(self.health(source), {"status": "", "message": ""}, source)

    def test_a_health_script_must_return_a_table(self):
        with self.assertRaisesRegex(LuaError, "^expect table output from Lua script, not string$"):
            self.health('return "Healthy"')

    def test_an_action_given_as_an_empty_table_is_enabled(self):
        with TemporaryScript("return {go = {}}") as script:
            self.assertEqual(actions_of(script, {}), [resource_action("go", {})])

    def test_an_action_of_discovery_must_be_a_table(self):
        with TemporaryScript('return {go = "yes"}') as script:
            with self.assertRaisesRegex(LuaError, "^error unmarshaling resource action"):
                actions_of(script, {})

    def test_an_action_must_return_an_object(self):
        with TemporaryScript("return true") as script:
            with self.assertRaisesRegex(LuaError, "not boolean$"):
                action_result(script, {}, None)


class Sandbox(unittest.TestCase):
    """The sandbox is Argo CD's, not Lua's: what Argo CD lacks fails here too."""

    def run_source(self, source, obj=None, now=None, tz="UTC"):
        with TemporaryScript(source) as script:
            return run_script(script, {} if obj is None else obj, now, tz)

    def assertFails(self, source, message, **kwargs):
        with self.assertRaises(LuaError) as failure:
            self.run_source(source, **kwargs)
        self.assertIn(message, str(failure.exception))

    def test_without_lua_the_runner_says_what_to_install(self):
        with mock.patch.object(shutil, "which", return_value=None):
            with self.assertRaisesRegex(RuntimeError, "apt-get install lua5.1"):
                lua()

    def test_the_string_library_is_absent(self):
        self.assertFails('return string.sub("incident", 1, 3)', "global 'string' (a nil value)")
        self.assertFails('return string.format("%d", 1)', "global 'string' (a nil value)")

    def test_strings_have_no_methods(self):
        self.assertFails('return ("x"):upper()', "attempt to index a string value")
        self.assertFails('local s = "2026-01-01" return s:sub(1, 4)', "attempt to index")
        self.assertIsNone(self.run_source('return getmetatable("")'))

    def test_what_works_on_strings_without_the_library(self):
        self.assertEqual(
            self.run_source('return {#"abc", "a" .. 1 .. "b", "2026-01-02" < "2026-01-10", tonumber("41") + 1}'),
            [3, "a1b", True, 42],
        )

    def test_only_argo_cds_libraries_are_open(self):
        self.assertEqual(
            self.run_source(
                "local t = {} for _, name in ipairs({'string', 'math', 'io', 'os', 'debug', 'coroutine', "
                "'table', 'package', 'require'}) do t[name] = type(_G[name]) end return t"
            ),
            {
                "string": "nil",
                "math": "nil",
                "io": "nil",
                "os": "nil",
                "debug": "nil",
                "coroutine": "nil",
                "table": "table",
                "package": "table",
                "require": "function",
            },
        )
        self.assertEqual(
            self.run_source("local names = {} for name in pairs(table) do table.insert(names, name) end "
                            "table.sort(names) return names"),
            ["concat", "getn", "insert", "maxn", "remove", "sort"],
        )

    def test_os_offers_only_time_and_date_and_only_through_require(self):
        self.assertEqual(
            self.run_source("local names = {} for name in pairs(require('os')) do table.insert(names, name) end "
                            "table.sort(names) return names"),
            ["date", "time"],
        )
        self.assertFails("return os.time()", "global 'os' (a nil value)", now=0)
        self.assertFails("return require('io')", "module io not found")

    def test_the_clock_is_frozen_or_refused(self):
        self.assertEqual(self.run_source("return require('os').time()", now=1767225600), 1767225600)
        self.assertEqual(
            self.run_source("return require('os').date('!%Y-%m-%dT%H:%M:%SZ')", now=1767225600),
            "2026-01-01T00:00:00Z",
        )
        self.assertFails("return require('os').time()", "froze none")

    def test_os_date_renders_an_explicit_time_in_local_time_as_argo_cd_does(self):
        # oslib_safe.go drops the "!" (UTC) once a time is passed: only now is UTC.
        new_york = {"now": 0, "tz": "America/New_York"}
        self.assertEqual(self.run_source("return require('os').date('!%H:%M', 0)", **new_york), "19:00")
        self.assertEqual(self.run_source("return require('os').date('!%H:%M')", **new_york), "00:00")
        self.assertEqual(self.run_source("return require('os').date('%a %c %P %q')", now=0), "mon 01 Jan 70 00:00 UTC am %q")

    def test_a_script_gets_one_second(self):
        self.assertFails("while true do end", "context deadline exceeded")

    def test_code_loaded_at_run_time_stays_in_the_sandbox(self):
        self.assertIsNone(self.run_source('return loadstring("return string")()'))
        self.assertIsNone(self.run_source("return getfenv(0).string"))

    def test_print_leaves_the_result_alone(self):
        self.assertEqual(self.run_source('print("to the server log") return "result"'), "result")

    def test_objects_cross_into_lua_and_back_exactly(self):
        obj = {
            "text": 'quote " backslash \\ slash / tab \t newline \n bell \x07 é 😀 \u2028',
            "numbers": [0, -3, 1767225600, 2.5, -1e-7, 12345678901234],
            "flags": [True, False],
            "nested": {"empty map": {}, "empty list": [], "deep": {"k": [{"v": "w"}]}},
            "dropped": None,
            "holes": [1, None, 2],
        }
        expected = {
            **obj,
            "nested": {"empty map": [], "empty list": [], "deep": {"k": [{"v": "w"}]}},
            "holes": [1, 2],
        }
        del expected["dropped"]
        self.assertEqual(self.run_source("return obj", obj), expected)

    def test_what_gopher_json_cannot_encode_fails(self):
        self.assertFails("return {1, nil, 3}", "cannot encode sparse array")
        self.assertFails("return {1, key = 2}", "cannot encode mixed or invalid key types")
        self.assertFails("local shared = {} return {a = shared, b = shared}", "recursively nested tables")
        self.assertFails("return {f = print}", "cannot encode function to JSON")

    def test_the_last_value_returned_counts(self):
        self.assertEqual(self.run_source("return 1, 2"), 2)
        self.assertIsNone(self.run_source("local x = 1"))

    def test_error_messages_read_as_in_argo_cd(self):
        for source, message in [('error("plain", 0)', "plain"), ('\nerror("placed")', "<string>:2: placed")]:
            with self.assertRaises(LuaError) as failure:
                self.run_source(source)
            self.assertEqual(str(failure.exception), message)


if __name__ == "__main__":
    unittest.main()
