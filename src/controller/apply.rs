//! Carries out the plan's writes. Mode documents are ConfigMaps the operator owns whole:
//! created by a POST, then updated with a merge patch under the same field manager, which
//! costs the API server about half as much per write as a server-side apply and matters
//! when a mode change rewrites a thousand of them; their (empty) reports are created by a
//! forced server-side apply. Workloads belong to their users and GitOps tools: restart
//! delivery server-side-applies only the env vars and template annotations it owns, under
//! the field manager `mail-incident-operator`, never forced, so a conflict with another
//! manager is reported rather than overwritten.

use super::{
    cached::{CachedConfigMap, CachedDeployment, CachedStatefulSet},
    field_manager::FIELD_MANAGER,
    leader::Leadership,
    versions::{Echo, EchoKind, Versions},
};
use crate::{
    Error, Result,
    api::mode_document::{
        INCIDENT_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL, MODE_DOCUMENT_KEY, MODE_HASH_ANNOTATION,
        ModeDocument, ROLE_DOCUMENT, ROLE_LABEL, ROLE_REPORT, WORKLOAD_ANNOTATION, document_name,
        report_name,
    },
    plan::{Owner, TargetRef, WorkloadKind, Write},
};
use futures::{StreamExt, stream};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::{
    Api, Client, Resource,
    api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions, PropagationPolicy},
    core::Status,
};
use serde_json::{Value, json};
use std::collections::HashMap;

/// Writes in flight at once, per namespace sync: enough to keep an API server busy (the
/// benchmark's fastest raw PATCH rate is reached between 16 and 64), few enough not to
/// flood it. Public for the benchmark and the fake agents, which write at the same pace.
pub const WRITE_CONCURRENCY: usize = 64;

/// What became of one write.
pub enum Outcome {
    /// Stored, changing these cached objects.
    Done(Vec<Echo>),
    /// The object changed since the caches showed it (409 on the resource version the
    /// write was conditional on): the change is on its way as a watch event, and the sync
    /// it triggers plans again from the newer view.
    Stale,
    /// The API server refused it for a reason only a person can fix (a conflict with
    /// another field manager, a validation error): it shows in the incident's status.
    Refused(TargetRef, String),
}

/// Carries out `writes` with bounded concurrency, each conditional on the resource
/// versions the plan was made from, and each only while `leadership` holds: a replica
/// that lost its claim mid-sync (frozen, cut off) sends none of the rest, and one of its
/// requests already on its way when it froze is refused by the API server if the new
/// leader has written since. Refusals are returned; any other failure is returned as the
/// error, naming the call, so the sync is retried.
pub async fn apply_all(
    client: &Client,
    leadership: &Leadership,
    namespace: &str,
    versions: &HashMap<TargetRef, Versions>,
    writes: Vec<Write>,
) -> Result<Vec<Outcome>> {
    stream::iter(writes)
        .map(|write| async move {
            leadership.fence()?;
            let call = describe(namespace, &write);
            let seen = versions
                .get(write_target(&write))
                .cloned()
                .unwrap_or_default();
            apply(client, namespace, write, seen)
                .await
                .map_err(Error::api(call))
        })
        .buffer_unordered(WRITE_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// The call a write makes, for its error: verb, kind, namespace and name.
fn describe(namespace: &str, write: &Write) -> String {
    match write {
        Write::PutDocument { target, .. } => format!(
            "write the mode document of {target} in {namespace} (ConfigMap {})",
            document_name(target.kind.as_str(), &target.name)
        ),
        Write::DeleteDocument { target, .. } => format!(
            "delete the mode document of {target} in {namespace} (ConfigMap {})",
            document_name(target.kind.as_str(), &target.name)
        ),
        Write::DeleteReport { target } => format!(
            "delete the report of {target} in {namespace} (ConfigMap {})",
            report_name(&document_name(target.kind.as_str(), &target.name))
        ),
        Write::SetRestartEnv { target, .. } => {
            format!("apply the restart env vars of {target} in {namespace}")
        }
        Write::ClearRestartEnv { target } => {
            format!("clear the restart env vars of {target} in {namespace}")
        }
        Write::PruneReport { target, .. } => format!(
            "remove departed pods' entries from the report of {target} in {namespace} (ConfigMap {})",
            report_name(&document_name(target.kind.as_str(), &target.name))
        ),
    }
}

async fn apply(
    client: &Client,
    namespace: &str,
    write: Write,
    seen: Versions,
) -> Result<Outcome, kube::Error> {
    // Responses are decoded into the slim cached shapes: a thousand writes' responses
    // would otherwise each be built as a full object with its managedFields, unread.
    let config_maps: Api<CachedConfigMap> = Api::namespaced(client.clone(), namespace);
    let (target, result) = match write {
        Write::PutDocument {
            target,
            document,
            owners,
            exists,
            create_report,
        } => {
            let existing = seen.document.filter(|_| exists);
            let result = put_document(
                &config_maps,
                &target,
                &document,
                &owners,
                existing,
                create_report,
            )
            .await;
            (target, result)
        }
        Write::DeleteDocument {
            target,
            keep_report,
        } => {
            let result = delete_document(&config_maps, &target, seen, keep_report).await;
            (target, result)
        }
        Write::DeleteReport { target } => {
            let result = delete_report(&config_maps, &target, seen).await;
            (target, result)
        }
        Write::SetRestartEnv {
            target,
            container,
            document,
        } => {
            let patch = restart_env_patch(&target, &container, &document, seen.workload.clone());
            let result = apply_to_workload(client, namespace, &target, patch, seen.workload).await;
            (target, result)
        }
        Write::PruneReport { target, pods } => {
            let result = prune_report(&config_maps, &target, &pods, seen.report).await;
            (target, result)
        }
        Write::ClearRestartEnv { target } => {
            // Applying nothing under our field manager drops every field it owned.
            let patch = workload_object(&target, seen.workload.clone(), json!({}));
            let result = apply_to_workload(client, namespace, &target, patch, seen.workload).await;
            (target, result)
        }
    };
    match result {
        Ok(echoes) => Ok(Outcome::Done(echoes)),
        Err(kube::Error::Api(status)) if is_stale(&status) => Ok(Outcome::Stale),
        Err(kube::Error::Api(status)) if matches!(status.code, 409 | 422) => {
            Ok(Outcome::Refused(target, status.message))
        }
        Err(error) => Err(error),
    }
}

/// Whether a refusal says only that the object changed since it was read (or exists
/// already), as opposed to a conflict with another field manager, which a person must
/// resolve.
fn is_stale(status: &Status) -> bool {
    let manager_conflict = status
        .details
        .as_ref()
        .is_some_and(|d| d.causes.iter().any(|c| c.reason == "FieldManagerConflict"));
    status.code == 409 && !manager_conflict
}

/// The target a write is for.
pub fn write_target(write: &Write) -> &TargetRef {
    match write {
        Write::PutDocument { target, .. }
        | Write::DeleteDocument { target, .. }
        | Write::DeleteReport { target }
        | Write::SetRestartEnv { target, .. }
        | Write::ClearRestartEnv { target }
        | Write::PruneReport { target, .. } => target,
    }
}

/// The mode document of `target` as the operator stores it: its labels, the annotations
/// the sweep and the agents read, owned by `owners`.
pub fn document_object(target: &TargetRef, document: &ModeDocument, owners: &[Owner]) -> Value {
    let owned_by_incidents: Vec<Value> = owners
        .iter()
        .map(|o| {
            json!({
                "apiVersion": "mailops.dev/v1alpha1", "kind": "MailIncident",
                "name": o.name, "uid": o.uid,
            })
        })
        .collect();
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": document_name(target.kind.as_str(), &target.name),
            "labels": {MANAGED_BY_LABEL: MANAGED_BY, ROLE_LABEL: ROLE_DOCUMENT},
            "annotations": {
                MODE_HASH_ANNOTATION: document.hash(),
                INCIDENT_ANNOTATION: document.incident_names(),
                WORKLOAD_ANNOTATION: target.to_string(),
            },
            "ownerReferences": owned_by_incidents,
        },
        "data": {MODE_DOCUMENT_KEY: document.to_json()},
    })
}

/// The (empty) report object of `target`, owned by its mode document (`document_uid`).
pub fn report_object(target: &TargetRef, document_uid: Option<String>) -> Value {
    let name = document_name(target.kind.as_str(), &target.name);
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": report_name(&name),
            "labels": {MANAGED_BY_LABEL: MANAGED_BY, ROLE_LABEL: ROLE_REPORT},
            "annotations": {WORKLOAD_ANNOTATION: target.to_string()},
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "ConfigMap",
                "name": name, "uid": document_uid,
            }],
        },
    })
}

async fn put_document(
    api: &Api<CachedConfigMap>,
    target: &TargetRef,
    document: &ModeDocument,
    owners: &[Owner],
    existing: Option<String>,
    create_report: bool,
) -> Result<Vec<Echo>, kube::Error> {
    let name = document_name(target.kind.as_str(), &target.name);
    let document_object = document_object(target, document, owners);
    let stored = match &existing {
        Some(version) => {
            // A merge patch replaces the owner list whole: exactly the current owners.
            let mut document_object = document_object;
            document_object["metadata"]["resourceVersion"] = version.as_str().into();
            merge(api, &name, &document_object).await?
        }
        None => {
            // Created by a POST, as the caches show none. Each write is fenced by the
            // lease claim just before it, so one that exists already is not a newer
            // leader's: it is ours, stripped of the label the caches select it by.
            let created = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PostParams::default()
            };
            // Raw, as `Api::create` would take and return the cached shape whole.
            let body = serde_json::to_vec(&document_object).map_err(kube::Error::SerdeError)?;
            let request = kube::core::Request::new(api.resource_url())
                .create(&created, body)
                .map_err(kube::Error::BuildRequest)?;
            match api
                .clone()
                .into_client()
                .request::<CachedConfigMap>(request)
                .await
            {
                Ok(created) => created.metadata,
                // It exists, yet the caches (which select our label) never showed it:
                // someone took our labels off. Written whole again, labels included.
                Err(kube::Error::Api(status)) if status.reason == "AlreadyExists" => {
                    merge(api, &name, &document_object).await?
                }
                Err(error) => return Err(error),
            }
        }
    };
    let mut echoes = vec![Echo {
        kind: EchoKind::ConfigMap,
        name: name.clone(),
        before: existing,
        after: stored.resource_version,
    }];
    if create_report {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        // Agents may patch the report, never create it, so it exists before they need
        // it; it belongs to the document and goes with it.
        let report_object = report_object(target, stored.uid);
        let report = report_name(&name);
        let report_stored = api
            .patch(&report, &params, &Patch::Apply(&report_object))
            .await?;
        echoes.push(Echo {
            kind: EchoKind::ConfigMap,
            name: report,
            before: None,
            after: report_stored.metadata.resource_version,
        });
    }
    Ok(echoes)
}

/// Removes `pods`' entries from the report, as seen: an agent's write since makes it 409.
async fn prune_report(
    api: &Api<CachedConfigMap>,
    target: &TargetRef,
    pods: &[String],
    seen: Option<String>,
) -> Result<Vec<Echo>, kube::Error> {
    let name = report_name(&document_name(target.kind.as_str(), &target.name));
    let removed: serde_json::Map<String, Value> =
        pods.iter().map(|pod| (pod.clone(), Value::Null)).collect();
    let patch = json!({"metadata": {"resourceVersion": seen}, "data": removed});
    let stored = merge(api, &name, &patch).await?;
    Ok(vec![Echo {
        kind: EchoKind::ConfigMap,
        name,
        before: seen,
        after: stored.resource_version,
    }])
}

/// A merge patch of one of our ConfigMaps under our field manager: what it left.
async fn merge(
    api: &Api<CachedConfigMap>,
    name: &str,
    patch: &Value,
) -> Result<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, kube::Error> {
    let update = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    Ok(api
        .patch(name, &update, &Patch::Merge(patch))
        .await?
        .metadata)
}

/// Deletes the document (only as seen), then its report.
async fn delete_document(
    api: &Api<CachedConfigMap>,
    target: &TargetRef,
    seen: Versions,
    keep_report: bool,
) -> Result<Vec<Echo>, kube::Error> {
    let name = document_name(target.kind.as_str(), &target.name);
    let as_seen = DeleteParams {
        preconditions: seen.document.clone().map(|resource_version| Preconditions {
            resource_version: Some(resource_version),
            uid: None,
        }),
        // A kept report is orphaned, not collected with the document: its agents report
        // their release there until it is over.
        propagation_policy: keep_report.then_some(PropagationPolicy::Orphan),
        ..DeleteParams::default()
    };
    let report = report_name(&name);
    let mut deletions = vec![(&name, as_seen)];
    if !keep_report {
        deletions.push((&report, DeleteParams::default()));
    }
    for (object, params) in deletions {
        match api.delete(object, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error),
        }
    }
    let deleted = |name, before| Echo {
        kind: EchoKind::ConfigMap,
        name,
        before,
        after: None,
    };
    let mut echoes = vec![deleted(name, seen.document)];
    if !keep_report {
        echoes.push(deleted(report, seen.report));
    }
    Ok(echoes)
}

/// Deletes a target's report as it was seen: a report an agent wrote to since (a release
/// not over after all) is kept, and looked at again.
async fn delete_report(
    api: &Api<CachedConfigMap>,
    target: &TargetRef,
    seen: Versions,
) -> Result<Vec<Echo>, kube::Error> {
    let report = report_name(&document_name(target.kind.as_str(), &target.name));
    let as_seen = DeleteParams {
        preconditions: seen.report.clone().map(|resource_version| Preconditions {
            resource_version: Some(resource_version),
            uid: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&report, &as_seen).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(error) => return Err(error),
    }
    Ok(vec![Echo {
        kind: EchoKind::ConfigMap,
        name: report,
        before: seen.report,
        after: None,
    }])
}

fn restart_env_patch(
    target: &TargetRef,
    container: &str,
    document: &ModeDocument,
    version: Option<String>,
) -> Value {
    let env: Vec<Value> = document
        .env()
        .into_iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect();
    workload_object(
        target,
        version,
        json!({"spec": {"template": {
            "metadata": {"annotations": {
                MODE_HASH_ANNOTATION: document.hash(),
                INCIDENT_ANNOTATION: document.incident_names(),
            }},
            "spec": {"containers": [{"name": container, "env": env}]},
        }}}),
    )
}

/// An apply configuration for the workload: identity plus `fields`, conditional on the
/// workload's `version` as seen (server-side apply honours it as a precondition).
fn workload_object(target: &TargetRef, version: Option<String>, fields: Value) -> Value {
    let (api_version, kind) = match target.kind {
        WorkloadKind::Deployment => (Deployment::api_version(&()), Deployment::kind(&())),
        WorkloadKind::StatefulSet => (StatefulSet::api_version(&()), StatefulSet::kind(&())),
    };
    let mut object = json!({
        "apiVersion": api_version, "kind": kind,
        "metadata": {"name": target.name},
    });
    if let Some(version) = version {
        object["metadata"]["resourceVersion"] = version.into();
    }
    if let (Some(object), Value::Object(fields)) = (object.as_object_mut(), fields) {
        object.extend(fields);
    }
    object
}

/// Applies `patch` to the workload; its echo is the workload as left (`before`: as seen).
async fn apply_to_workload(
    client: &Client,
    namespace: &str,
    target: &TargetRef,
    patch: Value,
    before: Option<String>,
) -> Result<Vec<Echo>, kube::Error> {
    let params = PatchParams::apply(FIELD_MANAGER);
    let stored = match target.kind {
        WorkloadKind::Deployment => {
            Api::<CachedDeployment>::namespaced(client.clone(), namespace)
                .patch(&target.name, &params, &Patch::Apply(&patch))
                .await?
                .metadata
        }
        WorkloadKind::StatefulSet => {
            Api::<CachedStatefulSet>::namespaced(client.clone(), namespace)
                .patch(&target.name, &params, &Patch::Apply(&patch))
                .await?
                .metadata
        }
    };
    Ok(vec![Echo {
        kind: EchoKind::Workload(target.kind),
        name: target.name.clone(),
        before,
        after: stored.resource_version,
    }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures::{
        self, APPLY_PATCH, Exchange, MERGE_PATCH, NAMESPACE, config_map_path, serve,
        stored_config_map,
    };
    use std::sync::Arc;

    const DOCUMENT: &str = "mail-mode-deployment-mx";
    const REPORT: &str = "mail-mode-deployment-mx-report";
    const OURS: [(&str, &str); 1] = [("app.kubernetes.io/managed-by", "mail-incident-operator")];

    fn mx() -> TargetRef {
        TargetRef {
            kind: WorkloadKind::Deployment,
            name: "mx".into(),
        }
    }

    fn exim() -> TargetRef {
        TargetRef {
            kind: WorkloadKind::StatefulSet,
            name: "exim".into(),
        }
    }

    fn owners() -> Vec<Owner> {
        ["outage", "storage"]
            .into_iter()
            .map(|name| Owner {
                name: name.into(),
                uid: format!("uid-{name}"),
            })
            .collect()
    }

    fn put(exists: bool, create_report: bool) -> Write {
        Write::PutDocument {
            target: mx(),
            document: Arc::new(fixtures::document()),
            owners: owners(),
            exists,
            create_report,
        }
    }

    fn seen(document: Option<&str>, report: Option<&str>, workload: Option<&str>) -> Versions {
        Versions {
            document: document.map(String::from),
            report: report.map(String::from),
            workload: workload.map(String::from),
        }
    }

    type Echoed = (EchoKind, String, Option<String>, Option<String>);

    /// What a write that was done changed: (cache, name, version before, after).
    fn done(outcome: Outcome) -> Vec<Echoed> {
        match outcome {
            Outcome::Done(echoes) => echoes
                .into_iter()
                .map(|e| (e.kind, e.name, e.before, e.after))
                .collect(),
            Outcome::Stale => panic!("expected the write done, it was stale"),
            Outcome::Refused(target, why) => {
                panic!("expected the write done, it was refused for {target}: {why}")
            }
        }
    }

    fn echo(kind: EchoKind, name: &str, before: Option<&str>, after: Option<&str>) -> Echoed {
        (
            kind,
            name.into(),
            before.map(String::from),
            after.map(String::from),
        )
    }

    fn owner_references() -> Value {
        json!([
            {"apiVersion": "mailops.dev/v1alpha1", "kind": "MailIncident",
             "name": "outage", "uid": "uid-outage"},
            {"apiVersion": "mailops.dev/v1alpha1", "kind": "MailIncident",
             "name": "storage", "uid": "uid-storage"},
        ])
    }

    /// The document as planned, on the wire.
    fn document_body() -> Value {
        let document = fixtures::document();
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {
                "name": DOCUMENT,
                "labels": {OURS[0].0: OURS[0].1, "mailops.dev/role": "mode-document"},
                "annotations": {
                    "mailops.dev/mode-hash": document.hash(),
                    "mailops.dev/incident": "outage",
                    "mailops.dev/workload": "Deployment/mx",
                },
                "ownerReferences": owner_references(),
            },
            "data": {"mode.json": document.to_json()},
        })
    }

    #[tokio::test]
    async fn a_new_document_is_created_under_our_field_manager_and_its_report_applied() {
        let (client, server) = serve(vec![
            Exchange::post(format!("/api/v1/namespaces/{NAMESPACE}/configmaps"))
                .ours_unforced()
                .body(document_body())
                .check(|body| {
                    assert_eq!(
                        body["metadata"].get("resourceVersion"),
                        None,
                        "a create is conditional on nothing"
                    );
                })
                .reply(201, stored_config_map(DOCUMENT, "11", "uid-document")),
            // The report is the operator's whole: applied with force, owned by the
            // document just created, without entries (the agents write those).
            Exchange::patch(config_map_path(REPORT))
                .query("fieldManager", FIELD_MANAGER)
                .query("force", "true")
                .content_type(APPLY_PATCH)
                .body(json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {
                        "name": REPORT,
                        "labels": {OURS[0].0: OURS[0].1, "mailops.dev/role": "mode-report"},
                        "annotations": {"mailops.dev/workload": "Deployment/mx"},
                        "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap",
                                             "name": DOCUMENT, "uid": "uid-document"}],
                    },
                }))
                .check(|body| assert_eq!(body.get("data"), None, "no entries of ours"))
                .ok(stored_config_map(REPORT, "12", "uid-report")),
        ]);
        let outcome = apply(&client, NAMESPACE, put(false, true), Versions::default())
            .await
            .expect("the writes succeed");
        server.verify(client).await;
        assert_eq!(
            done(outcome),
            [
                echo(EchoKind::ConfigMap, DOCUMENT, None, Some("11")),
                echo(EchoKind::ConfigMap, REPORT, None, Some("12")),
            ]
        );
    }

    #[tokio::test]
    async fn an_existing_document_is_merge_patched_as_seen_with_its_owners_whole() {
        let (client, server) = serve(vec![
            Exchange::patch(config_map_path(DOCUMENT))
                .ours_unforced()
                .content_type(MERGE_PATCH)
                .body(document_body())
                .body(json!({"metadata": {"resourceVersion": "7", "ownerReferences": owner_references()}}))
                .ok(stored_config_map(DOCUMENT, "8", "uid-document")),
        ]);
        let outcome = apply(
            &client,
            NAMESPACE,
            put(true, false),
            seen(Some("7"), None, None),
        )
        .await
        .expect("the write succeeds");
        server.verify(client).await;
        assert_eq!(
            done(outcome),
            [echo(EchoKind::ConfigMap, DOCUMENT, Some("7"), Some("8"))]
        );
    }

    #[tokio::test]
    async fn a_document_that_exists_unseen_is_written_whole_again() {
        // Our label was taken off, so the caches never showed it: the create finds it.
        let (client, server) = serve(vec![
            Exchange::post(format!("/api/v1/namespaces/{NAMESPACE}/configmaps")).fail(
                409,
                "AlreadyExists",
                "configmaps \"mail-mode-deployment-mx\" already exists",
                &[],
            ),
            Exchange::patch(config_map_path(DOCUMENT))
                .ours_unforced()
                .content_type(MERGE_PATCH)
                .body(document_body())
                .check(|body| {
                    assert_eq!(
                        body["metadata"].get("resourceVersion"),
                        None,
                        "never seen, so conditional on no version"
                    );
                })
                .ok(stored_config_map(DOCUMENT, "30", "uid-document")),
        ]);
        let outcome = apply(&client, NAMESPACE, put(false, false), Versions::default())
            .await
            .expect("the write succeeds");
        server.verify(client).await;
        assert_eq!(
            done(outcome),
            [echo(EchoKind::ConfigMap, DOCUMENT, None, Some("30"))]
        );
    }

    #[tokio::test]
    async fn a_write_on_a_stale_view_is_left_to_the_next_sync() {
        let (client, server) = serve(vec![
            Exchange::patch(config_map_path(DOCUMENT))
                .body(json!({"metadata": {"resourceVersion": "7"}}))
                .conflict(),
        ]);
        let outcome = apply(
            &client,
            NAMESPACE,
            put(true, true),
            seen(Some("7"), None, None),
        )
        .await
        .expect("a stale write is no error");
        server.verify(client).await;
        assert!(
            matches!(outcome, Outcome::Stale),
            "and the report is not created"
        );
    }

    #[tokio::test]
    async fn restart_delivery_applies_only_our_fields_unforced_as_seen() {
        let document = fixtures::document();
        let env: Vec<Value> = document
            .env()
            .into_iter()
            .map(|(name, value)| json!({"name": name, "value": value}))
            .collect();
        assert!(!env.is_empty());
        let (client, server) = serve(vec![
            Exchange::patch(format!(
                "/apis/apps/v1/namespaces/{NAMESPACE}/deployments/mx"
            ))
            .ours_unforced()
            .content_type(APPLY_PATCH)
            .body(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "mx", "resourceVersion": "40"},
                "spec": {"template": {
                    "metadata": {"annotations": {
                        "mailops.dev/mode-hash": document.hash(),
                        "mailops.dev/incident": "outage",
                    }},
                    "spec": {"containers": [{"name": "mta", "env": env}]},
                }},
            }))
            .check(|body| {
                let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
                assert_eq!(keys, ["apiVersion", "kind", "metadata", "spec"]);
                let spec = &body["spec"];
                assert_eq!(spec.as_object().unwrap().len(), 1, "only the template");
                let container = &spec["template"]["spec"]["containers"][0];
                assert_eq!(container.as_object().unwrap().len(), 2, "name and env only");
            })
            .ok(json!({"metadata": {"name": "mx", "namespace": NAMESPACE, "resourceVersion": "41"}})),
        ]);
        let write = Write::SetRestartEnv {
            target: mx(),
            container: "mta".into(),
            document: Arc::new(document.clone()),
        };
        let outcome = apply(&client, NAMESPACE, write, seen(None, None, Some("40")))
            .await
            .expect("the apply succeeds");
        server.verify(client).await;
        assert_eq!(
            done(outcome),
            [echo(
                EchoKind::Workload(WorkloadKind::Deployment),
                "mx",
                Some("40"),
                Some("41")
            )]
        );
    }

    #[tokio::test]
    async fn a_conflict_with_another_field_manager_is_refused_not_forced() {
        let message = "Apply failed with 1 conflict: conflict with \"argocd-controller\": .spec.template.spec.containers[name=\"exim\"].env[name=\"MAIL_INCIDENT_MODE\"].value";
        let (client, server) = serve(vec![
            Exchange::patch(format!(
                "/apis/apps/v1/namespaces/{NAMESPACE}/statefulsets/exim"
            ))
            .ours_unforced()
            .content_type(APPLY_PATCH)
            .body(json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                         "metadata": {"name": "exim", "resourceVersion": "5"}}))
            .fail(
                409,
                "Conflict",
                message,
                &[(
                    "FieldManagerConflict",
                    "conflict with \"argocd-controller\"",
                    ".spec.template.spec.containers[name=\"exim\"].env",
                )],
            ),
        ]);
        let write = Write::SetRestartEnv {
            target: exim(),
            container: "exim".into(),
            document: Arc::new(fixtures::document()),
        };
        let outcome = apply(&client, NAMESPACE, write, seen(None, None, Some("5")))
            .await
            .expect("a refusal is no error");
        server.verify(client).await;
        match outcome {
            Outcome::Refused(target, why) => {
                assert_eq!(target, exim());
                assert_eq!(why, message);
            }
            _ => panic!("a field-manager conflict must be refused, for a person to resolve"),
        }
    }

    #[tokio::test]
    async fn clearing_restart_delivery_applies_nothing_under_our_field_manager() {
        let (client, server) = serve(vec![
            Exchange::patch(format!(
                "/apis/apps/v1/namespaces/{NAMESPACE}/deployments/mx"
            ))
            .ours_unforced()
            .content_type(APPLY_PATCH)
            .check(|body| {
                assert_eq!(
                    body,
                    &json!({"apiVersion": "apps/v1", "kind": "Deployment",
                            "metadata": {"name": "mx", "resourceVersion": "41"}})
                );
            })
            .ok(json!({"metadata": {"name": "mx", "resourceVersion": "42"}})),
        ]);
        let write = Write::ClearRestartEnv { target: mx() };
        let outcome = apply(&client, NAMESPACE, write, seen(None, None, Some("41")))
            .await
            .expect("the apply succeeds");
        server.verify(client).await;
        assert_eq!(
            done(outcome),
            [echo(
                EchoKind::Workload(WorkloadKind::Deployment),
                "mx",
                Some("41"),
                Some("42")
            )]
        );
    }

    #[tokio::test]
    async fn a_write_the_api_server_finds_invalid_is_refused() {
        let (client, server) = serve(vec![
            Exchange::patch(format!(
                "/apis/apps/v1/namespaces/{NAMESPACE}/deployments/mx"
            ))
            .fail(422, "Invalid", "Deployment.apps \"mx\" is invalid", &[]),
        ]);
        let write = Write::ClearRestartEnv { target: mx() };
        let outcome = apply(&client, NAMESPACE, write, Versions::default())
            .await
            .expect("a refusal is no error");
        server.verify(client).await;
        assert!(
            matches!(outcome, Outcome::Refused(target, why) if target == mx() && why.contains("invalid"))
        );
    }

    #[tokio::test]
    async fn a_document_is_deleted_only_as_seen_and_its_report_with_it() {
        let (client, server) = serve(vec![
            Exchange::delete(config_map_path(DOCUMENT))
                .body(json!({"preconditions": {"resourceVersion": "7"}}))
                .check(|body| {
                    assert_eq!(
                        body["preconditions"].get("uid").and_then(Value::as_str),
                        None
                    );
                    assert_eq!(body.get("propagationPolicy"), None, "the report goes too");
                })
                .ok(stored_config_map(DOCUMENT, "7", "uid-document")),
            // Collected with the document already: not found is done.
            Exchange::delete(config_map_path(REPORT))
                .check(|body| assert_eq!(body.get("preconditions"), None))
                .not_found(),
        ]);
        let write = Write::DeleteDocument {
            target: mx(),
            keep_report: false,
        };
        let outcome = apply(&client, NAMESPACE, write, seen(Some("7"), Some("9"), None))
            .await
            .expect("the deletes succeed");
        server.verify(client).await;
        assert_eq!(
            done(outcome),
            [
                echo(EchoKind::ConfigMap, DOCUMENT, Some("7"), None),
                echo(EchoKind::ConfigMap, REPORT, Some("9"), None),
            ]
        );
    }

    #[tokio::test]
    async fn a_kept_report_is_orphaned_when_its_document_is_deleted() {
        let (client, server) = serve(vec![
            Exchange::delete(config_map_path(DOCUMENT))
                .body(json!({"preconditions": {"resourceVersion": "7"},
                             "propagationPolicy": "Orphan"}))
                .ok(stored_config_map(DOCUMENT, "7", "uid-document")),
        ]);
        let write = Write::DeleteDocument {
            target: mx(),
            keep_report: true,
        };
        let outcome = apply(&client, NAMESPACE, write, seen(Some("7"), Some("9"), None))
            .await
            .expect("the delete succeeds");
        server.verify(client).await;
        assert_eq!(
            done(outcome),
            [echo(EchoKind::ConfigMap, DOCUMENT, Some("7"), None)]
        );
    }

    #[tokio::test]
    async fn a_report_written_to_since_it_was_seen_is_not_deleted() {
        let (client, server) = serve(vec![
            Exchange::delete(config_map_path(REPORT))
                .body(json!({"preconditions": {"resourceVersion": "9"}}))
                .conflict(),
        ]);
        let write = Write::DeleteReport { target: mx() };
        let outcome = apply(&client, NAMESPACE, write, seen(None, Some("9"), None))
            .await
            .expect("a stale delete is no error");
        server.verify(client).await;
        assert!(matches!(outcome, Outcome::Stale));
    }

    #[tokio::test]
    async fn departed_pods_entries_are_removed_from_the_report_as_seen() {
        let (client, server) = serve(vec![
            Exchange::patch(config_map_path(REPORT))
                .ours_unforced()
                .content_type(MERGE_PATCH)
                .check(|body| {
                    assert_eq!(
                        body,
                        &json!({"metadata": {"resourceVersion": "9"},
                                "data": {"mx-1": null, "mx-2": null}})
                    );
                })
                .ok(stored_config_map(REPORT, "10", "uid-report")),
        ]);
        let write = Write::PruneReport {
            target: mx(),
            pods: vec!["mx-1".into(), "mx-2".into()],
        };
        let outcome = apply(&client, NAMESPACE, write, seen(Some("7"), Some("9"), None))
            .await
            .expect("the patch succeeds");
        server.verify(client).await;
        assert_eq!(
            done(outcome),
            [echo(EchoKind::ConfigMap, REPORT, Some("9"), Some("10"))]
        );
    }

    #[tokio::test]
    async fn writes_are_conditional_on_their_own_targets_versions() {
        let (client, server) = serve(vec![
            Exchange::patch(config_map_path(DOCUMENT))
                .body(json!({"metadata": {"resourceVersion": "7"}}))
                .ok(stored_config_map(DOCUMENT, "8", "uid-document")),
        ]);
        let versions = HashMap::from([
            (exim(), seen(Some("99"), Some("98"), Some("97"))),
            (mx(), seen(Some("7"), None, Some("6"))),
        ]);
        let outcomes = apply_all(
            &client,
            &Leadership::fixed(true),
            NAMESPACE,
            &versions,
            vec![put(true, false)],
        )
        .await
        .expect("the write succeeds");
        server.verify(client).await;
        let [outcome] = <[Outcome; 1]>::try_from(outcomes)
            .ok()
            .expect("one outcome");
        assert_eq!(
            done(outcome),
            [echo(EchoKind::ConfigMap, DOCUMENT, Some("7"), Some("8"))]
        );
    }

    #[tokio::test]
    async fn a_failure_no_person_must_fix_is_an_error_naming_the_call() {
        let (client, server) = serve(vec![Exchange::delete(config_map_path(REPORT)).fail(
            500,
            "InternalError",
            "etcdserver: request timed out",
            &[],
        )]);
        let result = apply_all(
            &client,
            &Leadership::fixed(true),
            NAMESPACE,
            &HashMap::new(),
            vec![Write::DeleteReport { target: mx() }],
        )
        .await;
        server.verify(client).await;
        match result {
            Err(Error::Api { call, source }) => {
                assert_eq!(
                    call,
                    "delete the report of Deployment/mx in mail (ConfigMap mail-mode-deployment-mx-report)"
                );
                assert!(matches!(source, kube::Error::Api(s) if s.code == 500));
            }
            Err(other) => panic!("expected the API error, got {other}"),
            Ok(_) => panic!("a server error must fail the sync"),
        }
    }

    #[tokio::test]
    async fn a_replica_that_does_not_lead_sends_nothing() {
        let (client, server) = serve(vec![]);
        let result = apply_all(
            &client,
            &Leadership::fixed(false),
            NAMESPACE,
            &HashMap::new(),
            vec![put(false, true), Write::DeleteReport { target: mx() }],
        )
        .await;
        server.verify(client).await;
        assert!(matches!(result, Err(Error::NotLeader)));
    }
}
