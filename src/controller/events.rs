//! Events on incidents. Each is created whole, under a name of its own, with its own
//! message: kube's `Recorder` folds events of the same reason into one series that keeps
//! its first message, so after fifty mode changes `kubectl describe` showed the first
//! transition fifty times. The plan emits an event only when something changes, so
//! there is no flood to fold.

use super::field_manager::FIELD_MANAGER;
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
            reason: Some(note.reason.to_string()),
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
                debug!(%error, object = %name, reason = %note.reason, "event not recorded on a deleted object");
            }
            Err(error) => {
                warn!(%error, object = %name, reason = %note.reason, "cannot record event");
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
    use crate::controller::fixtures::{Exchange, NAMESPACE, failure, incident, serve};
    use serde_json::{Value, json};

    const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/mail/events";

    fn note(warning: bool, message: &str) -> plan::Note {
        plan::Note {
            warning,
            reason: plan::EventReason::Applied,
            message: message.into(),
        }
    }

    /// Publishes `note` on `incident` through a server that answers `status` with
    /// `reply`, and returns the event sent.
    async fn published(
        incident: &crate::api::MailIncident,
        note: &plan::Note,
        status: u16,
        reply: Value,
    ) -> Value {
        let (sent_tx, sent_rx) = std::sync::mpsc::channel();
        let (client, server) = serve(vec![
            Exchange::post(EVENTS)
                .check(move |body| sent_tx.send(body.clone()).unwrap())
                .reply(status, reply),
        ]);
        let events = Events::new(client.clone(), "operator-0".into());
        events.publish(incident, note).await;
        drop(events);
        server.verify(client).await;
        sent_rx.recv().expect("an event was sent")
    }

    #[tokio::test]
    async fn an_event_is_created_whole_on_its_object_with_its_own_message() {
        let outage = incident("outage", "7", &[]);
        let event = published(
            &outage,
            &note(false, "Every target applies TempFail"),
            201,
            json!({}),
        )
        .await;
        let name = event["metadata"]["name"].as_str().expect("a name");
        let suffix = name
            .strip_prefix("outage.")
            .expect("named after its object");
        assert!(
            !suffix.is_empty() && suffix.chars().all(|c| c.is_ascii_hexdigit()),
            "{name}"
        );
        assert_eq!(event["metadata"]["namespace"], NAMESPACE);
        assert_eq!(event["reason"], "Applied");
        assert_eq!(event["note"], "Every target applies TempFail");
        assert_eq!(event["type"], "Normal");
        assert_eq!(event["action"], "Reconcile");
        assert_eq!(event["reportingController"], FIELD_MANAGER);
        assert_eq!(event["reportingInstance"], "operator-0");
        assert_eq!(
            event["regarding"],
            json!({"apiVersion": "mailops.dev/v1alpha1", "kind": "MailIncident",
                   "name": "outage", "namespace": NAMESPACE, "uid": "uid-outage"})
        );
        assert!(event["eventTime"].is_string());
        assert_eq!(event.get("series"), None, "never folded into a series");
    }

    #[tokio::test]
    async fn the_name_of_an_event_on_a_long_named_object_is_shortened_to_the_limit() {
        // The longest name an object can have, with a dash where the cut falls.
        let long = format!(
            "{}-{}",
            "a".repeat(EVENT_NAME_PREFIX_LIMIT - 1),
            "b".repeat(17)
        );
        assert_eq!(long.len(), 253);
        let event = published(
            &incident(&long, "7", &[]),
            &note(true, "queue over its limit"),
            201,
            json!({}),
        )
        .await;
        let name = event["metadata"]["name"].as_str().expect("a name");
        assert!(name.len() <= 253, "{} characters", name.len());
        let (prefix, suffix) = name.rsplit_once('.').expect("a suffix");
        assert_eq!(
            prefix,
            "a".repeat(EVENT_NAME_PREFIX_LIMIT - 1),
            "cut to the limit, without a trailing dash"
        );
        assert!(suffix.len() <= 16 && suffix.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(event["regarding"]["name"], long.as_str());
        assert_eq!(event["type"], "Warning");
    }

    #[tokio::test]
    async fn a_long_note_is_cut_to_the_api_limit() {
        let long = "x".repeat(5000);
        let event = published(
            &incident("outage", "7", &[]),
            &note(false, &long),
            201,
            json!({}),
        )
        .await;
        let sent = event["note"].as_str().expect("a note");
        assert_eq!(sent.len(), NOTE_LIMIT_BYTES);
        assert!(sent.ends_with("..."));
    }

    #[tokio::test]
    async fn a_lost_event_is_not_retried() {
        // The scenario allows one request: a retry would fail it.
        let refused = failure(403, "Forbidden", "events is forbidden", &[]);
        let event = published(
            &incident("outage", "7", &[]),
            &note(false, "m"),
            403,
            refused,
        )
        .await;
        assert_eq!(event["reason"], "Applied");
    }

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
