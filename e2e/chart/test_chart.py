"""The Helm chart, rendered, linted and schema-checked by Helm's own engine, and compared
with what the kustomize base in deploy/ installs."""

import copy
import json
import subprocess
import tomllib
import unittest

import helm_python as helm
import yaml

import chart

RUNBOOKS = "https://github.com/mailops-dev/mail-incident-operator/blob/main/docs/runbooks/"


def find(objects, kind, name=None):
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    return found


def only(objects, kind, name=None):
    found = find(objects, kind, name)
    if len(found) != 1:
        raise AssertionError(f"expected one {kind} {name or ''}, found {len(found)}")
    return found[0]


def kinds(objects):
    return sorted(o["kind"] for o in objects)


def container(objects):
    return only(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]


class Lint(unittest.TestCase):
    def test_the_chart_lints_clean_in_strict_mode(self):
        report = helm.lint(chart.CHART, strict=True, kube_version="v1.20.2")
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        self.assertEqual(report["errors"], [])
        self.assertEqual(problems, [])

    def test_every_toggle_on_lints_clean_too(self):
        report = helm.lint(chart.CHART, ALL_ON, strict=True, kube_version="v1.20.2")
        self.assertEqual([m for m in report["messages"] if m["severity"] >= 2], [])

    def test_the_chart_can_be_a_subchart_with_global_values(self):
        # A parent chart hands every subchart its `global` values.
        values = {"global": {"imageRegistry": "registry.example"}}
        report = helm.lint(chart.CHART, values, strict=True, kube_version="v1.20.2")
        self.assertEqual([m for m in report["messages"] if m["severity"] >= 2], [])
        self.assertEqual(kinds(chart.render(values)), kinds(chart.render()))
        with self.assertRaises(helm.HelmValuesError) as refused:
            chart.render({"globals": {}})
        self.assertIn("globals", str(refused.exception), "other unknown keys are still refused")

    def test_the_charts_crd_is_a_copy_of_the_committed_one_not_a_link_out_of_the_chart(self):
        copy_in_chart = chart.CHART / "files" / "crds" / "mailincidents.mailops.dev.yaml"
        self.assertFalse(copy_in_chart.is_symlink(), "a packaged chart holds no link out of itself")
        committed = chart.REPO / "crds" / "mailincidents.mailops.dev.yaml"
        self.assertEqual(copy_in_chart.read_text(), committed.read_text(), "run `make crds`")

    def test_versions_follow_the_operator(self):
        meta = yaml.safe_load((chart.CHART / "Chart.yaml").read_text())
        cargo = tomllib.loads((chart.REPO / "Cargo.toml").read_text())
        self.assertEqual(meta["version"], cargo["package"]["version"])
        self.assertEqual(meta["appVersion"], cargo["package"]["version"])


ALL_ON = {
    "podDisruptionBudget": {"enabled": True},
    "metrics": {
        "podMonitor": {"enabled": True},
        "agentPodMonitor": {"enabled": True},
    },
    "prometheusRule": {"enabled": True},
    "grafanaDashboard": {"enabled": True},
    "rbac": {"bounce": {"aggregateToAdmin": True}},
    "webhook": {"certificates": "certManager"},
}

CERT_MANAGER = {"webhook": {"certificates": "certManager"}}
CLUSTER_ISSUER = {"name": "cluster-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}


class Defaults(unittest.TestCase):
    objects = chart.render()

    def test_defaults_install_the_crd_operator_rbac_services_and_webhook_only(self):
        self.assertEqual(
            kinds(self.objects),
            [
                "ClusterRole",
                "ClusterRole",
                "ClusterRole",
                "ClusterRole",
                "ClusterRoleBinding",
                "CustomResourceDefinition",
                "Deployment",
                "MutatingWebhookConfiguration",
                "Role",
                "Role",
                "RoleBinding",
                "RoleBinding",
                "Service",
                "Service",
                "ServiceAccount",
            ],
        )

    def test_every_object_carries_the_standard_labels(self):
        for o in self.objects:
            labels = o["metadata"]["labels"]
            with self.subTest(kind=o["kind"], name=o["metadata"]["name"]):
                self.assertEqual(labels["app.kubernetes.io/name"], "mail-incident-operator")
                self.assertEqual(labels["app.kubernetes.io/instance"], chart.RELEASE)
                self.assertEqual(labels["app.kubernetes.io/managed-by"], "Helm")
                self.assertEqual(labels["app.kubernetes.io/version"], "0.1.0")
                self.assertEqual(labels["helm.sh/chart"], "mail-incident-operator-0.1.0")

    def test_namespaced_objects_go_to_the_release_namespace(self):
        for o in self.objects:
            with self.subTest(kind=o["kind"]):
                self.assertEqual(
                    o["metadata"].get("namespace"),
                    None if o["kind"] in CLUSTER_SCOPED else chart.NAMESPACE,
                )

    def test_the_pod_runs_non_root_read_only_without_capabilities_under_runtime_default_seccomp(self):
        pod = only(self.objects, "Deployment")["spec"]["template"]["spec"]
        self.assertEqual(
            pod["securityContext"],
            {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
        )
        self.assertEqual(
            container(self.objects)["securityContext"],
            {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}},
        )
        self.assertNotIn("hostNetwork", pod)

    def test_the_selector_is_the_stable_labels_and_the_pods_carry_them(self):
        deployment = only(self.objects, "Deployment")
        selector = deployment["spec"]["selector"]["matchLabels"]
        self.assertEqual(
            selector,
            {"app.kubernetes.io/name": "mail-incident-operator", "app.kubernetes.io/instance": chart.RELEASE},
        )
        self.assertLessEqual(selector.items(), deployment["spec"]["template"]["metadata"]["labels"].items())
        for service in find(self.objects, "Service"):
            with self.subTest(service=service["metadata"]["name"]):
                self.assertEqual(service["spec"]["selector"], selector)

    def test_the_crd_is_kept_on_uninstall(self):
        crd = only(self.objects, "CustomResourceDefinition")
        self.assertEqual(crd["metadata"]["annotations"], {"helm.sh/resource-policy": "keep"})

    def test_the_image_defaults_to_the_app_version(self):
        self.assertEqual(container(self.objects)["image"], "mail-incident-operator:0.1.0")

    def test_the_notes_print_an_incident_that_kubectl_would_apply(self):
        text = chart.notes()
        start = text.index("apiVersion: mailops.dev/v1alpha1")
        end = text.index("  YAML", start)
        incident = yaml.safe_load("\n".join(line[2:] for line in text[start:end].splitlines()))
        self.assertEqual(incident["kind"], "MailIncident")
        self.assertEqual(incident["spec"]["mode"], "TempFail")
        schema = only(self.objects, "CustomResourceDefinition")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        self.assertLessEqual(set(incident["spec"]), set(schema["properties"]["spec"]["properties"]))
        self.assertIn("kubectl -n mail wait mailinc/storage-outage --for=condition=Ready", text)


class Toggles(unittest.TestCase):
    def test_crds_enabled_false_leaves_the_crd_out(self):
        self.assertEqual(find(chart.render({"crds": {"enabled": False}}), "CustomResourceDefinition"), [])

    def test_crds_keep_false_lets_helm_delete_it(self):
        crd = only(chart.render({"crds": {"keep": False}}), "CustomResourceDefinition")
        self.assertNotIn("annotations", crd["metadata"])

    def test_rbac_create_false_leaves_every_role_and_binding_out(self):
        objects = chart.render({"rbac": {"create": False}})
        for kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
            self.assertEqual(find(objects, kind), [], kind)

    def test_the_aggregated_roles_give_edit_and_view_their_rights_and_can_be_turned_off(self):
        objects = chart.render()
        edit = only(objects, "ClusterRole", "mail-incident-operator-edit")
        view = only(objects, "ClusterRole", "mail-incident-operator-view")
        self.assertEqual(edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"], "true")
        self.assertEqual(edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"], "true")
        self.assertEqual(view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"], "true")
        self.assertNotIn("mailincidents/status", edit["rules"][0]["resources"])
        self.assertEqual(set(view["rules"][0]["verbs"]), {"get", "list", "watch"})
        off = chart.render({"rbac": {"aggregateToDefaultRoles": False}})
        self.assertEqual(
            sorted(o["metadata"]["name"] for o in find(off, "ClusterRole")),
            ["mail-incident-operator", "mail-incident-operator-bounce"],
        )

    def test_an_existing_service_account_must_be_named(self):
        with self.assertRaises(helm.HelmRenderError) as refused:
            chart.render({"serviceAccount": {"create": False}})
        self.assertIn("serviceAccount.name is required", str(refused.exception))
        objects = chart.render({"serviceAccount": {"create": False, "name": "site-sa"}})
        self.assertEqual(find(objects, "ServiceAccount"), [])
        self.assertEqual(only(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"], "site-sa")
        self.assertEqual(only(objects, "ClusterRoleBinding")["subjects"][0]["name"], "site-sa")

    def test_monitors_keep_the_incident_namespace_label(self):
        objects = chart.render(ALL_ON)
        service_monitor = only(chart.render({"metrics": {"serviceMonitor": {"enabled": True}}}), "ServiceMonitor")
        self.assertTrue(service_monitor["spec"]["endpoints"][0]["honorLabels"])
        self.assertEqual(service_monitor["spec"]["endpoints"][0]["port"], "http")
        operator_pods, agents = find(objects, "PodMonitor")
        self.assertTrue(operator_pods["spec"]["podMetricsEndpoints"][0]["honorLabels"])
        self.assertEqual(agents["spec"]["namespaceSelector"], {"any": True})
        self.assertEqual(agents["spec"]["podMetricsEndpoints"][0]["port"], "agent-http")
        self.assertEqual(agents["spec"]["selector"], {"matchLabels": {"app.kubernetes.io/component": "mta"}})

    def test_the_prometheus_rule_is_the_rule_file_with_the_runbook_base_chosen(self):
        rules_file = chart.CHART / "files" / "prometheus" / "mail-incident-operator.rules.yaml"
        plain = yaml.safe_load(rules_file.read_text())
        rule = only(chart.render(ALL_ON), "PrometheusRule")
        self.assertEqual(rule["spec"], plain)
        mirror = "https://wiki.example.net/mail/runbooks/"
        moved = only(chart.render({**ALL_ON, "prometheusRule": {"enabled": True, "runbookBaseURL": mirror}}), "PrometheusRule")
        urls = [r["annotations"]["runbook_url"] for g in moved["spec"]["groups"] for r in g["rules"] if "alert" in r]
        self.assertTrue(urls)
        for url in urls:
            self.assertTrue(url.startswith(mirror), url)
        self.assertNotIn(RUNBOOKS, json.dumps(moved))

    def test_the_dashboard_config_map_carries_the_json_unchanged_and_the_sidecar_label(self):
        dashboard = (chart.CHART / "files" / "grafana" / "mail-incident-operator.json").read_text()
        config_map = only(
            chart.render({"grafanaDashboard": {"enabled": True, "namespace": "monitoring", "annotations": {"grafana_folder": "Mail"}}}),
            "ConfigMap",
        )
        self.assertEqual(config_map["metadata"]["labels"]["grafana_dashboard"], "1")
        self.assertEqual(config_map["metadata"]["namespace"], "monitoring")
        self.assertEqual(config_map["metadata"]["annotations"], {"grafana_folder": "Mail"})
        self.assertEqual(config_map["data"]["mail-incident-operator.json"], dashboard)

    def test_the_monitoring_objects_are_off_by_default(self):
        for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap", "PodDisruptionBudget"):
            self.assertEqual(find(chart.render(), kind), [], kind)

    def test_combinations_that_cannot_work_are_refused_with_why(self):
        for values, why in [
            (
                {"service": {"enabled": False}, "metrics": {"serviceMonitor": {"enabled": True}}},
                "metrics.serviceMonitor.enabled needs service.enabled",
            ),
            (
                {"metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}},
                "enable one of metrics.serviceMonitor and metrics.podMonitor",
            ),
            (
                {"podDisruptionBudget": {"enabled": True, "minAvailable": 2}},
                "podDisruptionBudget.minAvailable must be below replicaCount",
            ),
            (
                {"webhook": {"certManager": {"issuerRef": CLUSTER_ISSUER}}},
                "webhook.certManager.issuerRef needs webhook.certificates=certManager",
            ),
        ]:
            with self.subTest(values=values):
                with self.assertRaises(helm.HelmRenderError) as refused:
                    chart.render(values)
                self.assertIn(why, str(refused.exception))
        budget = only(chart.render({"podDisruptionBudget": {"enabled": True, "minAvailable": "50%"}}), "PodDisruptionBudget")
        self.assertEqual(budget["spec"]["minAvailable"], "50%")

    def test_the_disruption_budget_needs_more_than_one_replica(self):
        budget = only(chart.render(ALL_ON), "PodDisruptionBudget")
        self.assertEqual(budget["spec"]["minAvailable"], 1)
        self.assertEqual(find(chart.render({**ALL_ON, "replicaCount": 1}), "PodDisruptionBudget"), [])

    def test_operator_settings_become_its_flags_and_env(self):
        objects = chart.render(
            {
                "operator": {"watchNamespace": "mail", "leaseSeconds": 30, "concurrency": 4, "logFormat": "text"},
                "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
                "image": {"digest": "sha256:" + "a" * 64},
            }
        )
        c = container(objects)
        self.assertEqual(
            c["args"],
            ["run", "--log-format=text", "--lease-name=mail-incident-operator", "--lease-seconds=30", "--concurrency=4"],
        )
        env = {e["name"]: e.get("value") for e in c["env"]}
        self.assertEqual(env["WATCH_NAMESPACE"], "mail")
        self.assertEqual(env["HTTPS_PROXY"], "http://proxy:3128")
        self.assertEqual(c["image"], "mail-incident-operator@sha256:" + "a" * 64)

    def test_another_release_name_prefixes_every_cluster_wide_name(self):
        objects = chart.render(name="mail")
        names = sorted(o["metadata"]["name"] for o in find(objects, "ClusterRole"))
        self.assertEqual(
            names,
            [
                "mail-mail-incident-operator",
                "mail-mail-incident-operator-bounce",
                "mail-mail-incident-operator-edit",
                "mail-mail-incident-operator-view",
            ],
        )
        self.assertIn("--lease-name=mail-mail-incident-operator", container(objects)["args"])

    def test_another_release_name_names_its_webhook_objects_and_tells_the_operator(self):
        objects = chart.render(name="mail")
        args = container(objects)["args"]
        for flag in (
            "--webhook-service=mail-mail-incident-operator-webhook",
            "--webhook-secret=mail-mail-incident-operator-webhook-tls",
            "--webhook-configuration=mail-mail-incident-operator",
        ):
            self.assertIn(flag, args)
        only(objects, "Service", "mail-mail-incident-operator-webhook")
        webhook = only(objects, "MutatingWebhookConfiguration", "mail-mail-incident-operator")["webhooks"][0]
        self.assertEqual(webhook["clientConfig"]["service"]["name"], "mail-mail-incident-operator-webhook")
        operator = only(objects, "ClusterRole", "mail-mail-incident-operator")
        self.assertIn(
            {
                "apiGroups": ["admissionregistration.k8s.io"],
                "resources": ["mutatingwebhookconfigurations"],
                "resourceNames": ["mail-mail-incident-operator"],
                "verbs": ["get", "list", "watch", "patch"],
            },
            operator["rules"],
        )
        secrets = only(objects, "Role", "mail-mail-incident-operator-secrets")
        # The signing key's name is the operator's own, whatever the release.
        self.assertEqual(
            secrets["rules"][1]["resourceNames"],
            ["mail-mail-incident-operator-webhook-tls", "mail-incident-operator-signing-key"],
        )


CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "MutatingWebhookConfiguration"}


class Webhook(unittest.TestCase):
    """The admission webhook that guards HardReject, the role granting `bounce`, and who
    keeps the webhook's certificate: the operator (self) or cert-manager."""

    def test_the_bounce_role_is_aggregated_into_no_role_unless_asked(self):
        bounce = only(chart.render(), "ClusterRole", "mail-incident-operator-bounce")
        self.assertEqual(
            bounce["rules"], [{"apiGroups": ["mailops.dev"], "resources": ["mailincidents"], "verbs": ["bounce"]}]
        )
        self.assertFalse([k for k in bounce["metadata"]["labels"] if k.startswith("rbac.authorization.k8s.io/")])
        # No other role the chart installs carries the verb.
        for role in find(chart.render(), "ClusterRole"):
            if role["metadata"]["name"] != "mail-incident-operator-bounce":
                self.assertNotIn("bounce", json.dumps(role["rules"]), role["metadata"]["name"])
        admins = only(chart.render({"rbac": {"bounce": {"aggregateToAdmin": True}}}), "ClusterRole", "mail-incident-operator-bounce")
        labels = admins["metadata"]["labels"]
        self.assertEqual(labels["rbac.authorization.k8s.io/aggregate-to-admin"], "true")
        self.assertNotIn("rbac.authorization.k8s.io/aggregate-to-edit", labels)

    def test_the_notes_say_how_to_grant_bounce(self):
        text = chart.notes()
        self.assertIn("`bounce`", text)
        self.assertIn("kubectl create rolebinding", text)
        self.assertIn("--clusterrole=mail-incident-operator-bounce", text)
        self.assertIn("neither `edit` nor `admin`", text)
        admins = chart.manifests({"rbac": {"bounce": {"aggregateToAdmin": True}}})[f"{chart.chart_name()}/templates/NOTES.txt"]
        self.assertIn("namespace admins have", admins)

    def test_the_webhook_fails_open_and_its_timeout_is_a_value(self):
        webhook = only(chart.render(), "MutatingWebhookConfiguration")["webhooks"][0]
        self.assertEqual(webhook["failurePolicy"], "Ignore")
        self.assertEqual(webhook["timeoutSeconds"], 5)
        self.assertEqual(webhook["sideEffects"], "None")
        self.assertEqual(webhook["clientConfig"]["service"]["namespace"], chart.NAMESPACE)
        longer = only(chart.render({"webhook": {"timeoutSeconds": 12}}), "MutatingWebhookConfiguration")
        self.assertEqual(longer["webhooks"][0]["timeoutSeconds"], 12)

    def test_self_mode_renders_no_ca_bundle_and_lets_the_operator_keep_it(self):
        objects = chart.render()
        configuration = only(objects, "MutatingWebhookConfiguration")
        self.assertNotIn("caBundle", configuration["webhooks"][0]["clientConfig"])
        self.assertNotIn("annotations", configuration["metadata"])
        self.assertFalse([a for a in container(objects)["args"] if a.startswith("--webhook")])
        self.assertFalse([o for o in objects if o["apiVersion"].startswith("cert-manager.io/")])
        operator = only(objects, "ClusterRole", "mail-incident-operator")
        self.assertIn("mutatingwebhookconfigurations", json.dumps(operator["rules"]))
        secrets = only(objects, "Role", "mail-incident-operator-secrets")
        self.assertEqual(
            secrets["rules"][1],
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "resourceNames": ["mail-incident-operator-webhook-tls", "mail-incident-operator-signing-key"],
                "verbs": ["get", "list", "watch", "update"],
            },
        )

    def test_cert_manager_mode_makes_a_ca_and_the_serving_certificate_and_injects_it(self):
        objects = chart.render(CERT_MANAGER)
        issuers = {o["metadata"]["name"]: o for o in find(objects, "Issuer")}
        certificates = {o["metadata"]["name"]: o for o in find(objects, "Certificate")}
        self.assertEqual(set(issuers), {"mail-incident-operator-selfsigned", "mail-incident-operator-ca"})
        self.assertEqual(set(certificates), {"mail-incident-operator-ca", "mail-incident-operator-webhook"})
        for o in [*issuers.values(), *certificates.values()]:
            self.assertEqual(o["apiVersion"], "cert-manager.io/v1")
            self.assertEqual(o["metadata"]["namespace"], chart.NAMESPACE)
        self.assertEqual(issuers["mail-incident-operator-selfsigned"]["spec"], {"selfSigned": {}})
        ca = certificates["mail-incident-operator-ca"]["spec"]
        self.assertTrue(ca["isCA"])
        self.assertEqual(ca["issuerRef"], {"group": "cert-manager.io", "kind": "Issuer", "name": "mail-incident-operator-selfsigned"})
        self.assertEqual(issuers["mail-incident-operator-ca"]["spec"], {"ca": {"secretName": ca["secretName"]}})
        serving = certificates["mail-incident-operator-webhook"]["spec"]
        self.assertEqual(serving["secretName"], "mail-incident-operator-webhook-tls")
        self.assertEqual(
            serving["dnsNames"],
            [
                "mail-incident-operator-webhook.mail-incident-operator.svc",
                "mail-incident-operator-webhook.mail-incident-operator.svc.cluster.local",
            ],
        )
        self.assertEqual(serving["issuerRef"], {"group": "cert-manager.io", "kind": "Issuer", "name": "mail-incident-operator-ca"})
        self.assertIn("server auth", serving["usages"])
        self.assert_cert_manager_keeps_the_certificate(objects)

    def test_cert_manager_mode_with_an_issuer_renders_only_the_serving_certificate(self):
        objects = chart.render({"webhook": {"certificates": "certManager", "certManager": {"issuerRef": CLUSTER_ISSUER}}})
        self.assertEqual(find(objects, "Issuer"), [])
        serving = only(objects, "Certificate")
        self.assertEqual(serving["metadata"]["name"], "mail-incident-operator-webhook")
        self.assertEqual(serving["spec"]["issuerRef"], CLUSTER_ISSUER)
        self.assertEqual(serving["spec"]["secretName"], "mail-incident-operator-webhook-tls")
        self.assert_cert_manager_keeps_the_certificate(objects)
        # An issuer of another group, its kind left to cert-manager's default.
        external = only(
            chart.render({"webhook": {"certificates": "certManager", "certManager": {"issuerRef": {"name": "vault", "group": "example.dev"}}}}),
            "Certificate",
        )
        self.assertEqual(external["spec"]["issuerRef"], {"name": "vault", "group": "example.dev"})

    def test_cert_manager_mode_follows_the_release_name_and_namespace(self):
        objects = chart.render(CERT_MANAGER, name="mail", namespace="mail-ops")
        serving = only(objects, "Certificate", "mail-mail-incident-operator-webhook")
        service = only(objects, "Service", "mail-mail-incident-operator-webhook")
        self.assertEqual(serving["spec"]["dnsNames"][0], "mail-mail-incident-operator-webhook.mail-ops.svc")
        self.assertEqual(serving["spec"]["secretName"], "mail-mail-incident-operator-webhook-tls")
        self.assertEqual(service["metadata"]["namespace"], "mail-ops")
        configuration = only(objects, "MutatingWebhookConfiguration")
        self.assertEqual(
            configuration["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            "mail-ops/mail-mail-incident-operator-webhook",
        )
        self.assertIn("--webhook-secret=mail-mail-incident-operator-webhook-tls", container(objects)["args"])

    def assert_cert_manager_keeps_the_certificate(self, objects):
        configuration = only(objects, "MutatingWebhookConfiguration")
        self.assertEqual(
            configuration["metadata"]["annotations"],
            {"cert-manager.io/inject-ca-from": "mail-incident-operator/mail-incident-operator-webhook"},
        )
        self.assertNotIn("caBundle", configuration["webhooks"][0]["clientConfig"])
        self.assertIn("--webhook-certificates=external", container(objects)["args"])
        # cert-manager writes the caBundle and the webhook's Secret: the operator only
        # reads that Secret, and no longer touches its webhook configuration.
        operator = only(objects, "ClusterRole", "mail-incident-operator")
        self.assertNotIn("mutatingwebhookconfigurations", json.dumps(operator["rules"]))
        rules = only(objects, "Role", "mail-incident-operator-secrets")["rules"]
        tls = [r for r in rules if "mail-incident-operator-webhook-tls" in r.get("resourceNames", [])]
        self.assertEqual(len(tls), 1)
        self.assertEqual(tls[0]["verbs"], ["get", "list", "watch"])
        key = [r for r in rules if "mail-incident-operator-signing-key" in r.get("resourceNames", [])]
        self.assertEqual(key[0]["verbs"], ["get", "list", "watch", "update"])


class Schema(unittest.TestCase):
    """values.schema.json refuses wrong types and out-of-bound numbers, naming the key,
    both on its own and when rendering (as `helm install` does)."""

    REFUSED = [
        ({"replicaCount": "2"}, "/replicaCount"),
        ({"replicaCount": 0}, "/replicaCount"),
        ({"replicaCount": 11}, "/replicaCount"),
        ({"crds": {"enabled": "yes"}}, "/crds/enabled"),
        ({"crd": {"enabled": True}}, "'crd' not allowed"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"image": {"digest": "latest"}}, "/image/digest"),
        ({"operator": {"leaseSeconds": 2}}, "/operator/leaseSeconds"),
        ({"operator": {"concurrency": 0}}, "/operator/concurrency"),
        ({"operator": {"logFormat": "xml"}}, "/operator/logFormat"),
        ({"operator": {"port": 80}}, "/operator/port"),
        ({"extraEnv": {"HTTPS_PROXY": "x"}}, "/extraEnv"),
        ({"metrics": {"podMonitor": {"interval": "often"}}}, "/metrics/podMonitor/interval"),
        ({"prometheusRule": {"runbookBaseURL": "wiki/runbooks"}}, "/prometheusRule/runbookBaseURL"),
        ({"grafanaDashboard": {"labels": {"grafana_dashboard": 1}}}, "/grafanaDashboard/labels/grafana_dashboard"),
        ({"podLabels": {"team": True}}, "/podLabels/team"),
        ({"rbac": {"bounce": {"aggregateToAdmin": "yes"}}}, "/rbac/bounce/aggregateToAdmin"),
        ({"webhook": {"timeoutSeconds": 0}}, "/webhook/timeoutSeconds"),
        ({"webhook": {"timeoutSeconds": 31}}, "/webhook/timeoutSeconds"),
        ({"webhook": {"timeoutSeconds": "5"}}, "/webhook/timeoutSeconds"),
        ({"webhook": {"certificates": "vault"}}, "/webhook/certificates"),
        ({"webhook": {"failurePolicy": "Fail"}}, "'failurePolicy' not allowed"),
        ({"webhook": {"certManager": {"issuerRef": {"kind": "ClusterIssuer"}}}}, "/webhook/certManager/issuerRef"),
        ({"webhook": {"certManager": {"issuerRef": {"name": "ca", "namespace": "x"}}}}, "/webhook/certManager/issuerRef"),
    ]

    def test_wrong_values_are_refused_naming_the_key(self):
        with helm.Chart.load(chart.CHART) as loaded:
            for values, where in self.REFUSED:
                with self.subTest(values=values):
                    with self.assertRaises(helm.HelmValuesError) as refused:
                        loaded.validate_schema(values)
                    self.assertIn(where, str(refused.exception))
                    with self.assertRaises(helm.HelmValuesError):
                        loaded.render(copy.deepcopy(values), name=chart.RELEASE, namespace=chart.NAMESPACE)

    def test_the_defaults_and_every_toggle_pass(self):
        with helm.Chart.load(chart.CHART) as loaded:
            loaded.validate_schema({})
            loaded.validate_schema(ALL_ON)
            loaded.validate_schema({"webhook": {"timeoutSeconds": 1, "certificates": "self"}})
            loaded.validate_schema({"webhook": {"timeoutSeconds": 30, "certificates": "certManager", "certManager": {"issuerRef": CLUSTER_ISSUER}}})


class NoDrift(unittest.TestCase):
    """`helm install mail-incident-operator -n mail-incident-operator` with the defaults and
    `kubectl apply -k deploy/` install the same objects, with the same names and content
    (only Helm's labels and the selector's instance label differ, and the Namespace, which
    Helm leaves to --create-namespace)."""

    @classmethod
    def setUpClass(cls):
        built = subprocess.run(
            [chart.kubectl(), "kustomize", str(chart.REPO / "deploy")], check=True, capture_output=True, text=True
        ).stdout
        cls.kustomize = [o for o in yaml.safe_load_all(built) if o]
        # kubectl 1.20's kustomize (v2) does not know MutatingWebhookConfigurations are
        # cluster-scoped and gives them its namespace, which the API server drops.
        for o in cls.kustomize:
            if o["kind"] in CLUSTER_SCOPED:
                o["metadata"].pop("namespace", None)
        cls.helm = chart.render()

    @staticmethod
    def key(o):
        return (o["kind"], o["metadata"]["name"], o["metadata"].get("namespace"))

    def pair(self, kind, name):
        return only(self.kustomize, kind, name), only(self.helm, kind, name)

    def test_both_install_the_same_objects(self):
        kustomize = {self.key(o) for o in self.kustomize if o["kind"] != "Namespace"}
        self.assertEqual(kustomize, {self.key(o) for o in self.helm})
        self.assertEqual(
            [self.key(o) for o in find(self.kustomize, "Namespace")],
            [("Namespace", chart.NAMESPACE, None)],
        )

    def test_every_object_has_the_same_content(self):
        for k in self.kustomize:
            if k["kind"] == "Namespace":
                continue
            h = only(self.helm, k["kind"], k["metadata"]["name"])
            with self.subTest(object=self.key(k)):
                # Helm's labels are a superset of the base's.
                self.assertLessEqual(k["metadata"].get("labels", {}).items(), h["metadata"]["labels"].items())
                self.assertEqual(strip(k), strip(h))

    def test_the_crd_is_the_generated_one(self):
        generated = yaml.safe_load((chart.REPO / "crds" / "mailincidents.mailops.dev.yaml").read_text())
        crd = only(self.helm, "CustomResourceDefinition")
        self.assertEqual(crd["spec"], generated["spec"])


def strip(o):
    """An object without what may differ between the two installs: metadata labels and
    annotations (compared apart), and the selector and pod labels that carry Helm's
    release name."""
    o = copy.deepcopy(o)
    o["metadata"].pop("labels", None)
    o["metadata"].pop("annotations", None)
    spec = o.get("spec", {})
    if o["kind"] == "Deployment":
        spec["selector"]["matchLabels"].pop("app.kubernetes.io/instance", None)
        # The pods' own labels and annotations, but for Helm's.
        metadata = spec["template"]["metadata"]
        metadata["labels"] = {k: v for k, v in metadata["labels"].items() if k in spec["selector"]["matchLabels"]}
    if o["kind"] == "Service":
        spec["selector"].pop("app.kubernetes.io/instance", None)
    return o


if __name__ == "__main__":
    unittest.main()
