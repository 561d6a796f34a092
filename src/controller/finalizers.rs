//! The finalizer that lets a sync return a deleted incident's targets to normal service
//! (or to the next incident's mode) before the incident disappears. Added and removed
//! with JSON patches that first test the list they edit, so a concurrent edit by anyone
//! makes the patch fail (and the change it brings triggers another sync) instead of
//! being overwritten.

use crate::{Error, Result, api::MailIncident};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;

/// The finalizer's name.
pub const FINALIZER: &str = "mailops.dev/restore-targets";

/// Whether `incident` is alive and still lacks the finalizer.
pub fn missing(incident: &MailIncident) -> bool {
    incident.metadata.deletion_timestamp.is_none()
        && !incident.finalizers().iter().any(|f| f == FINALIZER)
}

/// Whether `incident` is being deleted and waits for the finalizer to go.
pub fn awaited(incident: &MailIncident) -> bool {
    incident.metadata.deletion_timestamp.is_some()
        && incident.finalizers().iter().any(|f| f == FINALIZER)
}

pub async fn add(api: &Api<MailIncident>, incident: &MailIncident) -> Result<()> {
    let operations = match incident.metadata.finalizers.as_deref() {
        None | Some([]) => json!([
            {"op": "test", "path": "/metadata/finalizers", "value": incident.metadata.finalizers},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ]),
        Some(current) => json!([
            {"op": "test", "path": "/metadata/finalizers", "value": current},
            {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
        ]),
    };
    patch(api, incident, operations, "add the finalizer to").await
}

pub async fn remove(api: &Api<MailIncident>, incident: &MailIncident) -> Result<()> {
    let Some(index) = incident.finalizers().iter().position(|f| f == FINALIZER) else {
        return Ok(());
    };
    let path = format!("/metadata/finalizers/{index}");
    let operations = json!([
        {"op": "test", "path": path, "value": FINALIZER},
        {"op": "remove", "path": path},
    ]);
    patch(api, incident, operations, "remove the finalizer from").await
}

async fn patch(
    api: &Api<MailIncident>,
    incident: &MailIncident,
    operations: serde_json::Value,
    what: &str,
) -> Result<()> {
    let name = incident.name_any();
    let operations: json_patch::Patch =
        serde_json::from_value(operations).expect("a well-formed JSON patch");
    match api
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Json::<()>(operations),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Gone already: there is nothing left to hold or release.
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => Err(Error::Api {
            call: format!(
                "{what} MailIncident {}/{name}",
                incident.namespace().unwrap_or_default()
            ),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures::{
        Exchange, JSON_PATCH, NAMESPACE, incident, incident_path, serve,
    };
    use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
    use kube::Client;
    use serde_json::Value;

    fn api(client: &Client) -> Api<MailIncident> {
        Api::namespaced(client.clone(), NAMESPACE)
    }

    fn deleted(mut incident: MailIncident) -> MailIncident {
        incident.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        incident
    }

    /// The incident as the API server returns it after a patch.
    fn stored(finalizers: &[&str]) -> Value {
        serde_json::to_value(incident("outage", "8", finalizers)).unwrap()
    }

    #[test]
    fn only_a_live_incident_lacks_it_and_only_a_deleted_one_awaits_it() {
        let bare = incident("outage", "7", &[]);
        let held = incident("outage", "7", &["other", FINALIZER]);
        assert!(missing(&bare) && !awaited(&bare));
        assert!(!missing(&held) && !awaited(&held));
        assert!(
            !missing(&deleted(bare)),
            "a deleted incident is not held anew"
        );
        assert!(awaited(&deleted(held)));
    }

    #[tokio::test]
    async fn the_first_finalizer_is_added_only_to_an_empty_list() {
        let (client, server) = serve(vec![
            Exchange::patch(incident_path("outage"))
                .content_type(JSON_PATCH)
                .check(|body| {
                    assert_eq!(
                        body,
                        &json!([
                            {"op": "test", "path": "/metadata/finalizers", "value": null},
                            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
                        ])
                    );
                })
                .ok(stored(&[FINALIZER])),
        ]);
        add(&api(&client), &incident("outage", "7", &[]))
            .await
            .expect("the patch succeeds");
        server.verify(client).await;
    }

    #[tokio::test]
    async fn a_finalizer_is_appended_to_the_list_as_seen() {
        let (client, server) = serve(vec![
            Exchange::patch(incident_path("outage"))
                .content_type(JSON_PATCH)
                .check(|body| {
                    assert_eq!(
                        body,
                        &json!([
                            {"op": "test", "path": "/metadata/finalizers", "value": ["example.com/backup"]},
                            {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
                        ])
                    );
                })
                .ok(stored(&["example.com/backup", FINALIZER])),
        ]);
        add(
            &api(&client),
            &incident("outage", "7", &["example.com/backup"]),
        )
        .await
        .expect("the patch succeeds");
        server.verify(client).await;
    }

    #[tokio::test]
    async fn the_finalizer_is_removed_at_its_place_if_still_there() {
        let (client, server) = serve(vec![
            Exchange::patch(incident_path("outage"))
                .content_type(JSON_PATCH)
                .check(|body| {
                    assert_eq!(
                        body,
                        &json!([
                            {"op": "test", "path": "/metadata/finalizers/1", "value": FINALIZER},
                            {"op": "remove", "path": "/metadata/finalizers/1"},
                        ])
                    );
                })
                .ok(stored(&["example.com/backup"])),
        ]);
        let held = deleted(incident(
            "outage",
            "7",
            &["example.com/backup", FINALIZER, "example.com/audit"],
        ));
        remove(&api(&client), &held)
            .await
            .expect("the patch succeeds");
        server.verify(client).await;
    }

    #[tokio::test]
    async fn nothing_is_sent_to_remove_a_finalizer_that_is_not_there() {
        let (client, server) = serve(vec![]);
        let other = deleted(incident("outage", "7", &["example.com/backup"]));
        remove(&api(&client), &other).await.expect("nothing to do");
        server.verify(client).await;
    }

    #[tokio::test]
    async fn an_incident_gone_already_needs_no_finalizer() {
        let (client, server) = serve(vec![
            Exchange::patch(incident_path("outage")).not_found(),
            Exchange::patch(incident_path("outage")).not_found(),
        ]);
        add(&api(&client), &incident("outage", "7", &[]))
            .await
            .expect("gone is done");
        let held = deleted(incident("outage", "7", &[FINALIZER]));
        remove(&api(&client), &held).await.expect("gone is done");
        server.verify(client).await;
    }

    #[tokio::test]
    async fn a_concurrent_edit_fails_the_patch_and_names_the_call() {
        // The `test` operation failed: someone edited the list since it was seen.
        let (client, server) = serve(vec![Exchange::patch(incident_path("outage")).fail(
            422,
            "Invalid",
            "the server rejected our request due to an error in our request",
            &[],
        )]);
        let result = add(&api(&client), &incident("outage", "7", &[])).await;
        server.verify(client).await;
        match result {
            Err(Error::Api { call, .. }) => {
                assert_eq!(call, "add the finalizer to MailIncident mail/outage");
            }
            other => panic!("expected the failed call, got {other:?}"),
        }
    }
}
