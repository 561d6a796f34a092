//! Carries out the plan's writes. Mode documents are ConfigMaps the operator owns whole:
//! created by server-side apply (forced), then updated with a merge patch under the same
//! field manager, which costs the API server about half as much per write and matters
//! when a mode change rewrites a thousand of them. Workloads belong to their users and GitOps tools: restart
//! delivery server-side-applies only the env vars and template annotations it owns, under
//! the field manager `mail-incident-operator`, never forced, so a conflict with another
//! manager is reported rather than overwritten.

use super::FIELD_MANAGER;
use crate::{
    api::mode_document::{
        INCIDENT_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL, MODE_DOCUMENT_KEY, MODE_HASH_ANNOTATION,
        ModeDocument, REPORT_SUFFIX, ROLE_DOCUMENT, ROLE_LABEL, ROLE_REPORT, WORKLOAD_ANNOTATION,
        document_name,
    },
    plan::{Owner, TargetRef, WorkloadKind, Write},
};
use futures::{StreamExt, stream};
use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    core::v1::ConfigMap,
};
use kube::{
    Api, Client, Resource,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::{Value, json};

/// Writes in flight at once, per namespace sync: enough to keep an API server busy (the
/// benchmark's fastest raw PATCH rate is reached between 16 and 64), few enough not to
/// flood it.
const WRITE_CONCURRENCY: usize = 64;

/// What became of one write.
pub enum Outcome {
    Done,
    /// The API server refused it for a reason only a person can fix (a conflict with
    /// another field manager, a validation error): it shows in the incident's status.
    Refused(TargetRef, String),
}

/// Carries out `writes` with bounded concurrency. Refusals are returned; any other
/// failure is returned as the error, so the reconcile is retried.
pub async fn apply_all(
    client: &Client,
    namespace: &str,
    writes: Vec<Write>,
) -> Result<Vec<Outcome>, kube::Error> {
    stream::iter(writes)
        .map(|write| apply(client, namespace, write))
        .buffer_unordered(WRITE_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

async fn apply(client: &Client, namespace: &str, write: Write) -> Result<Outcome, kube::Error> {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let (target, result) = match write {
        Write::PutDocument {
            target,
            document,
            owners,
            exists,
            create_report,
        } => {
            let result = put_document(
                &config_maps,
                &target,
                &document,
                &owners,
                exists,
                create_report,
            )
            .await;
            (target, result)
        }
        Write::DeleteDocument { target } => {
            let result = delete_document(&config_maps, &target).await;
            (target, result)
        }
        Write::SetRestartEnv {
            target,
            container,
            document,
        } => {
            let patch = restart_env_patch(&target, &container, &document);
            let result = apply_to_workload(client, namespace, &target, patch).await;
            (target, result)
        }
        Write::ClearRestartEnv { target } => {
            // Applying nothing under our field manager drops every field it owned.
            let patch = workload_object(&target, json!({}));
            let result = apply_to_workload(client, namespace, &target, patch).await;
            (target, result)
        }
    };
    match result {
        Ok(()) => Ok(Outcome::Done),
        Err(kube::Error::Api(status)) if matches!(status.code, 409 | 422) => {
            Ok(Outcome::Refused(target, status.message))
        }
        Err(error) => Err(error),
    }
}

async fn put_document(
    api: &Api<ConfigMap>,
    target: &TargetRef,
    document: &ModeDocument,
    owners: &[Owner],
    exists: bool,
    create_report: bool,
) -> Result<(), kube::Error> {
    let name = document_name(target.kind.as_str(), &target.name);
    let owned_by_incidents: Vec<Value> = owners
        .iter()
        .map(|o| {
            json!({
                "apiVersion": "mailops.dev/v1alpha1", "kind": "MailIncident",
                "name": o.name, "uid": o.uid,
            })
        })
        .collect();
    let document_object = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY, ROLE_LABEL: ROLE_DOCUMENT},
            "annotations": {
                MODE_HASH_ANNOTATION: document.hash(),
                INCIDENT_ANNOTATION: document.incident.name,
                WORKLOAD_ANNOTATION: target.to_string(),
            },
            "ownerReferences": owned_by_incidents,
        },
        "data": {MODE_DOCUMENT_KEY: document.to_json()},
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    if exists && !create_report {
        // A merge patch replaces the owner list whole: exactly the current owners.
        let update = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        api.patch(&name, &update, &Patch::Merge(&document_object))
            .await?;
        return Ok(());
    }
    let stored = api
        .patch(&name, &params, &Patch::Apply(&document_object))
        .await?;
    if create_report {
        // Agents may patch the report, never create it, so it exists before they need
        // it; it belongs to the document and goes with it.
        let report_object = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {
                "name": format!("{name}{REPORT_SUFFIX}"),
                "labels": {MANAGED_BY_LABEL: MANAGED_BY, ROLE_LABEL: ROLE_REPORT},
                "annotations": {WORKLOAD_ANNOTATION: target.to_string()},
                "ownerReferences": [{
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "name": name, "uid": stored.metadata.uid,
                }],
            },
        });
        api.patch(
            &format!("{name}{REPORT_SUFFIX}"),
            &params,
            &Patch::Apply(&report_object),
        )
        .await?;
    }
    Ok(())
}

async fn delete_document(api: &Api<ConfigMap>, target: &TargetRef) -> Result<(), kube::Error> {
    let name = document_name(target.kind.as_str(), &target.name);
    for object in [name.clone(), format!("{name}{REPORT_SUFFIX}")] {
        match api.delete(&object, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

fn restart_env_patch(target: &TargetRef, container: &str, document: &ModeDocument) -> Value {
    let env: Vec<Value> = document
        .env()
        .into_iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect();
    workload_object(
        target,
        json!({"spec": {"template": {
            "metadata": {"annotations": {
                MODE_HASH_ANNOTATION: document.hash(),
                INCIDENT_ANNOTATION: document.incident.name,
            }},
            "spec": {"containers": [{"name": container, "env": env}]},
        }}}),
    )
}

/// An apply configuration for the workload: identity plus `fields`.
fn workload_object(target: &TargetRef, fields: Value) -> Value {
    let (api_version, kind) = match target.kind {
        WorkloadKind::Deployment => (Deployment::api_version(&()), Deployment::kind(&())),
        WorkloadKind::StatefulSet => (StatefulSet::api_version(&()), StatefulSet::kind(&())),
    };
    let mut object = json!({
        "apiVersion": api_version, "kind": kind,
        "metadata": {"name": target.name},
    });
    if let (Some(object), Value::Object(fields)) = (object.as_object_mut(), fields) {
        object.extend(fields);
    }
    object
}

async fn apply_to_workload(
    client: &Client,
    namespace: &str,
    target: &TargetRef,
    patch: Value,
) -> Result<(), kube::Error> {
    let params = PatchParams::apply(FIELD_MANAGER);
    match target.kind {
        WorkloadKind::Deployment => {
            Api::<Deployment>::namespaced(client.clone(), namespace)
                .patch(&target.name, &params, &Patch::Apply(&patch))
                .await?;
        }
        WorkloadKind::StatefulSet => {
            Api::<StatefulSet>::namespaced(client.clone(), namespace)
                .patch(&target.name, &params, &Patch::Apply(&patch))
                .await?;
        }
    }
    Ok(())
}
