"""The chart as Helm's own engine (helm-python-sdk, Helm v4's Go SDK) renders it."""

import os
import pathlib

import helm_python as helm
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "mail-incident-operator"
# The release that installs the same objects, under the same names, as `deploy/`.
RELEASE = "mail-incident-operator"
NAMESPACE = "mail-incident-operator"

# Helm's engine logs at INFO; the tests read results, not logs.
helm.disable_logging()


def manifests(values=None, name=RELEASE, namespace=NAMESPACE):
    """What the chart renders: template path to text, NOTES.txt included."""
    with helm.Chart.load(CHART) as chart:
        return chart.render(values or {}, name=name, namespace=namespace, is_install=True)


def render(values=None, name=RELEASE, namespace=NAMESPACE):
    """The objects the chart renders, CRDs first (as `helm install` orders them)."""
    objects = [
        document
        for path, text in sorted(manifests(values, name, namespace).items())
        if not path.endswith("NOTES.txt")
        for document in yaml.safe_load_all(text)
        if document
    ]
    return sorted(objects, key=lambda o: o["kind"] != "CustomResourceDefinition")


def notes(values=None):
    return manifests(values)[f"{chart_name()}/templates/NOTES.txt"]


def chart_name():
    return yaml.safe_load((CHART / "Chart.yaml").read_text())["name"]


def kubectl():
    path = os.environ.get("E2E_KUBECTL")
    if not path:
        raise RuntimeError("E2E_KUBECTL is not set: run through e2e/run-artefact-tests.sh (make artefacts)")
    return path
