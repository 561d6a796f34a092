//! Events on incidents. Each is created whole, under a name of its own, with its own
//! message: kube's `Recorder` folds events of the same reason into one series that keeps
//! its first message, so after fifty mode changes `kubectl describe` showed the first
//! transition fifty times. The plan emits an event only when something changes, so
//! there is no flood to fold.

use super::FIELD_MANAGER;
use crate::plan;
use k8s_openapi::{
    api::events::v1::Event,
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Client, Resource, ResourceExt, api::PostParams};
use tracing::{debug, warn};

/// Longest object name an event can be named after: the limit of a name less a
/// `.{nanoseconds in hex}` suffix.
const EVENT_NAME_PREFIX_LIMIT: usize = 253 - 17;

/// The API server's limit on an event's note, in bytes.
const NOTE_LIMIT_BYTES: usize = 1024;

pub struct Events {
    client: Client,
    instance: String,
}

impl Events {
    pub fn new(client: Client, instance: String) -> Self {
        Self { client, instance }
    }

    /// Records `note` on `object` (an incident, or one of the operator's own objects). A
    /// lost event is logged, not retried: the status already carries the facts.
    pub async fn publish<K: Resource<DynamicType = ()>>(&self, object: &K, note: &plan::Note) {
        let reference = object.object_ref(&());
        let now = Timestamp::now();
        let name = object.name_any();
        let namespace = object.namespace().unwrap_or_default();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{}.{:x}",
                    name.chars()
                        .take(EVENT_NAME_PREFIX_LIMIT)
                        .collect::<String>()
                        .trim_end_matches(['.', '-']),
                    now.as_nanosecond()
                )),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            action: Some("Reconcile".into()),
            reason: Some(note.reason.into()),
            note: Some(truncate(&note.message, NOTE_LIMIT_BYTES)),
            event_time: Some(MicroTime(now)),
            regarding: Some(reference),
            reporting_controller: Some(FIELD_MANAGER.into()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(if note.warning { "Warning" } else { "Normal" }.into()),
            ..Event::default()
        };
        let result = Api::<Event>::namespaced(self.client.clone(), &namespace)
            .create(&PostParams::default(), &event)
            .await;
        match result {
            Ok(_) => {}
            // Deleting the object, or its whole namespace: no one will read it.
            Err(error) if object.meta().deletion_timestamp.is_some() => {
                debug!(%error, object = %name, reason = note.reason, "event not recorded on a deleted object");
            }
            Err(error) => {
                warn!(%error, object = %name, reason = note.reason, "cannot record event");
            }
        }
    }
}

/// `text` cut to at most `max_bytes` bytes, on a character boundary, ending in `...`
/// when cut.
fn truncate(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_string();
    }
    let mut cut = max_bytes.saturating_sub(3);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &text[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_is_cut_to_the_api_limit_in_bytes_on_a_character_boundary() {
        assert_eq!(truncate("short", 1024), "short");
        let exact = "a".repeat(1024);
        assert_eq!(truncate(&exact, 1024), exact);
        let long = "a".repeat(3000);
        let cut = truncate(&long, 1024);
        assert_eq!(cut.len(), 1024);
        assert!(cut.ends_with("..."));
        // Two-byte characters: a cut in the middle of one moves before it.
        let accented = "è".repeat(600);
        let cut = truncate(&accented, 1024);
        assert!(cut.len() <= 1024 && cut.ends_with("..."));
        assert!(cut.trim_end_matches("...").chars().all(|c| c == 'è'));
    }
}
