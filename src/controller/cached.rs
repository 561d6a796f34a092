//! The shapes the caches hold workloads and the operator's ConfigMaps in: only the fields
//! planning reads, decoded straight from the API server's JSON. k8s-openapi's types hold
//! every field inline whether set or not (a Deployment is 2.4 KiB before its first
//! container, and a Container 2.1 KiB, a Volume 3.2 KiB), so at a thousand targets the
//! full types were most of the operator's memory; decoding into these never builds them,
//! nor the managedFields, which serde skips unread.

use super::field_manager::FIELD_MANAGER;
use crate::{
    api::mode_document::{self, AfterIncident, AgentReport, DriftReport},
    plan::QueueLoad,
};
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, StatefulSet},
        core::v1::ConfigMap,
    },
    apimachinery::pkg::apis::meta::v1::{
        LabelSelector, ManagedFieldsEntry, ObjectMeta, OwnerReference, Time,
    },
};
use kube::{Resource, core::Selector};
use serde::{Deserialize, Deserializer, de::IgnoredAny};
use std::{borrow::Cow, collections::BTreeMap, marker::PhantomData, sync::Arc};

/// A cached Deployment.
pub type CachedDeployment = CachedWorkload<Deployment>;
/// A cached StatefulSet.
pub type CachedStatefulSet = CachedWorkload<StatefulSet>;

/// A Deployment or StatefulSet (`K`) as cached.
#[derive(Clone, Debug, Deserialize)]
#[serde(from = "WireWorkload")]
pub struct CachedWorkload<K> {
    /// Its labels are in `labels`, not here.
    pub metadata: ObjectMeta,
    /// Its labels, shared with the target planning sees (see [`Target::labels`]).
    pub labels: Arc<BTreeMap<String, String>>,
    pub spec: WorkloadSpec,
    pub status: WorkloadStatus,
    api: PhantomData<fn() -> K>,
}

/// A Deployment or StatefulSet as the API server sends it, as far as it is read.
#[derive(Deserialize)]
struct WireWorkload {
    #[serde(deserialize_with = "slim_meta")]
    metadata: ObjectMeta,
    #[serde(default, deserialize_with = "or_default")]
    spec: WorkloadSpec,
    #[serde(default, deserialize_with = "or_default")]
    status: WorkloadStatus,
}

impl<K> From<WireWorkload> for CachedWorkload<K> {
    fn from(wire: WireWorkload) -> Self {
        let WireWorkload {
            mut metadata,
            spec,
            status,
        } = wire;
        Self {
            labels: Arc::new(metadata.labels.take().unwrap_or_default()),
            metadata,
            spec,
            status,
            api: PhantomData,
        }
    }
}

impl<K> CachedWorkload<K> {
    /// Whether its pod template carries a mode (our hash annotation, set with the env
    /// vars of restart delivery).
    pub fn carries_our_marks(&self) -> bool {
        self.spec
            .template
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(mode_document::MODE_HASH_ANNOTATION))
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpec {
    pub replicas: Option<i32>,
    #[serde(default, deserialize_with = "pod_selector")]
    pub selector: PodSelector,
    #[serde(default, deserialize_with = "or_default")]
    pub template: PodTemplate,
    /// StatefulSets only: the claims each pod gets, by name.
    #[serde(default, deserialize_with = "or_default")]
    pub volume_claim_templates: Vec<ClaimTemplate>,
}

/// A workload's pod selector, parsed once on arrival rather than at every sync.
#[derive(Clone, Debug, Default)]
pub struct PodSelector {
    /// None when it selects nothing: unreadable, or empty (a workload always has a
    /// non-empty one).
    pub selector: Option<Selector>,
    /// One of its `matchLabels`, to find the candidate pods by.
    pub first_label: Option<(String, String)>,
}

fn pod_selector<'de, D: Deserializer<'de>>(deserializer: D) -> Result<PodSelector, D::Error> {
    let Some(selector) = Option::<LabelSelector>::deserialize(deserializer)? else {
        return Ok(PodSelector::default());
    };
    let first_label = selector
        .match_labels
        .as_ref()
        .and_then(|labels| labels.iter().next())
        .map(|(key, value)| (key.clone(), value.clone()));
    Ok(PodSelector {
        selector: Selector::try_from(selector)
            .ok()
            .filter(|selector| !selector.selects_all()),
        first_label,
    })
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ClaimTemplate {
    #[serde(default, deserialize_with = "or_default")]
    pub metadata: Named,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Named {
    pub name: Option<String>,
}

/// Of a pod template: our annotations (restart delivery's marks), and what the queue
/// check reads.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct PodTemplate {
    #[serde(default, deserialize_with = "or_default")]
    pub metadata: TemplateMeta,
    #[serde(default, deserialize_with = "or_default")]
    pub spec: PodVolumes,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct TemplateMeta {
    #[serde(default, deserialize_with = "our_annotations")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// The containers' names and mounts, and the volumes' names and kinds.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct PodVolumes {
    #[serde(default, deserialize_with = "or_default")]
    pub containers: Vec<ContainerMounts>,
    #[serde(default, deserialize_with = "or_default")]
    pub volumes: Vec<VolumeKind>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerMounts {
    pub name: String,
    #[serde(default, deserialize_with = "or_default")]
    pub volume_mounts: Vec<Mount>,
    /// Only the `MAIL_INCIDENT_*` variables restart delivery sets, as (name, value).
    #[serde(default, deserialize_with = "our_env")]
    pub env: Vec<(String, String)>,
}

/// A container's env var, as far as restart delivery's are read.
#[derive(Deserialize)]
struct EnvVar {
    name: String,
    value: Option<String>,
}

fn our_env<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<(String, String)>, D::Error> {
    Ok(Option::<Vec<EnvVar>>::deserialize(deserializer)?
        .unwrap_or_default()
        .into_iter()
        .filter(|var| var.name.starts_with(mode_document::RESTART_ENV_PREFIX))
        .map(|var| (var.name, var.value.unwrap_or_default()))
        .collect())
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    pub name: String,
    pub mount_path: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeKind {
    pub name: String,
    #[serde(default, deserialize_with = "present")]
    pub empty_dir: bool,
}

/// What of a workload's status tells whether its rollout is complete.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    pub observed_generation: Option<i64>,
    pub replicas: Option<i32>,
    pub updated_replicas: Option<i32>,
    pub available_replicas: Option<i32>,
    pub ready_replicas: Option<i32>,
    pub current_revision: Option<String>,
    pub update_revision: Option<String>,
}

/// One of the operator's ConfigMaps (a mode document or a report) as cached: its name
/// and resource version, the annotations planning reads, and what it is with what is
/// read of its data.
/// Held in plain fields rather than maps: a map costs over 500 bytes however few its
/// entries, and a target has two of these ConfigMaps.
#[derive(Clone, Debug, Deserialize)]
#[serde(from = "WireConfigMap")]
pub struct CachedConfigMap {
    /// Name, namespace and resource version only.
    pub metadata: ObjectMeta,
    /// `mailops.dev/mode-hash`: the content of a mode document, as annotated.
    pub mode_hash: Option<String>,
    /// `mailops.dev/incident`: whose mode a document carries.
    pub incident: Option<String>,
    /// `mailops.dev/workload`: the target a document or report is for.
    pub workload: Option<String>,
    pub kind: ConfigMapKind,
}

/// What one of our ConfigMaps is, by its role label.
#[derive(Clone, Debug)]
pub enum ConfigMapKind {
    /// A mode document, its content kept as its hash, which its annotation must agree
    /// with (someone may edit either).
    Document { content_hash: Option<String> },
    /// A report (or a ConfigMap of ours labelled as no document): its entries by pod
    /// name, decoded once, as they arrive, rather than at every sync that reads them.
    Report(Vec<ReportEntry>),
}

/// One pod's entry in a report.
#[derive(Clone, Debug)]
pub struct ReportEntry {
    pub pod: String,
    pub reported: Reported,
}

/// What a report entry says.
#[derive(Clone, Debug)]
pub enum Reported {
    /// The agent's report.
    Read(PodReport),
    /// Text that is no agent report (a hand edit, an agent of another version): its pod
    /// has reported nothing readable, and the text is kept so that a change to it still
    /// counts as one.
    Unreadable(String),
}

impl Reported {
    fn decode(text: String) -> Self {
        match serde_json::from_str::<AgentReport>(&text) {
            Ok(report) => Self::Read(PodReport::from(report)),
            Err(_) => Self::Unreadable(text),
        }
    }
}

/// What the controller keeps of an agent's report: all but its counts by queue, which
/// only the agent's own metrics show (a map of them is over 500 bytes a pod).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodReport {
    pub hash: String,
    pub after: Option<AfterIncident>,
    pub queue: Option<QueueLoad>,
    pub drift: Option<DriftReport>,
}

impl From<AgentReport> for PodReport {
    fn from(report: AgentReport) -> Self {
        Self {
            queue: report.queue.as_ref().map(QueueLoad::from),
            hash: report.hash,
            after: report.after,
            drift: report.drift,
        }
    }
}

impl PodReport {
    /// See [`AgentReport::released`].
    pub fn released(&self) -> bool {
        mode_document::released(&self.hash, self.after)
    }
}

impl CachedConfigMap {
    /// The hash of a document's `mode.json` as stored: what its agents apply. None for a
    /// report.
    pub fn content_hash(&self) -> Option<&str> {
        match &self.kind {
            ConfigMapKind::Document { content_hash } => content_hash.as_deref(),
            ConfigMapKind::Report(_) => None,
        }
    }

    /// A report's entries, by pod name; none for a document.
    pub fn entries(&self) -> &[ReportEntry] {
        match &self.kind {
            ConfigMapKind::Document { .. } => &[],
            ConfigMapKind::Report(entries) => entries,
        }
    }

    /// What the agent of `pod` reported, when it is readable.
    pub fn report_of(&self, pod: &str) -> Option<&PodReport> {
        match &self
            .entries()
            .iter()
            .find(|entry| entry.pod == pod)?
            .reported
        {
            Reported::Read(report) => Some(report),
            Reported::Unreadable(_) => None,
        }
    }
}

/// A ConfigMap as the API server sends it, as far as it is read.
#[derive(Deserialize)]
struct WireConfigMap {
    #[serde(deserialize_with = "slim_meta")]
    metadata: ObjectMeta,
    #[serde(default)]
    data: Option<BTreeMap<String, String>>,
}

impl From<WireConfigMap> for CachedConfigMap {
    fn from(wire: WireConfigMap) -> Self {
        let WireConfigMap { mut metadata, data } = wire;
        let mut annotations = metadata.annotations.take().unwrap_or_default();
        let role = metadata
            .labels
            .take()
            .and_then(|mut labels| labels.remove(mode_document::ROLE_LABEL));
        let kind = match role.as_deref() {
            Some(mode_document::ROLE_DOCUMENT) => ConfigMapKind::Document {
                content_hash: data
                    .as_ref()
                    .and_then(|d| d.get(mode_document::MODE_DOCUMENT_KEY))
                    .map(|text| mode_document::content_hash(text)),
            },
            _ => ConfigMapKind::Report(
                data.unwrap_or_default()
                    .into_iter()
                    .map(|(pod, text)| ReportEntry {
                        pod,
                        reported: Reported::decode(text),
                    })
                    .collect(),
            ),
        };
        Self {
            metadata,
            mode_hash: annotations.remove(mode_document::MODE_HASH_ANNOTATION),
            incident: annotations.remove(mode_document::INCIDENT_ANNOTATION),
            workload: annotations.remove(mode_document::WORKLOAD_ANNOTATION),
            kind,
        }
    }
}

/// The metadata fields anything cached is read by: identity (a created document's uid
/// owns its report), versions (a workload's generation tells its rollout's progress),
/// labels, and only our own annotations (`mailops.dev/...`; kubectl's last-applied copy of the
/// whole manifest is the largest of the others).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    generation: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "our_annotations")]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "or_default")]
    owner_references: Vec<OwnerUid>,
    #[serde(default, deserialize_with = "or_default")]
    managed_fields: Vec<Writer>,
}

/// Of an owner reference, the owner's identity.
#[derive(Deserialize)]
struct OwnerUid {
    uid: String,
}

/// Of a managedFields entry, who wrote and when (its field set is skipped unread).
#[derive(Deserialize)]
struct Writer {
    manager: Option<String>,
    time: Option<Time>,
    subresource: Option<String>,
}

fn slim_meta<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ObjectMeta, D::Error> {
    let meta = SlimMeta::deserialize(deserializer)?;
    Ok(ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        resource_version: meta.resource_version,
        generation: meta.generation,
        labels: meta.labels,
        annotations: meta.annotations,
        owner_references: (!meta.owner_references.is_empty()).then(|| {
            meta.owner_references
                .into_iter()
                .map(|o| OwnerReference {
                    uid: o.uid,
                    ..OwnerReference::default()
                })
                .collect()
        }),
        managed_fields: last_writer(meta.managed_fields).map(|writer| vec![writer]),
        ..ObjectMeta::default()
    })
}

/// The entry of whoever last wrote the object itself (not its status), when that is not
/// this operator: who to name when something of ours was changed by another hand. Times
/// are in whole seconds: within the same second another hand is taken as the later.
fn last_writer(writers: Vec<Writer>) -> Option<ManagedFieldsEntry> {
    let last = writers
        .into_iter()
        .filter(|w| w.subresource.as_deref().unwrap_or_default().is_empty())
        .max_by_key(|w| {
            let ours = w.manager.as_deref() == Some(FIELD_MANAGER);
            (w.time.as_ref().map(|t| t.0), !ours)
        })?;
    let manager = last.manager.filter(|m| m != FIELD_MANAGER)?;
    Some(ManagedFieldsEntry {
        manager: Some(manager),
        time: last.time,
        ..ManagedFieldsEntry::default()
    })
}

/// The field manager that last wrote an object of the caches, when it is not this
/// operator (see [`last_writer`]).
pub fn changed_by(meta: &ObjectMeta) -> Option<&str> {
    meta.managed_fields.as_ref()?.first()?.manager.as_deref()
}

/// The uids of an object's owners, as cached.
pub fn owner_uids(meta: &ObjectMeta) -> impl Iterator<Item = &str> {
    meta.owner_references
        .iter()
        .flatten()
        .map(|o| o.uid.as_str())
}

fn our_annotations<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    let mut annotations = Option::<BTreeMap<String, String>>::deserialize(deserializer)?;
    if let Some(map) = &mut annotations {
        map.retain(|key, _| key.starts_with("mailops.dev/"));
    }
    Ok(annotations.filter(|map| !map.is_empty()))
}

/// A field the API server may send as `null` or leave out: both are its default.
fn or_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Whether a field (a volume source) is set, whatever it holds.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    Ok(Option::<IgnoredAny>::deserialize(deserializer)?.is_some())
}

/// The API identity of `K`, for a cached shape of it.
macro_rules! resource_of {
    ($cached:ty, $api:ty $(, $generic:ident)?) => {
        impl$(<$generic: Resource<DynamicType = ()>>)? Resource for $cached {
            type DynamicType = ();
            type Scope = <$api as Resource>::Scope;

            fn kind(dt: &()) -> Cow<'_, str> {
                <$api>::kind(dt)
            }
            fn group(dt: &()) -> Cow<'_, str> {
                <$api>::group(dt)
            }
            fn version(dt: &()) -> Cow<'_, str> {
                <$api>::version(dt)
            }
            fn plural(dt: &()) -> Cow<'_, str> {
                <$api>::plural(dt)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}
resource_of!(CachedWorkload<K>, K, K);
resource_of!(CachedConfigMap, ConfigMap);

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::SelectorExt;
    use serde_json::json;

    /// A StatefulSet as the API server sends it: managedFields, kubectl's last-applied
    /// copy, a template with `creationTimestamp: null`, volumes of several kinds.
    fn statefulset() -> serde_json::Value {
        json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {
                "name": "exim", "namespace": "mail", "uid": "u-1", "resourceVersion": "42",
                "generation": 3, "creationTimestamp": "2026-11-23T10:00:00Z",
                "labels": {"app": "mta"},
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"a\": \"whole manifest\"}",
                    "mailops.dev/mta": "exim",
                    "example.com/owner": "team-mail",
                },
                "managedFields": [{"manager": "kubectl", "operation": "Apply",
                                   "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}],
            },
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "exim"}},
                "template": {
                    "metadata": {"creationTimestamp": null, "labels": {"app": "exim"},
                                 "annotations": {"mailops.dev/mode-hash": "h1", "other": "x"}},
                    "spec": {
                        "containers": [{"name": "exim", "image": "exim:4",
                                        "volumeMounts": [{"name": "spool", "mountPath": "/var/spool/exim4"},
                                                         {"name": "scratch", "mountPath": "/tmp"}]}],
                        "volumes": [{"name": "scratch", "emptyDir": {}},
                                    {"name": "config", "configMap": {"name": "exim-config"}}],
                    },
                },
                "volumeClaimTemplates": [{"metadata": {"name": "spool"},
                                          "spec": {"accessModes": ["ReadWriteOnce"]}}],
            },
            "status": {"observedGeneration": 3, "replicas": 2, "readyReplicas": 2,
                       "currentRevision": "r1", "updateRevision": "r1", "conditions": null},
        })
    }

    #[test]
    fn a_workload_keeps_what_planning_reads_and_nothing_else() {
        let cached: CachedStatefulSet =
            serde_json::from_value(statefulset()).expect("a StatefulSet decodes");
        let meta = &cached.metadata;
        assert_eq!(meta.name.as_deref(), Some("exim"));
        assert_eq!(meta.namespace.as_deref(), Some("mail"));
        assert_eq!(meta.resource_version.as_deref(), Some("42"));
        assert_eq!(meta.generation, Some(3));
        assert_eq!(*cached.labels, [("app".into(), "mta".into())].into());
        assert_eq!(meta.labels, None, "kept once, shared with planning");
        assert_eq!(
            meta.annotations,
            Some([("mailops.dev/mta".into(), "exim".into())].into()),
            "only our annotations are kept"
        );
        assert!(meta.creation_timestamp.is_none());
        assert_eq!(
            changed_by(meta),
            Some("kubectl"),
            "only who wrote last is kept"
        );

        let spec = &cached.spec;
        assert_eq!(spec.replicas, Some(2));
        let selector = spec.selector.selector.as_ref().expect("a selector");
        assert!(selector.matches(&[("app".into(), "exim".into())].into()));
        assert!(!selector.matches(&[("app".into(), "postfix".into())].into()));
        assert_eq!(
            spec.selector.first_label,
            Some(("app".into(), "exim".into()))
        );
        assert_eq!(
            spec.template.metadata.annotations,
            Some([("mailops.dev/mode-hash".into(), "h1".into())].into())
        );
        assert!(cached.carries_our_marks());
        let container = &spec.template.spec.containers[0];
        assert_eq!(container.name, "exim");
        let mounts: Vec<(&str, &str)> = container
            .volume_mounts
            .iter()
            .map(|m| (m.name.as_str(), m.mount_path.as_str()))
            .collect();
        assert_eq!(mounts, [("spool", "/var/spool/exim4"), ("scratch", "/tmp")]);
        let volumes: Vec<(&str, bool)> = spec
            .template
            .spec
            .volumes
            .iter()
            .map(|v| (v.name.as_str(), v.empty_dir))
            .collect();
        assert_eq!(volumes, [("scratch", true), ("config", false)]);
        assert_eq!(
            spec.volume_claim_templates[0].metadata.name.as_deref(),
            Some("spool")
        );
        assert_eq!(cached.status.observed_generation, Some(3));
        assert_eq!(cached.status.ready_replicas, Some(2));
        assert_eq!(cached.status.update_revision.as_deref(), Some("r1"));
    }

    #[test]
    fn the_last_writer_is_named_unless_it_is_this_operator() {
        let writers = |entries: serde_json::Value| -> Option<String> {
            let meta = slim_meta(json!({"name": "n", "managedFields": entries}))
                .expect("metadata decodes");
            changed_by(&meta).map(String::from)
        };
        let entry = |manager: &str, time: &str, subresource: Option<&str>| {
            json!({"manager": manager, "operation": "Update", "time": time,
                   "subresource": subresource, "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {}}})
        };
        let ours = entry(FIELD_MANAGER, "2026-12-06T10:00:00Z", None);
        let hand = entry("kubectl-patch", "2026-12-06T10:05:00Z", None);
        let status = entry(
            "kube-controller-manager",
            "2026-12-06T10:09:00Z",
            Some("status"),
        );
        assert_eq!(
            writers(json!([ours, hand, status])).as_deref(),
            Some("kubectl-patch"),
            "the newest writer of the object itself, whatever writes its status"
        );
        let ours_again = entry(FIELD_MANAGER, "2026-12-06T10:06:00Z", None);
        assert_eq!(writers(json!([hand, ours_again])), None, "put back since");
        let same_second = entry(FIELD_MANAGER, "2026-12-06T10:05:00Z", None);
        assert_eq!(
            writers(json!([hand, same_second])).as_deref(),
            Some("kubectl-patch"),
            "in the same second, another hand is taken as the later"
        );
        assert_eq!(writers(json!([])), None);
    }

    #[test]
    fn restart_env_vars_of_ours_are_kept_and_others_dropped() {
        let cached: CachedDeployment = serde_json::from_value(json!({
            "metadata": {"name": "mx"},
            "spec": {"template": {"spec": {"containers": [{"name": "mta", "env": [
                {"name": "MAIL_INCIDENT_MODE", "value": "TempFail"},
                {"name": "TZ", "value": "UTC"},
                {"name": "MAIL_INCIDENT_REPLY_TEXT"},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            ]}]}}},
        }))
        .expect("a Deployment decodes");
        assert_eq!(
            cached.spec.template.spec.containers[0].env,
            [
                ("MAIL_INCIDENT_MODE".to_string(), "TempFail".to_string()),
                ("MAIL_INCIDENT_REPLY_TEXT".to_string(), String::new())
            ]
        );
    }

    #[test]
    fn absent_and_null_fields_decode_as_empty() {
        let cached: CachedDeployment = serde_json::from_value(json!({
            "metadata": {"name": "bare", "annotations": {"other": "x"}},
            "spec": {"selector": {"matchLabels": {"app": "bare"}},
                     "template": {"metadata": null, "spec": {"containers": [{"name": "mta", "volumeMounts": null}], "volumes": null}}},
            "status": null,
        }))
        .expect("a sparse Deployment decodes");
        assert_eq!(cached.metadata.annotations, None, "no annotation of ours");
        assert!(!cached.carries_our_marks());
        assert!(
            cached.spec.template.spec.containers[0]
                .volume_mounts
                .is_empty()
        );
        assert!(cached.spec.template.spec.volumes.is_empty());
        assert_eq!(cached.status.replicas, None);
    }

    #[test]
    fn a_document_loses_its_data_and_a_report_keeps_it() {
        let config_map = |role: &str| -> CachedConfigMap {
            serde_json::from_value(json!({
                "metadata": {"name": "n", "namespace": "mail", "resourceVersion": "7",
                             "labels": {mode_document::ROLE_LABEL: role, "app.kubernetes.io/managed-by": "m"},
                             "annotations": {mode_document::MODE_HASH_ANNOTATION: "h",
                                             mode_document::INCIDENT_ANNOTATION: "outage",
                                             mode_document::WORKLOAD_ANNOTATION: "Deployment/mx",
                                             "example.com/other": "x"}},
                "data": {"pod-1": "{\"hash\": \"h\"}", "pod-2": "{}",
                         mode_document::MODE_DOCUMENT_KEY: "{\"mode\": \"TempFail\"}"},
            }))
            .expect("a ConfigMap decodes")
        };
        let document = config_map(mode_document::ROLE_DOCUMENT);
        assert!(matches!(document.kind, ConfigMapKind::Document { .. }));
        assert!(document.entries().is_empty());
        assert_eq!(
            document.content_hash(),
            Some(mode_document::content_hash("{\"mode\": \"TempFail\"}").as_str()),
            "the document's content is kept as its hash"
        );
        assert_eq!(document.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(document.metadata.labels, None);
        assert_eq!(document.metadata.annotations, None);
        assert_eq!(document.mode_hash.as_deref(), Some("h"));
        assert_eq!(document.incident.as_deref(), Some("outage"));
        assert_eq!(document.workload.as_deref(), Some("Deployment/mx"));
        let report = config_map(mode_document::ROLE_REPORT);
        assert!(matches!(report.kind, ConfigMapKind::Report(_)));
        assert_eq!(report.content_hash(), None);
        let pods: Vec<&str> = report.entries().iter().map(|e| e.pod.as_str()).collect();
        assert_eq!(pods, [mode_document::MODE_DOCUMENT_KEY, "pod-1", "pod-2"]);
        assert_eq!(
            report.report_of("pod-1").map(|r| r.hash.as_str()),
            Some("h")
        );
        assert_eq!(report.report_of("pod-3"), None);
    }

    #[test]
    fn report_entries_are_decoded_once_and_unreadable_ones_kept_as_written() {
        let report: CachedConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "mx-report", "namespace": "mail",
                         "labels": {mode_document::ROLE_LABEL: mode_document::ROLE_REPORT}},
            "data": {
                "mx-1": "{\"hash\": \"h1\", \"after\": \"Releasing\", \"queue\": {\"messages\": 3, \"byQueue\": {\"deferred\": 3}, \"oldestAgeSeconds\": 60}, \"drift\": {\"count\": 2, \"what\": \"mode file\", \"since\": 100}}",
                "mx-2": "{}",
                "mx-3": "not json",
                "mx-4": "{\"hash\": \"h4\", \"queue\": {\"messages\": 1, \"byQueue\": {\"deferred\": -1}, \"oldestAgeSeconds\": 1}}",
            },
        }))
        .expect("a report decodes whatever its entries hold");
        let read = report.report_of("mx-1").expect("mx-1's report");
        assert_eq!(read.hash, "h1");
        assert_eq!(read.after, Some(mode_document::AfterIncident::Releasing));
        assert_eq!(
            read.queue,
            Some(QueueLoad {
                messages: 3,
                oldest_age_seconds: 60
            }),
            "the queue's load is kept, its counts by queue are not"
        );
        assert_eq!(
            read.drift.as_ref().map(|d| (d.count, d.since)),
            Some((2, Some(100)))
        );
        let unreadable: Vec<(&str, &str)> = report
            .entries()
            .iter()
            .filter_map(|e| match &e.reported {
                Reported::Unreadable(text) => Some((e.pod.as_str(), text.as_str())),
                Reported::Read(_) => None,
            })
            .collect();
        assert_eq!(
            unreadable.iter().map(|(pod, _)| *pod).collect::<Vec<_>>(),
            ["mx-2", "mx-3", "mx-4"],
            "what the agent's own report type refuses (here a negative count by queue) is unreadable"
        );
        assert_eq!(unreadable[1], ("mx-3", "not json"), "kept as written");
        assert_eq!(report.report_of("mx-2"), None, "nothing readable reported");
    }
}
