"""The documentation as a reader follows it: every relative link in README.md, TESTING.md,
ARCHITECTURE.md and docs/**/*.md reaches a file (and a heading, when it names one, slugged
as GitHub slugs it), every `make TARGET` the docs name is a target of the Makefile, and the
manifests docs/multi-cluster.md shows are the files under docs/multi-cluster/, which
parse, and whose MailIncidents are valid against the CRD's openAPIV3Schema."""

import copy
import pathlib
import re
import unittest
import urllib.parse

try:
    import jsonschema
    import yaml
except ImportError as missing:  # a missing tool is an error, never a skip
    raise ImportError(
        f"{missing.name} not found: pip install -r e2e/requirements.txt "
        "(e2e/install-deps.sh builds the e2e virtualenv from it)"
    ) from missing

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
CRD = REPO / "crds" / "mailincidents.mailops.dev.yaml"
MULTI_CLUSTER = REPO / "docs" / "multi-cluster.md"
MANIFESTS = REPO / "docs" / "multi-cluster"


def documents():
    """README.md, TESTING.md, ARCHITECTURE.md and every Markdown file under docs/."""
    found = [REPO / "README.md", REPO / "TESTING.md", REPO / "ARCHITECTURE.md"]
    found += sorted((REPO / "docs").rglob("*.md"))
    return found


FENCE = re.compile(r"^\s*(```|~~~)")


def split_fences(text):
    """(prose lines, [(info string, code lines)]) of a Markdown text."""
    prose, blocks, block, marker = [], [], None, None
    for line in text.splitlines():
        match = FENCE.match(line)
        if block is None and match:
            marker = match.group(1)
            block = (line.strip()[3:].strip(), [])
            prose.append("")
        elif block is not None and line.strip().startswith(marker) and line.strip(marker[0] + " ") == "":
            blocks.append(block)
            block = None
            prose.append("")
        elif block is not None:
            block[1].append(line)
            prose.append("")
        else:
            prose.append(line)
    if block is not None:
        raise AssertionError("a fenced code block is never closed")
    return prose, blocks


CODE_SPAN = re.compile(r"(`+)(.+?)\1")


def without_code_spans(line):
    return CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line)


def slug(heading):
    """GitHub's anchor for a heading: the rendered text lower-cased, every character but
    letters, digits, spaces, '-' and '_' dropped, spaces turned into '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").replace("*", "")
    text = text.strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(path):
    prose, _ = split_fences(path.read_text())
    seen, found = {}, set()
    for line in prose:
        match = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            found.add(base if count == 0 else f"{base}-{count}")
            seen[base] = count + 1
        for name in re.findall(r"""<a\s+(?:name|id)=["']([^"']+)["']""", line):
            found.add(name)
    return found


INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HTML_LINK = re.compile(r"""<(?:a|img)\s[^>]*(?:href|src)=["']([^"']+)["']""")


def links(path):
    """(line number, target) of every link in a Markdown file, code excluded."""
    prose, _ = split_fences(path.read_text())
    for number, line in enumerate(prose, 1):
        line = without_code_spans(line)
        for pattern in (INLINE_LINK, HTML_LINK):
            for target in pattern.findall(line):
                yield number, target
        match = REFERENCE.match(line)
        if match:
            yield number, match.group(1)


def is_external(target):
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target)) or target.startswith("//")


class Links(unittest.TestCase):
    def test_the_documents_exist(self):
        for path in documents():
            self.assertTrue(path.is_file(), f"{path.relative_to(REPO)} is missing")

    def test_every_relative_link_reaches_a_file_and_its_heading(self):
        problems = []
        anchor_cache = {}
        count = 0
        for path in documents():
            for number, target in links(path):
                if is_external(target):
                    continue
                count += 1
                where = f"{path.relative_to(REPO)}:{number}: {target}"
                file_part, _, fragment = target.partition("#")
                file_part = urllib.parse.unquote(file_part)
                resolved = (path.parent / file_part).resolve() if file_part else path
                if not resolved.exists():
                    problems.append(f"{where}: no such file")
                    continue
                if REPO not in resolved.parents and resolved != REPO:
                    problems.append(f"{where}: leaves the repository")
                    continue
                if fragment:
                    if resolved.suffix != ".md":
                        if not re.fullmatch(r"L\d+(-L\d+)?", fragment):
                            problems.append(f"{where}: an anchor into a file that is not Markdown")
                        continue
                    if resolved not in anchor_cache:
                        anchor_cache[resolved] = anchors(resolved)
                    if urllib.parse.unquote(fragment) not in anchor_cache[resolved]:
                        problems.append(f"{where}: no heading #{fragment} in {resolved.relative_to(REPO)}")
        self.assertGreater(count, 0, "no relative link found at all: the parser is broken")
        self.assertEqual(problems, [], "broken links:\n" + "\n".join(problems))


def make_targets():
    targets = set()
    for line in (REPO / "Makefile").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+(?:\s+[A-Za-z0-9_.-]+)*)\s*:(?![:=])", line)
        if match:
            targets.update(match.group(1).split())
    return targets


MAKE = re.compile(r"(?:^|[\s;&|(`$])make((?:\s+[A-Za-z0-9_.~/=${}-]+)+)")


def named_targets(text):
    """The targets of each `make ...` command in a code span or code block."""
    for match in MAKE.finditer(text):
        for word in match.group(1).split():
            if "=" in word:
                continue  # a variable: make plugin PREFIX=~/.local
            if word.startswith("-"):
                break
            yield word


def make_commands(path):
    """(line number, target) of every make target a document names in its code."""
    prose, blocks = split_fences(path.read_text())
    for number, line in enumerate(prose, 1):
        for span in CODE_SPAN.finditer(line):
            code = span.group(2).strip()
            if code.startswith("make ") or code == "make":
                for target in named_targets(code):
                    yield number, target
    for info, lines in blocks:
        if info.split()[:1] not in ([], ["sh"], ["bash"], ["shell"], ["console"]):
            continue
        for line in lines:
            command = line.split("#", 1)[0].strip()
            command = re.sub(r"^\$\s+", "", command)
            if command.startswith("make ") or command == "make":
                for target in named_targets(command):
                    yield 0, target


class MakeTargets(unittest.TestCase):
    def test_the_makefile_is_read(self):
        self.assertTrue({"demo", "test"} <= make_targets(), make_targets())

    def test_every_make_target_the_docs_name_exists(self):
        targets = make_targets()
        named, problems = 0, []
        for path in documents():
            for number, target in make_commands(path):
                named += 1
                if target not in targets:
                    where = f"{path.relative_to(REPO)}:{number}" if number else f"{path.relative_to(REPO)} (code block)"
                    problems.append(f"{where}: make {target}: no such target in the Makefile")
        self.assertGreater(named, 0, "no make command found at all: the parser is broken")
        self.assertEqual(problems, [], "\n".join(problems))


def strict(schema):
    """The schema as kubectl's strict field validation reads it: an object whose
    properties are listed admits no other field (unless it preserves unknown fields)."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (
                node.get("type") == "object"
                and "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def incident_validator():
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v.get("served") and v.get("storage")]
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    schema.setdefault("properties", {}).update(
        {
            "apiVersion": {"type": "string", "enum": [f"{crd['spec']['group']}/{version['name']}"]},
            "kind": {"type": "string", "enum": [crd["spec"]["names"]["kind"]]},
            "metadata": {
                "type": "object",
                "required": ["name", "namespace"],
                "properties": {
                    "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
                    "namespace": {"type": "string"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
        }
    )
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
    schema = strict(schema)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    cls.check_schema(schema)
    return cls(schema)


def errors(validator, incident):
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in validator.iter_errors(incident)]


def manifests():
    """Every YAML file under docs/multi-cluster/ with its documents."""
    found = []
    for path in sorted(MANIFESTS.rglob("*.y*ml")):
        found.append((path, [d for d in yaml.safe_load_all(path.read_text()) if d is not None]))
    return found


class MultiCluster(unittest.TestCase):
    def test_every_manifest_shown_is_a_file_under_docs_multi_cluster(self):
        _, blocks = split_fences(MULTI_CLUSTER.read_text())
        shown = ["\n".join(lines).strip() + "\n" for info, lines in blocks if info.split()[:1] == ["yaml"]]
        self.assertGreater(len(shown), 0, "docs/multi-cluster.md shows no YAML")
        files = {p.read_text().strip() + "\n": p for p in MANIFESTS.rglob("*.y*ml")}
        for block in shown:
            self.assertIn(block, files, "docs/multi-cluster.md shows YAML that is no file under docs/multi-cluster/ "
                          "(copy the file's content exactly):\n" + block)
        text = MULTI_CLUSTER.read_text()
        for path in files.values():
            self.assertIn(path.relative_to(MULTI_CLUSTER.parent).as_posix(), text,
                          f"docs/multi-cluster.md does not name {path.relative_to(REPO)}")

    def test_every_manifest_parses_as_kubernetes_objects(self):
        found = manifests()
        self.assertGreater(len(found), 0)
        for path, docs in found:
            self.assertGreater(len(docs), 0, f"{path}: empty")
            for doc in docs:
                for key in ("apiVersion", "kind", "metadata"):
                    self.assertIn(key, doc, f"{path.relative_to(REPO)}: an object without {key}")
                self.assertIn("name", doc["metadata"], f"{path.relative_to(REPO)}: a {doc['kind']} without a name")

    def test_the_incidents_carried_are_valid_against_the_crd(self):
        validator = incident_validator()
        incidents = [(p, d) for p, docs in manifests() for d in docs if d["kind"] == "MailIncident"]
        self.assertGreater(len(incidents), 0, "docs/multi-cluster/ carries no MailIncident")
        for path, incident in incidents:
            self.assertEqual(errors(validator, incident), [], f"{path.relative_to(REPO)}")

    def test_the_schema_check_refuses_what_the_api_server_refuses(self):
        validator = incident_validator()
        (path, incident), *_ = [(p, d) for p, docs in manifests() for d in docs if d["kind"] == "MailIncident"]
        cases = {
            "a misspelt field": lambda i: i["spec"].update({"modee": "TempFail"}),
            "an unknown mode": lambda i: i["spec"].update({"mode": "Tempfail"}),
            "no reason": lambda i: i["spec"].pop("reason"),
            "no targets": lambda i: i["spec"].pop("targets"),
            "another API version": lambda i: i.update({"apiVersion": "mailops.dev/v1"}),
        }
        for name, change in cases.items():
            with self.subTest(name):
                changed = copy.deepcopy(incident)
                change(changed)
                self.assertNotEqual(errors(validator, changed), [], f"{name} passed the schema check")

    def test_the_fan_out_objects_point_at_the_incidents(self):
        kinds = {d["kind"]: d for _, docs in manifests() for d in docs}
        appset = kinds.get("ApplicationSet")
        self.assertIsNotNone(appset, "no Argo CD ApplicationSet")
        self.assertEqual(appset["apiVersion"], "argoproj.io/v1alpha1")
        self.assertIn("clusters", appset["spec"]["generators"][0])
        kustomizations = [d for _, docs in manifests() for d in docs if d["kind"] == "Kustomization"]
        self.assertGreater(len(kustomizations), 1, "Flux: one Kustomization per cluster")
        incident_dirs = {p.parent.relative_to(MANIFESTS).as_posix() for p, docs in manifests()
                         for d in docs if d["kind"] == "MailIncident"}
        self.assertEqual(appset["spec"]["template"]["spec"]["source"]["path"],
                         "incidents", "the ApplicationSet syncs the incidents' folder")
        self.assertIn("incidents", incident_dirs)
        for k in kustomizations:
            self.assertEqual(k["apiVersion"], "kustomize.toolkit.fluxcd.io/v1")
            self.assertEqual(k["spec"]["path"], "./incidents")
            self.assertIn("secretRef", k["spec"]["kubeConfig"])
            checks = k["spec"].get("healthChecks", [])
            self.assertTrue(k["spec"].get("wait") is True or any(c["kind"] == "MailIncident" for c in checks),
                            f"{k['metadata']['name']} waits for no incident's health")


if __name__ == "__main__":
    unittest.main()
