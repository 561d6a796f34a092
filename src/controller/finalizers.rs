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
