//! A mock API server for the write layer's tests, after kube-rs's `controller-rs`: a
//! `kube::Client` over a `tower_test` mock service, and a verifier that takes the requests
//! it sends one by one, checks each against the next expected [`Exchange`] (method, path,
//! query, content type, body) and answers it as that exchange says. No cluster, no
//! network: a test runs in milliseconds.
//!
//! ```ignore
//! let (client, server) = serve(vec![
//!     Exchange::patch("/api/v1/namespaces/mail/configmaps/x")
//!         .query("fieldManager", FIELD_MANAGER)
//!         .without_query("force")
//!         .body(json!({"metadata": {"resourceVersion": "7"}}))
//!         .conflict(),
//! ]);
//! let outcome = code_under_test(&client).await;
//! server.verify(client).await;
//! ```

use super::{
    cache::{Caches, Slim},
    cached::{CachedConfigMap, CachedDeployment, CachedStatefulSet},
    field_manager::FIELD_MANAGER,
};
use crate::api::{
    MailIncident, Mode,
    mode_document::{
        DocumentIncident, DocumentQueue, DocumentRelease, DocumentReply, MODE_DOCUMENT_KIND,
        MODE_DOCUMENT_VERSION, ModeDocument, Rule,
    },
};
use http::{Method, Request, Response, StatusCode, header::CONTENT_TYPE};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Client,
    client::Body,
    core::PartialObjectMeta,
    runtime::{
        reflector::{self, store::Writer},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::{fmt::Write as _, time::Duration};
use tokio::task::JoinHandle;
use tower_test::mock;

/// The namespace every fixture lives in.
pub const NAMESPACE: &str = "mail";

/// How long the verifier waits for each expected request before failing the test.
const PATIENCE: Duration = Duration::from_secs(5);

/// `Content-Type` of a server-side apply.
pub const APPLY_PATCH: &str = "application/apply-patch+yaml";
/// `Content-Type` of a JSON merge patch.
pub const MERGE_PATCH: &str = "application/merge-patch+json";
/// `Content-Type` of a JSON patch (RFC 6902).
pub const JSON_PATCH: &str = "application/json-patch+json";

type Check = Box<dyn FnOnce(&Value) + Send>;

/// One request the code under test must send next, and the answer it gets.
pub struct Exchange {
    method: Method,
    path: String,
    /// Query parameters that must be present, with these values.
    query: Vec<(String, String)>,
    /// Query parameters that must be absent.
    no_query: Vec<String>,
    content_type: Option<String>,
    /// JSON values the body must include (see [`includes`]).
    bodies: Vec<Value>,
    /// Further checks of the body.
    checks: Vec<Check>,
    status: StatusCode,
    reply: Value,
}

impl Exchange {
    /// A request of `method` to `path` (without its query), answered `200 OK` with `{}`
    /// unless a reply is set.
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        Self {
            method,
            path: path.into(),
            query: vec![],
            no_query: vec![],
            content_type: None,
            bodies: vec![],
            checks: vec![],
            status: StatusCode::OK,
            reply: json!({}),
        }
    }

    pub fn post(path: impl Into<String>) -> Self {
        Self::new(Method::POST, path)
    }

    pub fn patch(path: impl Into<String>) -> Self {
        Self::new(Method::PATCH, path)
    }

    pub fn delete(path: impl Into<String>) -> Self {
        Self::new(Method::DELETE, path)
    }

    /// The query must carry `key=value`.
    pub fn query(mut self, key: &str, value: &str) -> Self {
        self.query.push((key.into(), value.into()));
        self
    }

    /// The query must not carry `key`.
    pub fn without_query(mut self, key: &str) -> Self {
        self.no_query.push(key.into());
        self
    }

    /// Our field manager, and no `force`.
    pub fn ours_unforced(self) -> Self {
        self.query("fieldManager", FIELD_MANAGER)
            .without_query("force")
    }

    /// The request's `Content-Type` must be `content_type`.
    pub fn content_type(mut self, content_type: &str) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// The body, as JSON, must include `expected`: every field of an object in it, with an
    /// included value; arrays element by element, of the same length; anything else equal.
    /// Each call adds a value the body must include.
    pub fn body(mut self, expected: Value) -> Self {
        self.bodies.push(expected);
        self
    }

    /// Any other check of the body (decoded as JSON; `null` when empty).
    pub fn check(mut self, check: impl FnOnce(&Value) + Send + 'static) -> Self {
        self.checks.push(Box::new(check));
        self
    }

    /// Answers with `status` and `body`.
    pub fn reply(mut self, status: u16, body: Value) -> Self {
        self.status = StatusCode::from_u16(status).expect("a valid status code");
        self.reply = body;
        self
    }

    /// Answers `200 OK` with `body`.
    pub fn ok(self, body: Value) -> Self {
        self.reply(200, body)
    }

    /// Answers with a failure `Status` of `code` and `reason`, with `causes` (each a
    /// `(reason, message, field)`).
    pub fn fail(
        self,
        code: u16,
        reason: &str,
        message: &str,
        causes: &[(&str, &str, &str)],
    ) -> Self {
        self.reply(code, failure(code, reason, message, causes))
    }

    /// Answers `409 Conflict` as the API server does when the resource version a write is
    /// conditional on is no longer current.
    pub fn conflict(self) -> Self {
        self.fail(
            409,
            "Conflict",
            "Operation cannot be fulfilled on configmaps \"x\": the object has been modified; please apply your changes to the latest version and try again",
            &[],
        )
    }

    /// Answers `404 Not Found`.
    pub fn not_found(self) -> Self {
        self.fail(404, "NotFound", "not found", &[])
    }

    fn describe(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// Checks `request` against this exchange (panicking on the first difference) and
    /// builds the answer.
    async fn answer(self, request: Request<Body>) -> Response<Body> {
        let expected = self.describe();
        let (parts, body) = request.into_parts();
        let seen = format!("{} {}", parts.method, parts.uri);
        assert_eq!(
            (&parts.method, parts.uri.path()),
            (&self.method, self.path.as_str()),
            "expected {expected}, got {seen}"
        );
        let query: Vec<(String, String)> =
            form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
                .into_owned()
                .collect();
        for (key, value) in &self.query {
            assert!(
                query.iter().any(|(k, v)| k == key && v == value),
                "{seen}: expected {key}={value} in the query"
            );
        }
        for key in &self.no_query {
            assert!(
                !query.iter().any(|(k, _)| k == key),
                "{seen}: expected no {key} in the query"
            );
        }
        if let Some(content_type) = &self.content_type {
            let sent = parts
                .headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            assert_eq!(sent, Some(content_type.as_str()), "{seen}: content type");
        }
        let bytes = body.collect_bytes().await.expect("a request body");
        let sent: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("a JSON request body")
        };
        for expected_body in &self.bodies {
            let mut differences = String::new();
            includes(&sent, expected_body, "", &mut differences);
            assert!(
                differences.is_empty(),
                "{seen}: body differs:{differences}\nsent: {sent:#}"
            );
        }
        for check in self.checks {
            check(&sent);
        }
        Response::builder()
            .status(self.status)
            .header(CONTENT_TYPE, "application/json")
            .body(Body::from(
                serde_json::to_vec(&self.reply).expect("a JSON reply"),
            ))
            .expect("a valid response")
    }
}

/// Appends to `differences` where `actual` does not include `expected` (see
/// [`Exchange::body`]).
fn includes(actual: &Value, expected: &Value, at: &str, differences: &mut String) {
    match (actual, expected) {
        (Value::Object(actual), Value::Object(expected)) => {
            for (key, value) in expected {
                let at = format!("{at}/{key}");
                match actual.get(key) {
                    Some(actual) => includes(actual, value, &at, differences),
                    None => {
                        let _ = write!(differences, "\n  {at}: absent, expected {value}");
                    }
                }
            }
        }
        (Value::Array(actual), Value::Array(expected)) if actual.len() == expected.len() => {
            for (index, (actual, expected)) in actual.iter().zip(expected).enumerate() {
                includes(actual, expected, &format!("{at}/{index}"), differences);
            }
        }
        _ if actual == expected => {}
        _ => {
            let _ = write!(differences, "\n  {at}: {actual}, expected {expected}");
        }
    }
}

/// A failure `Status` as the API server sends it.
pub fn failure(code: u16, reason: &str, message: &str, causes: &[(&str, &str, &str)]) -> Value {
    let causes: Vec<Value> = causes
        .iter()
        .map(|(reason, message, field)| json!({"reason": reason, "message": message, "field": field}))
        .collect();
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason,
        "details": {"causes": causes}, "code": code,
    })
}

/// The mock API server: a task serving one scenario.
pub struct ApiServer {
    task: JoinHandle<()>,
}

/// A client whose requests must be exactly `exchanges`, in order, and the server that
/// checks and answers them.
pub fn serve(exchanges: Vec<Exchange>) -> (Client, ApiServer) {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let task = tokio::spawn(async move {
        for exchange in exchanges {
            let expected = exchange.describe();
            let next = tokio::time::timeout(PATIENCE, handle.next_request())
                .await
                .unwrap_or_else(|_| panic!("expected {expected}: no request came"));
            let Some((request, respond)) = next else {
                panic!("expected {expected}: the client was done without it")
            };
            respond.send_response(exchange.answer(request).await);
        }
        // Nothing more, until the client goes.
        if let Some((request, _)) = handle.next_request().await {
            panic!(
                "unexpected request after the scenario: {} {}",
                request.method(),
                request.uri()
            );
        }
    });
    (Client::new(service, NAMESPACE), ApiServer { task })
}

impl ApiServer {
    /// Fails the test unless every exchange was made and nothing after them: drops
    /// `client` (the last handle on the mock service, once the code under test is done)
    /// and waits for the scenario to end, passing on its panic if it failed.
    pub async fn verify(self, client: Client) {
        drop(client);
        match tokio::time::timeout(PATIENCE, self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Ok(Err(error)) => panic!("the mock API server failed: {error}"),
            Err(_) => panic!("the scenario never ended: a clone of the client is still alive"),
        }
    }
}

/// The path of our ConfigMap `name` in [`NAMESPACE`].
pub fn config_map_path(name: &str) -> String {
    format!("/api/v1/namespaces/{NAMESPACE}/configmaps/{name}")
}

/// The path of the MailIncident `name` in [`NAMESPACE`].
pub fn incident_path(name: &str) -> String {
    format!("/apis/mailops.dev/v1alpha1/namespaces/{NAMESPACE}/mailincidents/{name}")
}

/// A ConfigMap as the API server returns it after a write.
pub fn stored_config_map(name: &str, resource_version: &str, uid: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NAMESPACE,
                     "resourceVersion": resource_version, "uid": uid},
    })
}

/// A TempFail incident `name` in [`NAMESPACE`] at `resource_version`, with `finalizers`
/// (none: the field absent).
pub fn incident(name: &str, resource_version: &str, finalizers: &[&str]) -> MailIncident {
    serde_json::from_value(json!({
        "apiVersion": "mailops.dev/v1alpha1", "kind": "MailIncident",
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": format!("uid-{name}"),
                     "resourceVersion": resource_version, "generation": 1,
                     "finalizers": (!finalizers.is_empty()).then_some(finalizers)},
        "spec": {"mode": "TempFail", "reason": "INC-7 storage down",
                 "targets": {"matchLabels": {"app": "mta"}}},
    }))
    .expect("a valid incident")
}

/// A TempFail mode document of incident `outage`.
pub fn document() -> ModeDocument {
    ModeDocument {
        api_version: MODE_DOCUMENT_VERSION.into(),
        kind: MODE_DOCUMENT_KIND.into(),
        rules: vec![Rule {
            mode: Mode::TempFail,
            reply: DocumentReply {
                code: 452,
                enhanced_code: "4.3.1".into(),
                text: "Mailbox storage temporarily unavailable, try again later".into(),
            },
            recipient_domains: None,
            incident: DocumentIncident {
                name: "outage".into(),
                uid: "uid-outage".into(),
                reason: "INC-7 storage down".into(),
            },
        }],
        queue: DocumentQueue {
            lifetime: "30d".into(),
            bounce_lifetime: "10d".into(),
        },
        release: DocumentRelease { concurrency: 4 },
        mta: None,
    }
}

/// Caches filled by hand, as the watches would fill them.
pub struct FilledCaches {
    pub caches: Caches,
    deployments: Writer<CachedDeployment>,
    statefulsets: Writer<CachedStatefulSet>,
    pods: Writer<PartialObjectMeta<Pod>>,
    config_maps: Writer<CachedConfigMap>,
    _incidents: Writer<MailIncident>,
    _changed: tokio::sync::watch::Sender<()>,
}

impl FilledCaches {
    pub fn new() -> Self {
        let (incidents, incidents_writer) = reflector::store();
        let (deployments, deployments_writer) = reflector::store();
        let (statefulsets, statefulsets_writer) = reflector::store();
        let (pods, pods_writer) = reflector::store();
        let (config_maps, config_maps_writer) = reflector::store();
        let (changed_tx, changed) = tokio::sync::watch::channel(());
        Self {
            caches: Caches::new(
                incidents,
                deployments,
                statefulsets,
                pods,
                config_maps,
                changed,
            ),
            deployments: deployments_writer,
            statefulsets: statefulsets_writer,
            pods: pods_writer,
            config_maps: config_maps_writer,
            _incidents: incidents_writer,
            _changed: changed_tx,
        }
    }

    /// Caches (adds or replaces) a Deployment given as the API server sends it.
    pub fn deployment(&mut self, object: Value) -> &mut Self {
        cache(&mut self.deployments, object);
        self
    }

    /// Caches a StatefulSet given as the API server sends it.
    pub fn statefulset(&mut self, object: Value) -> &mut Self {
        cache(&mut self.statefulsets, object);
        self
    }

    /// Caches a pod `name` of `namespace` with `labels`, terminating or not.
    pub fn pod(
        &mut self,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
        terminating: bool,
    ) -> &mut Self {
        let labels: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect();
        let deleted = terminating.then_some("2026-12-06T10:00:00Z");
        cache(
            &mut self.pods,
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                   "metadata": {"name": name, "namespace": namespace, "labels": labels,
                                "deletionTimestamp": deleted}}),
        );
        self
    }

    /// Drops the pod `name` of `namespace` from the cache.
    pub fn pod_gone(&mut self, namespace: &str, name: &str) -> &mut Self {
        let pod: PartialObjectMeta<Pod> = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": namespace},
        }))
        .expect("a pod's metadata");
        self.pods.apply_watcher_event(&watcher::Event::Delete(pod));
        self
    }

    /// Caches one of our ConfigMaps given as the API server sends it.
    pub fn config_map(&mut self, object: Value) -> &mut Self {
        cache(&mut self.config_maps, object);
        self
    }
}

/// Caches `object` as a watch does: decoded, then slimmed.
fn cache<K>(writer: &mut Writer<K>, object: Value)
where
    K: kube::Resource<DynamicType = ()> + Slim + DeserializeOwned + Clone + 'static,
{
    let mut object: K = serde_json::from_value(object).expect("a cached object decodes");
    object.slim();
    writer.apply_watcher_event(&watcher::Event::Apply(object));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inclusion_names_every_difference() {
        let mut differences = String::new();
        includes(
            &json!({"a": 1, "b": {"c": [1, 2]}, "extra": true}),
            &json!({"a": 1, "b": {"c": [1, 3]}, "d": null}),
            "",
            &mut differences,
        );
        assert_eq!(
            differences,
            "\n  /b/c/1: 2, expected 3\n  /d: absent, expected null"
        );
        let mut none = String::new();
        includes(
            &json!({"a": [{"x": 1, "y": 2}]}),
            &json!({"a": [{"x": 1}]}),
            "",
            &mut none,
        );
        assert!(none.is_empty());
        includes(&json!([1]), &json!([1, 2]), "", &mut none);
        assert!(!none.is_empty(), "arrays of other lengths differ");
    }

    #[tokio::test]
    async fn a_request_other_than_expected_fails_the_scenario() {
        let (client, server) = serve(vec![
            Exchange::delete(config_map_path("a")).ok(stored_config_map("a", "1", "u")),
        ]);
        let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
            kube::Api::namespaced(client.clone(), NAMESPACE);
        assert!(api.get("a").await.is_err(), "an unanswered request fails");
        let verified = tokio::spawn(server.verify(client)).await;
        let panic = verified.expect_err("the verifier must fail").into_panic();
        let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(message.contains("expected DELETE"), "{message}");
    }

    #[tokio::test]
    async fn a_missing_request_fails_the_scenario() {
        let (client, server) = serve(vec![Exchange::post(config_map_path("a"))]);
        let verified = tokio::spawn(server.verify(client)).await;
        assert!(verified.is_err(), "a request never sent must fail the test");
    }

    #[tokio::test]
    async fn a_request_after_the_scenario_fails_it() {
        let (client, server) = serve(vec![]);
        let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
            kube::Api::namespaced(client.clone(), NAMESPACE);
        assert!(api.get("a").await.is_err());
        let verified = tokio::spawn(server.verify(client)).await;
        assert!(
            verified.is_err(),
            "an unexpected request must fail the test"
        );
    }
}
