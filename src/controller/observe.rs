//! Turns cached cluster objects into the plan's view of a namespace's targets.

use super::{
    cache::Caches,
    cached::{
        CachedConfigMap, CachedDeployment, CachedStatefulSet, CachedWorkload, ClaimTemplate,
        ContainerMounts, PodReport, PodSelector, PodTemplate, changed_by, owner_uids,
    },
    versions::Versions,
};
use crate::{
    api::{
        MtaKind,
        mode_document::{
            DELIVERY_ANNOTATION, INCIDENT_ANNOTATION, MODE_DOCUMENT_KEY, MODE_HASH_ANNOTATION,
            MTA_ANNOTATION, MTA_CONTAINER_ANNOTATION, QUEUE_PATH_ANNOTATION, document_name,
            report_name,
        },
    },
    plan::{Delivery, QueueStorage, Target, TargetRef, WorkloadKind},
};
use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::{
    ResourceExt,
    core::{PartialObjectMeta, SelectorExt},
    runtime::reflector::{ObjectRef, Store},
};
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

/// The parts of a Deployment or StatefulSet that planning reads.
struct Workload<'a> {
    kind: WorkloadKind,
    meta: &'a ObjectMeta,
    labels: &'a Arc<BTreeMap<String, String>>,
    selector: &'a PodSelector,
    replicas: i32,
    template: &'a PodTemplate,
    claim_templates: &'a [ClaimTemplate],
    rollout_complete: bool,
    ready_replicas: i32,
}

/// What a sync sees of a namespace.
pub struct Observed {
    /// Every Deployment and StatefulSet, in a stable order.
    pub targets: Vec<Arc<Target>>,
    /// How many of them were built anew (the others are unchanged since the last sync).
    pub rebuilt: usize,
    /// Workloads that are gone but still have a mode document or report of ours.
    pub orphans: Vec<TargetRef>,
    /// The resource versions seen, which writes are conditional on.
    pub versions: HashMap<TargetRef, Versions>,
}

/// The targets of one namespace as the last sync built them, each with what it was built
/// from: a sync builds again only those whose workload, document, report or pods changed,
/// and hands the planner the same `Arc` for the others, which it recognises as unchanged
/// at a glance.
#[derive(Default)]
pub struct Observations {
    targets: HashMap<TargetRef, (Inputs, Arc<Target>)>,
}

/// What a target is built from: the resource versions of its objects and its pods.
#[derive(PartialEq)]
struct Inputs {
    workload: Option<String>,
    document: Option<String>,
    report: Option<String>,
    live_pods: Vec<String>,
    /// The report's entries whose pods are gone.
    departed: Vec<String>,
}

/// Observes `namespace` in the caches, building again only the targets whose inputs
/// changed since `previous` was observed.
pub fn observe(caches: &Caches, namespace: &str, previous: &mut Observations) -> Observed {
    let in_ns = |meta: &ObjectMeta| meta.namespace.as_deref() == Some(namespace);
    let deployments = caches.deployments.state_filter(|d| in_ns(&d.metadata));
    let statefulsets = caches.statefulsets.state_filter(|s| in_ns(&s.metadata));
    let config_maps = ConfigMapsIn {
        store: &caches.config_maps,
        namespace,
    };
    let pods = caches
        .pods
        .state_filter(|p| in_ns(&p.metadata) && p.metadata.deletion_timestamp.is_none());
    // Terminating pods still run their agents: their report entries stay until they go.
    // Looked up per report entry, so a sync costs nothing more per pod of the namespace.
    let pod_exists = |name: &str| {
        caches
            .pods
            .get(&ObjectRef::new(name).within(namespace))
            .is_some()
    };
    // Live pods by each of their labels, so that finding a workload's pods costs the size
    // of one label's group, not a scan of the namespace per workload.
    let mut pods_by_label: HashMap<(&str, &str), Vec<&PartialObjectMeta<Pod>>> = HashMap::new();
    for pod in &pods {
        for (key, value) in pod.labels() {
            pods_by_label.entry((key, value)).or_default().push(pod);
        }
    }

    let workloads = deployments
        .iter()
        .map(|d| deployment(d))
        .chain(statefulsets.iter().map(|s| statefulset(s)));
    let mut versions = HashMap::new();
    let mut built = HashMap::with_capacity(previous.targets.len());
    let mut rebuilt = 0;
    let mut targets: Vec<Arc<Target>> = workloads
        .map(|w| {
            let live_pods: Vec<String> = match &w.selector.selector {
                Some(selector) => {
                    let candidates: Vec<&PartialObjectMeta<Pod>> =
                        w.selector.first_label.as_ref().map_or_else(
                            || pods.iter().map(AsRef::as_ref).collect(),
                            |(k, v)| {
                                pods_by_label
                                    .get(&(k.as_str(), v.as_str()))
                                    .cloned()
                                    .unwrap_or_default()
                            },
                        );
                    candidates
                        .into_iter()
                        .filter(|p| selector.matches(p.labels()))
                        .map(|p| p.name_any())
                        .collect()
                }
                None => vec![],
            };
            let target_ref = TargetRef {
                kind: w.kind,
                name: w.meta.name.clone().unwrap_or_default(),
            };
            let documents = config_maps.of(&target_ref);
            let seen = Versions {
                workload: w.meta.resource_version.clone(),
                ..documents.versions()
            };
            let inputs = Inputs {
                workload: seen.workload.clone(),
                document: seen.document.clone(),
                report: seen.report.clone(),
                live_pods,
                departed: documents
                    .report
                    .as_deref()
                    .map(|r| departed(r, &pod_exists))
                    .unwrap_or_default(),
            };
            let target = match previous.targets.remove(&target_ref) {
                Some((before, target)) if before == inputs => target,
                _ => {
                    rebuilt += 1;
                    Arc::new(target(&w, &documents, &inputs.live_pods, &inputs.departed))
                }
            };
            versions.insert(target_ref.clone(), seen);
            built.insert(target_ref, (inputs, target.clone()));
            target
        })
        .collect();
    previous.targets = built;
    targets.sort_by(|a, b| a.target.cmp(&b.target));
    let orphans: BTreeSet<TargetRef> = caches
        .config_maps
        .state_filter(|c| in_ns(&c.metadata))
        .iter()
        .filter_map(|c| TargetRef::parse(c.workload.as_deref()?))
        .filter(|workload| !versions.contains_key(workload))
        .collect();
    for orphan in &orphans {
        versions.insert(orphan.clone(), config_maps.of(orphan).versions());
    }
    Observed {
        targets,
        rebuilt,
        orphans: orphans.into_iter().collect(),
        versions,
    }
}

/// Our ConfigMaps of one namespace, looked up by name in the cache itself: a map of
/// them by name, built at every sync, cost a copy of every name.
struct ConfigMapsIn<'a> {
    store: &'a Store<CachedConfigMap>,
    namespace: &'a str,
}

impl ConfigMapsIn<'_> {
    /// `target`'s document and report, looked up once for all a sync reads of them.
    fn of(&self, target: &TargetRef) -> Documents {
        let get = |name: &str| self.store.get(&ObjectRef::new(name).within(self.namespace));
        let name = document_name(target.kind.as_str(), &target.name);
        Documents {
            document: get(&name),
            report: get(&report_name(&name)),
        }
    }
}

/// A target's mode document and report, as cached.
struct Documents {
    document: Option<Arc<CachedConfigMap>>,
    report: Option<Arc<CachedConfigMap>>,
}

impl Documents {
    /// Their resource versions (none: absent).
    fn versions(&self) -> Versions {
        let version_of = |cached: &Option<Arc<CachedConfigMap>>| {
            cached.as_ref()?.metadata.resource_version.clone()
        };
        Versions {
            document: version_of(&self.document),
            report: version_of(&self.report),
            workload: None,
        }
    }
}

fn deployment(d: &CachedDeployment) -> Workload<'_> {
    let (spec, status) = (&d.spec, &d.status);
    let replicas = spec.replicas.unwrap_or(1);
    let rollout_complete = status.observed_generation >= d.metadata.generation
        && status.updated_replicas.unwrap_or(0) == replicas
        && status.replicas.unwrap_or(0) == replicas
        && status.available_replicas.unwrap_or(0) == replicas;
    workload(
        WorkloadKind::Deployment,
        d,
        rollout_complete,
        status.ready_replicas,
    )
}

fn statefulset(s: &CachedStatefulSet) -> Workload<'_> {
    let (spec, status) = (&s.spec, &s.status);
    let replicas = spec.replicas.unwrap_or(1);
    let rollout_complete = status.observed_generation >= s.metadata.generation
        && status.update_revision.is_some()
        && status.update_revision == status.current_revision
        && status.ready_replicas.unwrap_or(0) == replicas;
    workload(
        WorkloadKind::StatefulSet,
        s,
        rollout_complete,
        status.ready_replicas,
    )
}

fn workload<K>(
    kind: WorkloadKind,
    cached: &CachedWorkload<K>,
    rollout_complete: bool,
    ready_replicas: Option<i32>,
) -> Workload<'_> {
    let spec = &cached.spec;
    Workload {
        kind,
        meta: &cached.metadata,
        labels: &cached.labels,
        selector: &spec.selector,
        replicas: spec.replicas.unwrap_or(1),
        template: &spec.template,
        claim_templates: &spec.volume_claim_templates,
        rollout_complete,
        ready_replicas: ready_replicas.unwrap_or(0),
    }
}

/// The pods named in `report` that no longer exist, terminating or not.
fn departed(report: &CachedConfigMap, pod_exists: &dyn Fn(&str) -> bool) -> Vec<String> {
    report
        .entries()
        .iter()
        .filter(|entry| !pod_exists(&entry.pod))
        .map(|entry| entry.pod.clone())
        .collect()
}

fn target(
    w: &Workload<'_>,
    documents: &Documents,
    live_pods: &[String],
    departed_reports: &[String],
) -> Target {
    let name = w.meta.name.clone().unwrap_or_default();
    let annotation = |key: &str| w.meta.annotations.as_ref()?.get(key).map(String::as_str);
    let mta = annotation(MTA_ANNOTATION).and_then(|value| value.parse().ok());
    let delivery = match annotation(DELIVERY_ANNOTATION) {
        Some(value) if value.eq_ignore_ascii_case("restart") => Delivery::Restart,
        _ => Delivery::Reload,
    };
    let (document, report) = (documents.document.as_deref(), documents.report.as_deref());
    let reports: Vec<Option<&PodReport>> =
        live_pods.iter().map(|pod| report?.report_of(pod)).collect();
    let drifts = live_pods
        .iter()
        .zip(&reports)
        .filter_map(|(pod, report)| Some((pod.clone(), (*report)?.drift.clone()?)))
        .collect();
    let document_mismatch =
        document.and_then(|d| match (d.mode_hash.as_deref(), d.content_hash()) {
            (Some(annotated), Some(content)) if annotated == content => None,
            (annotated, content) => Some(format!(
                "its {MODE_HASH_ANNOTATION} annotation says {} and its {MODE_DOCUMENT_KEY} hashes to {}",
                annotated.unwrap_or("nothing"),
                content.unwrap_or("nothing (absent)")
            )),
        });
    // Who else wrote what carries the mode on its delivery channel.
    let changed_by = match delivery {
        Delivery::Reload => document.and_then(|d| changed_by(&d.metadata)),
        Delivery::Restart => changed_by(w.meta),
    };
    let template_annotation =
        |key: &str| w.template.metadata.annotations.as_ref()?.get(key).cloned();
    let source_incidents = document
        .and_then(|d| d.incident.clone())
        .or_else(|| template_annotation(INCIDENT_ANNOTATION))
        .map(|names| names.split(',').map(String::from).collect())
        .unwrap_or_default();
    Target {
        target: TargetRef { kind: w.kind, name },
        labels: w.labels.clone(),
        delivery,
        mta,
        document_hash: document.map(|d| d.content_hash().unwrap_or_default().to_string()),
        document_mismatch,
        document_owners: document
            .map(|d| owner_uids(&d.metadata).map(String::from).collect())
            .unwrap_or_default(),
        report_owned: report.is_some_and(|r| {
            let document_uid = document.and_then(|d| d.metadata.uid.as_deref());
            owner_uids(&r.metadata).any(|uid| Some(uid) == document_uid)
        }),
        template_env: mta_container_spec(w, annotation(MTA_CONTAINER_ANNOTATION))
            .map(|c| c.env.clone())
            .unwrap_or_default(),
        changed_by: changed_by.map(String::from),
        drifts,
        unreleased_pods: live_pods
            .iter()
            .zip(&reports)
            .filter(|(_, report)| report.as_ref().is_some_and(|r| !r.released()))
            .map(|(pod, _)| pod.clone())
            .collect(),
        departed_reports: departed_reports.to_vec(),
        template_hash: template_annotation(MODE_HASH_ANNOTATION),
        source_incidents,
        report_exists: report.is_some(),
        // A pod whose MTA differs from what its agent applied does not count as applied.
        pod_reports: reports
            .iter()
            .map(|r| {
                r.as_ref()
                    .filter(|r| r.drift.as_ref().is_none_or(|d| d.since.is_none()))
                    .map(|r| r.hash.clone())
            })
            .collect(),
        queues: reports
            .into_iter()
            .flatten()
            .filter_map(|r| r.queue)
            .collect(),
        replicas: w.replicas,
        ready_replicas: w.ready_replicas,
        rollout_complete: w.rollout_complete,
        mta_container: mta_container(w, annotation(MTA_CONTAINER_ANNOTATION)),
        queue: queue_storage(
            w,
            mta,
            annotation(MTA_CONTAINER_ANNOTATION),
            annotation(QUEUE_PATH_ANNOTATION),
        ),
    }
}

/// The MTA container's name: the one the annotation names, else the first.
fn mta_container(w: &Workload<'_>, named: Option<&str>) -> Option<String> {
    mta_container_spec(w, named).map(|c| c.name.clone())
}

/// The MTA container: the one the annotation names, else the first.
fn mta_container_spec<'a>(w: &Workload<'a>, named: Option<&str>) -> Option<&'a ContainerMounts> {
    let containers = &w.template.spec.containers;
    match named {
        Some(name) => containers.iter().find(|c| c.name == name),
        None => containers.first(),
    }
}

/// Where the MTA container's queue directory lives.
fn queue_storage(
    w: &Workload<'_>,
    mta: Option<MtaKind>,
    container: Option<&str>,
    queue_path: Option<&str>,
) -> QueueStorage {
    let Some(path) = queue_path.or(match mta {
        Some(MtaKind::Postfix) | None => Some("/var/spool/postfix"),
        Some(MtaKind::Exim) => Some("/var/spool/exim4"),
        Some(MtaKind::Generic) => None,
    }) else {
        return QueueStorage::Unknown {
            why: format!("a Generic MTA needs the {QUEUE_PATH_ANNOTATION} annotation"),
        };
    };
    let pod = &w.template.spec;
    let Some(container_spec) = mta_container_spec(w, container) else {
        return QueueStorage::Unknown {
            why: format!("no container {:?}", container.unwrap_or_default()),
        };
    };
    // The mount whose path is the longest prefix of the queue directory holds it.
    let mount = container_spec
        .volume_mounts
        .iter()
        .filter(|m| {
            let mount_path = m.mount_path.trim_end_matches('/');
            path == mount_path || path.starts_with(&format!("{mount_path}/"))
        })
        .max_by_key(|m| m.mount_path.len());
    let Some(mount) = mount else {
        return QueueStorage::ContainerFilesystem { path: path.into() };
    };
    let claimed = w
        .claim_templates
        .iter()
        .any(|c| c.metadata.name.as_deref() == Some(mount.name.as_str()));
    let volume = pod.volumes.iter().find(|v| v.name == mount.name);
    match volume {
        Some(v) if v.empty_dir => QueueStorage::EmptyDir {
            volume: mount.name.clone(),
            path: path.into(),
        },
        Some(_) => QueueStorage::Persistent,
        None if claimed => QueueStorage::Persistent,
        None => QueueStorage::Unknown {
            why: format!("volume {:?} is not defined", mount.name),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::mode_document::{AgentReport, DriftReport, QueueFigures},
        controller::{
            apply::{document_object, report_object},
            field_manager::FIELD_MANAGER,
            fixtures::{self, FilledCaches, NAMESPACE},
        },
    };
    use serde_json::{Value, json};

    fn mx() -> TargetRef {
        TargetRef {
            kind: WorkloadKind::Deployment,
            name: "mx".into(),
        }
    }

    /// A Postfix Deployment `mx` of two replicas selecting `app: mx`, its rollout complete,
    /// its queue on an emptyDir.
    fn deployment() -> Value {
        json!({
            "metadata": {"name": "mx", "namespace": NAMESPACE, "resourceVersion": "40",
                         "generation": 3, "labels": {"app": "mta"},
                         "annotations": {"mailops.dev/mta": "postfix"}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "mx"}},
                "template": {"spec": {
                    "containers": [{"name": "postfix", "volumeMounts": [
                        {"name": "spool", "mountPath": "/var/spool/postfix"}]}],
                    "volumes": [{"name": "spool", "emptyDir": {}}],
                }},
            },
            "status": {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2,
                       "availableReplicas": 2, "readyReplicas": 2},
        })
    }

    /// The mode document of `mx` as the operator writes it, at `resource_version`.
    fn document(resource_version: &str) -> Value {
        let mut object = document_object(
            &mx(),
            &fixtures::document(),
            &[crate::plan::Owner {
                name: "outage".into(),
                uid: "uid-outage".into(),
            }],
        );
        object["metadata"]["namespace"] = NAMESPACE.into();
        object["metadata"]["uid"] = "uid-document".into();
        object["metadata"]["resourceVersion"] = resource_version.into();
        object
    }

    /// The report of `mx` at `resource_version`, with `entries` by pod.
    fn report(resource_version: &str, entries: &[(&str, &AgentReport)]) -> Value {
        let mut object = report_object(&mx(), Some("uid-document".into()));
        object["metadata"]["namespace"] = NAMESPACE.into();
        object["metadata"]["resourceVersion"] = resource_version.into();
        let data: serde_json::Map<String, Value> = entries
            .iter()
            .map(|(pod, entry)| {
                (
                    pod.to_string(),
                    serde_json::to_string(entry).unwrap().into(),
                )
            })
            .collect();
        object["data"] = data.into();
        object
    }

    fn applied(hash: &str, messages: u64) -> AgentReport {
        AgentReport {
            hash: hash.into(),
            after: None,
            queue: Some(QueueFigures {
                messages,
                by_queue: [("deferred".to_string(), messages)].into(),
                oldest_age_seconds: 60,
            }),
            drift: None,
        }
    }

    fn drifting(hash: &str) -> AgentReport {
        AgentReport {
            hash: hash.into(),
            after: None,
            queue: None,
            drift: Some(DriftReport {
                count: 1,
                what: "main.cf soft_bounce = no, want yes".into(),
                since: Some(100),
            }),
        }
    }

    /// `mx` with its document and a report from its pods: `mx-1` applied, `mx-2`
    /// drifting, `mx-3` terminating, `mx-0` gone; and pods that are not its.
    fn namespace() -> FilledCaches {
        let hash = fixtures::document().hash();
        let mut filled = FilledCaches::new();
        filled
            .deployment(deployment())
            .pod(NAMESPACE, "mx-1", &[("app", "mx")], false)
            .pod(NAMESPACE, "mx-2", &[("app", "mx"), ("tier", "edge")], false)
            .pod(NAMESPACE, "mx-3", &[("app", "mx")], true)
            .pod(NAMESPACE, "web-1", &[("app", "web")], false)
            .pod("other", "mx-9", &[("app", "mx")], false)
            .config_map(document("11"))
            .config_map(report(
                "12",
                &[
                    ("mx-0", &applied(&hash, 1)),
                    ("mx-1", &applied(&hash, 5)),
                    ("mx-2", &drifting(&hash)),
                    ("mx-3", &applied(&hash, 2)),
                ],
            ));
        filled
    }

    fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
        items.sort();
        items
    }

    #[test]
    fn a_target_is_its_workload_its_document_and_its_live_pods_reports() {
        let filled = namespace();
        let observed = observe(&filled.caches, NAMESPACE, &mut Observations::default());
        let hash = fixtures::document().hash();
        assert_eq!(observed.rebuilt, 1);
        assert!(observed.orphans.is_empty());
        let [target] = observed.targets.as_slice() else {
            panic!("one target, got {:?}", observed.targets)
        };
        assert_eq!(target.target, mx());
        assert_eq!(
            *target.labels,
            [("app".to_string(), "mta".to_string())].into()
        );
        assert_eq!(target.delivery, Delivery::Reload);
        assert_eq!(target.mta, Some(MtaKind::Postfix));
        assert_eq!(target.document_hash.as_deref(), Some(hash.as_str()));
        assert_eq!(target.document_mismatch, None);
        assert_eq!(target.document_owners, ["uid-outage"]);
        assert!(target.report_exists && target.report_owned);
        assert_eq!(target.source_incidents, ["outage"]);
        assert_eq!(target.changed_by, None);
        // Live pods only: mx-3 is terminating, web-1 not selected, mx-9 elsewhere.
        assert_eq!(
            sorted(target.pod_reports.clone()),
            [None, Some(hash.clone())],
            "a drifting pod does not count as applied"
        );
        assert_eq!(sorted(target.unreleased_pods.clone()), ["mx-1", "mx-2"]);
        assert_eq!(target.drifts.len(), 1);
        assert_eq!(target.drifts[0].0, "mx-2");
        assert_eq!(target.queues.len(), 1, "mx-1's queue");
        assert_eq!(target.queues[0].messages, 5);
        // A terminating pod still runs its agent: only the gone one's entry departed.
        assert_eq!(target.departed_reports, ["mx-0"]);
        assert_eq!((target.replicas, target.ready_replicas), (2, 2));
        assert!(target.rollout_complete);
        assert_eq!(target.mta_container.as_deref(), Some("postfix"));
        assert_eq!(
            target.queue,
            QueueStorage::EmptyDir {
                volume: "spool".into(),
                path: "/var/spool/postfix".into()
            }
        );
        let versions = &observed.versions[&mx()];
        assert_eq!(versions.workload.as_deref(), Some("40"));
        assert_eq!(versions.document.as_deref(), Some("11"));
        assert_eq!(versions.report.as_deref(), Some("12"));
    }

    #[test]
    fn an_unreadable_entry_is_a_pod_that_reported_nothing_yet_its_entry_can_depart() {
        let mut filled = namespace();
        let hash = fixtures::document().hash();
        let mut unreadable = report("13", &[("mx-2", &applied(&hash, 3))]);
        unreadable["data"]["mx-1"] = "not json".into();
        unreadable["data"]["mx-0"] = "{}".into();
        filled.config_map(unreadable);
        let observed = observe(&filled.caches, NAMESPACE, &mut Observations::default());
        let target = &observed.targets[0];
        assert_eq!(
            sorted(target.pod_reports.clone()),
            [None, Some(hash)],
            "mx-1 has applied nothing readable"
        );
        assert_eq!(target.unreleased_pods, ["mx-2"]);
        assert!(target.drifts.is_empty());
        assert_eq!(target.queues.len(), 1, "mx-2's queue");
        assert_eq!(target.departed_reports, ["mx-0"]);
    }

    #[test]
    fn documents_of_a_workload_that_is_gone_are_orphans_with_their_versions() {
        let mut filled = namespace();
        let gone = TargetRef {
            kind: WorkloadKind::StatefulSet,
            name: "gone".into(),
        };
        let mut orphan = document_object(&gone, &fixtures::document(), &[]);
        orphan["metadata"]["namespace"] = NAMESPACE.into();
        orphan["metadata"]["resourceVersion"] = "20".into();
        let mut elsewhere = orphan.clone();
        elsewhere["metadata"]["namespace"] = "other".into();
        elsewhere["metadata"]["annotations"]["mailops.dev/workload"] = "StatefulSet/far".into();
        filled.config_map(orphan).config_map(elsewhere);
        let observed = observe(&filled.caches, NAMESPACE, &mut Observations::default());
        assert_eq!(observed.orphans, std::slice::from_ref(&gone));
        let versions = &observed.versions[&gone];
        assert_eq!(versions.document.as_deref(), Some("20"));
        assert_eq!(
            (versions.report.as_ref(), versions.workload.as_ref()),
            (None, None)
        );
        assert_eq!(observed.targets.len(), 1);
    }

    #[test]
    fn only_targets_whose_inputs_changed_are_built_again() {
        let mut filled = namespace();
        let mut previous = Observations::default();
        let first = observe(&filled.caches, NAMESPACE, &mut previous);
        let again = observe(&filled.caches, NAMESPACE, &mut previous);
        assert_eq!(again.rebuilt, 0);
        assert!(
            Arc::ptr_eq(&first.targets[0], &again.targets[0]),
            "an unchanged target is the same Arc"
        );

        // An agent writes its report: built again, from the new entry.
        let hash = fixtures::document().hash();
        filled.config_map(report(
            "13",
            &[("mx-1", &applied(&hash, 9)), ("mx-2", &applied(&hash, 0))],
        ));
        let reported = observe(&filled.caches, NAMESPACE, &mut previous);
        assert_eq!(reported.rebuilt, 1);
        assert_eq!(
            reported.targets[0].pod_reports,
            [Some(hash.clone()), Some(hash.clone())]
        );
        assert_eq!(reported.versions[&mx()].report.as_deref(), Some("13"));

        // A pod goes: its workload's target is built again.
        filled.pod_gone(NAMESPACE, "mx-2");
        let fewer = observe(&filled.caches, NAMESPACE, &mut previous);
        assert_eq!(fewer.rebuilt, 1);
        assert_eq!(fewer.targets[0].pod_reports, [Some(hash.clone())]);
        assert_eq!(fewer.targets[0].departed_reports, ["mx-2"]);

        // A pod of another workload changes nothing here.
        filled.pod(NAMESPACE, "web-2", &[("app", "web")], false);
        assert_eq!(observe(&filled.caches, NAMESPACE, &mut previous).rebuilt, 0);
    }

    #[test]
    fn a_document_whose_annotation_disagrees_with_its_content_is_a_mismatch() {
        let mut filled = namespace();
        let mut edited = document("14");
        edited["metadata"]["annotations"]["mailops.dev/mode-hash"] = "bogus".into();
        filled.config_map(edited);
        let observed = observe(&filled.caches, NAMESPACE, &mut Observations::default());
        let mismatch = observed.targets[0]
            .document_mismatch
            .clone()
            .expect("a mismatch");
        assert!(mismatch.contains("bogus"), "{mismatch}");
        assert!(
            mismatch.contains(&fixtures::document().hash()),
            "{mismatch}"
        );
    }

    #[test]
    fn a_restart_delivered_statefulset_is_read_from_its_template() {
        let mut filled = FilledCaches::new();
        filled
            .statefulset(json!({
                "metadata": {
                    "name": "exim", "namespace": NAMESPACE, "resourceVersion": "5",
                    "generation": 2,
                    "annotations": {"mailops.dev/delivery": "Restart", "mailops.dev/mta": "exim",
                                    "mailops.dev/mta-container": "exim"},
                    "managedFields": [
                        {"manager": FIELD_MANAGER, "operation": "Apply", "time": "2026-12-06T10:00:00Z"},
                        {"manager": "argocd-controller", "operation": "Apply", "time": "2026-12-06T10:05:00Z"},
                    ],
                },
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"app": "exim"}},
                    "template": {
                        "metadata": {"annotations": {"mailops.dev/mode-hash": "h1",
                                                     "mailops.dev/incident": "outage,storage"}},
                        "spec": {"containers": [
                            {"name": "sidecar"},
                            {"name": "exim",
                             "env": [{"name": "MAIL_INCIDENT_MODE", "value": "TempFail"},
                                     {"name": "TZ", "value": "UTC"}],
                             "volumeMounts": [{"name": "spool", "mountPath": "/var/spool/exim4"}]},
                        ]},
                    },
                    "volumeClaimTemplates": [{"metadata": {"name": "spool"}}],
                },
                "status": {"observedGeneration": 2, "readyReplicas": 1,
                           "currentRevision": "r1", "updateRevision": "r2"},
            }))
            .pod(NAMESPACE, "exim-0", &[("app", "exim")], false);
        let observed = observe(&filled.caches, NAMESPACE, &mut Observations::default());
        let target = &observed.targets[0];
        assert_eq!(target.target.to_string(), "StatefulSet/exim");
        assert_eq!(target.delivery, Delivery::Restart);
        assert_eq!(target.mta, Some(MtaKind::Exim));
        assert_eq!(target.mta_container.as_deref(), Some("exim"));
        assert_eq!(
            target.template_env,
            [("MAIL_INCIDENT_MODE".to_string(), "TempFail".to_string())]
        );
        assert_eq!(target.template_hash.as_deref(), Some("h1"));
        assert_eq!(target.source_incidents, ["outage", "storage"]);
        assert_eq!(target.changed_by.as_deref(), Some("argocd-controller"));
        assert_eq!(target.queue, QueueStorage::Persistent);
        assert!(!target.rollout_complete, "revisions differ");
        assert_eq!((target.replicas, target.ready_replicas), (2, 1));
        assert_eq!(target.document_hash, None);
        assert!(!target.report_exists);
        assert_eq!(target.pod_reports, [None], "one live pod, no report");
        assert_eq!(
            observed.versions[&target.target].workload.as_deref(),
            Some("5")
        );
    }
}
