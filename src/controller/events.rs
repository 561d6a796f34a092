//! Events on incidents, through kube's `Recorder` (which folds repeats into a series).
//! The Recorder names an event after its object plus a 17-character suffix, which is
//! too long for an object whose name is near the 253-character limit; those events are
//! created here under a shortened name, still regarding the incident itself.

use super::FIELD_MANAGER;
use crate::{api::MailIncident, plan};
use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event as KubeEvent},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::PostParams,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use tracing::{debug, warn};

/// Longest object name the Recorder can name an event after: the limit of a name less
/// its `.{nanoseconds in hex}` suffix.
const RECORDER_NAME_LIMIT: usize = 253 - 17;

/// Longest event note kept; the rest is cut.
const NOTE_LIMIT: usize = 1000;

pub struct Events {
    client: Client,
    recorder: Recorder,
    instance: String,
}

impl Events {
    pub fn new(client: Client, instance: String) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(instance.clone()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            instance,
        }
    }

    /// Records `note` on `incident`. A lost event is logged, not retried: the status
    /// already carries the facts.
    pub async fn publish(&self, incident: &MailIncident, note: &plan::Note) {
        let reference = incident.object_ref(&());
        let event = Event {
            type_: if note.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: note.reason.into(),
            note: Some(truncate(&note.message, NOTE_LIMIT)),
            action: "Reconcile".into(),
            secondary: None,
        };
        let name = incident.name_any();
        let result = if name.len() > RECORDER_NAME_LIMIT {
            self.create_shortened(&event, reference).await
        } else {
            self.recorder.publish(&event, &reference).await
        };
        match result {
            Ok(()) => {}
            // Deleting the incident, or its whole namespace: no one will read it.
            Err(error) if incident.metadata.deletion_timestamp.is_some() => {
                debug!(%error, incident = %name, reason = note.reason, "event not recorded on a deleted incident");
            }
            Err(error) => {
                warn!(%error, incident = %name, reason = note.reason, "cannot record event");
            }
        }
    }

    /// The event the Recorder would create, under a name cut to fit.
    async fn create_shortened(
        &self,
        event: &Event,
        reference: ObjectReference,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let name = reference.name.clone().unwrap_or_default();
        let namespace = reference.namespace.clone().unwrap_or_default();
        let object = KubeEvent {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{}.{:x}",
                    name.chars().take(RECORDER_NAME_LIMIT).collect::<String>(),
                    now.as_nanosecond()
                )),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            note: event.note.clone(),
            event_time: Some(MicroTime(now)),
            regarding: Some(reference),
            reporting_controller: Some(FIELD_MANAGER.into()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(match event.type_ {
                EventType::Normal => "Normal".into(),
                EventType::Warning => "Warning".into(),
            }),
            ..KubeEvent::default()
        };
        Api::<KubeEvent>::namespaced(self.client.clone(), &namespace)
            .create(&PostParams::default(), &object)
            .await
            .map(|_| ())
    }
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}
