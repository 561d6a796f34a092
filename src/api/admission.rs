//! Who wrote an incident, as the admission webhook saw it. The webhook stamps each spec it
//! admits with a record (the annotation [`ADMISSION_ANNOTATION`]): the requesting user,
//! whether that user may make MTAs bounce mail (the `bounce` verb), and a digest of the
//! spec, signed with a key only the operator holds. The controller applies a HardReject
//! only under a record that checks out for this object and this very spec, so a webhook
//! that was down, a copied record or a spec edited since all fail closed.

use super::{MailIncident, MailIncidentSpec};
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The annotation the webhook writes, and nobody else may.
pub const ADMISSION_ANNOTATION: &str = "mailops.dev/admission";

/// How far (in seconds) a record made when the object was created may be from the
/// creation time the API server gave it. A created object has no uid yet when mutating
/// webhooks see it, so such a record is bound to the name and that moment instead.
pub const CREATE_SKEW_SECONDS: i64 = 60;

/// The record, as the annotation holds it (JSON).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRecord {
    /// The user the API server authenticated for the request.
    pub user: String,
    /// `CREATE` or `UPDATE`.
    pub operation: String,
    /// The user was checked for, and holds, the `bounce` verb on this incident.
    pub may_bounce: bool,
    /// When the webhook admitted it, in seconds since the epoch.
    pub at: i64,
    /// [`spec_digest`] of the spec admitted.
    pub spec: String,
    /// The object's uid; empty for a CREATE (see [`CREATE_SKEW_SECONDS`]).
    pub uid: String,
    /// HMAC-SHA256 over every other field, the namespace and the name, hex.
    pub mac: String,
}

/// The key records are signed with.
#[derive(Clone)]
pub struct SigningKey(ring::hmac::Key);

impl SigningKey {
    /// A key from its bytes (at least 32).
    pub fn new(bytes: &[u8]) -> Option<Self> {
        (bytes.len() >= 32).then(|| Self(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, bytes)))
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

/// What the record asserts, before it is signed.
#[derive(Debug, Clone, PartialEq)]
pub struct Admission<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
    pub user: &'a str,
    pub operation: &'a str,
    pub may_bounce: bool,
    pub at: i64,
    pub spec: &'a MailIncidentSpec,
}

impl Admission<'_> {
    /// The signed record.
    pub fn sign(&self, key: &SigningKey) -> AdmissionRecord {
        let spec = spec_digest(self.spec);
        let mac = ring::hmac::sign(&key.0, &signed_bytes(self, &spec));
        AdmissionRecord {
            user: self.user.to_string(),
            operation: self.operation.to_string(),
            may_bounce: self.may_bounce,
            at: self.at,
            spec,
            uid: self.uid.to_string(),
            mac: hex(mac.as_ref()),
        }
    }
}

/// The bytes the MAC covers: every field in a JSON array, so that no two records can
/// share them (a user name may hold any character).
fn signed_bytes(admission: &Admission<'_>, spec_digest: &str) -> Vec<u8> {
    serde_json::to_vec(&(
        "mailops.dev/admission/v1",
        admission.namespace,
        admission.name,
        admission.uid,
        admission.user,
        admission.operation,
        admission.may_bounce,
        admission.at,
        spec_digest,
    ))
    .unwrap_or_default()
}

/// SHA-256 of the spec as this crate serializes it (its field order is fixed, its maps
/// sorted), hex: the same spec gives the same digest in the webhook and the controller.
pub fn spec_digest(spec: &MailIncidentSpec) -> String {
    hex(&Sha256::digest(
        serde_json::to_vec(spec).unwrap_or_default(),
    ))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the controller takes from a record that checks out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub user: String,
    /// `CREATE` or `UPDATE`.
    pub operation: String,
    pub may_bounce: bool,
}

/// Why an incident has no record that checks out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAdmitted {
    #[error("the admission webhook left no record on it (it was unreachable when it was written)")]
    Missing,
    #[error("its admission record cannot be read")]
    Unreadable,
    #[error("its admission record was not signed by this operator")]
    Forged,
    #[error("its admission record was made for another object")]
    OtherObject,
    #[error("its spec was changed after the admission webhook saw it")]
    SpecChanged,
    #[error("the operator's signing key is not loaded yet")]
    NoKey,
}

/// Reads `incident`'s record and checks it: signed with `key`, for this namespace and
/// name and this uid (or, made at creation, within [`CREATE_SKEW_SECONDS`] of it), and
/// describing the spec as it is now.
pub fn admitted(
    incident: &MailIncident,
    key: Option<&SigningKey>,
) -> Result<Admitted, NotAdmitted> {
    let text = incident
        .annotations()
        .get(ADMISSION_ANNOTATION)
        .ok_or(NotAdmitted::Missing)?;
    let record: AdmissionRecord =
        serde_json::from_str(text).map_err(|_| NotAdmitted::Unreadable)?;
    let key = key.ok_or(NotAdmitted::NoKey)?;
    let namespace = incident.namespace().unwrap_or_default();
    let name = incident.name_any();
    let claimed = Admission {
        namespace: &namespace,
        name: &name,
        uid: &record.uid,
        user: &record.user,
        operation: &record.operation,
        may_bounce: record.may_bounce,
        at: record.at,
        spec: &incident.spec,
    };
    let mac = unhex(&record.mac).ok_or(NotAdmitted::Forged)?;
    ring::hmac::verify(&key.0, &signed_bytes(&claimed, &record.spec), &mac)
        .map_err(|_| NotAdmitted::Forged)?;
    let uid = incident.metadata.uid.as_deref().unwrap_or_default();
    let bound = if record.uid.is_empty() {
        let created = incident
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second());
        created.is_some_and(|created| (record.at - created).abs() <= CREATE_SKEW_SECONDS)
    } else {
        record.uid == uid
    };
    if !bound {
        return Err(NotAdmitted::OtherObject);
    }
    if record.spec != spec_digest(&incident.spec) {
        return Err(NotAdmitted::SpecChanged);
    }
    Ok(Admitted {
        user: record.user,
        operation: record.operation,
        may_bounce: record.may_bounce,
    })
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Mode;
    use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

    const CREATED: i64 = 1_800_000_000;

    fn key() -> SigningKey {
        SigningKey::new(&[7; 32]).unwrap()
    }

    fn incident(name: &str, uid: &str, mode: Mode) -> MailIncident {
        let mut incident: MailIncident = serde_json::from_value(serde_json::json!({
            "apiVersion": "mailops.dev/v1alpha1",
            "kind": "MailIncident",
            "metadata": {"name": name, "namespace": "mail", "uid": uid},
            "spec": {"mode": "TempFail", "reason": "INC-1", "targets": {"matchLabels": {"app": "mta"}}},
        }))
        .unwrap();
        incident.spec.mode = mode;
        incident.metadata.creation_timestamp = Some(Time(Timestamp::from_second(CREATED).unwrap()));
        incident
    }

    fn stamp(incident: &mut MailIncident, uid: &str, at: i64, key: &SigningKey) {
        let record = Admission {
            namespace: "mail",
            name: &incident.name_any(),
            uid,
            user: "lead",
            operation: if uid.is_empty() { "CREATE" } else { "UPDATE" },
            may_bounce: true,
            at,
            spec: &incident.spec,
        }
        .sign(key);
        incident.annotations_mut().insert(
            ADMISSION_ANNOTATION.into(),
            serde_json::to_string(&record).unwrap(),
        );
    }

    #[test]
    fn a_record_checks_out_for_its_object_and_spec_only() {
        let mut purge = incident("purge", "u-1", Mode::HardReject);
        stamp(&mut purge, "", CREATED, &key());
        let lead = admitted_of(&purge).unwrap();
        assert_eq!(lead.user, "lead");
        assert!(lead.may_bounce);

        // The spec edited after the webhook saw it.
        let mut edited = purge.clone();
        edited.spec.reason = "INC-2".into();
        assert_eq!(admitted_of(&edited), Err(NotAdmitted::SpecChanged));
        // Copied onto another incident, same spec.
        let mut copy = incident("other", "u-2", Mode::HardReject);
        copy.metadata.annotations = purge.metadata.annotations.clone();
        assert_eq!(admitted_of(&copy), Err(NotAdmitted::Forged));
        // Copied onto an incident of the same name created again later.
        let mut again = purge.clone();
        again.metadata.creation_timestamp = Some(Time(
            Timestamp::from_second(CREATED + CREATE_SKEW_SECONDS + 1).unwrap(),
        ));
        assert_eq!(admitted_of(&again), Err(NotAdmitted::OtherObject));
        // A record of an update is bound to the uid.
        let mut updated = incident("purge", "u-1", Mode::HardReject);
        stamp(&mut updated, "u-1", CREATED + 3600, &key());
        assert!(admitted_of(&updated).is_ok());
        let mut recreated = updated.clone();
        recreated.metadata.uid = Some("u-3".into());
        assert_eq!(admitted_of(&recreated), Err(NotAdmitted::OtherObject));
        // Signed with another key, or with a field changed by hand.
        let mut forged = incident("purge", "u-1", Mode::HardReject);
        stamp(
            &mut forged,
            "u-1",
            CREATED,
            &SigningKey::new(&[8; 32]).unwrap(),
        );
        assert_eq!(admitted_of(&forged), Err(NotAdmitted::Forged));
        let mut promoted = incident("purge", "u-1", Mode::HardReject);
        stamp(&mut promoted, "u-1", CREATED, &key());
        let text = promoted.annotations()[ADMISSION_ANNOTATION].replace("lead", "root");
        promoted
            .annotations_mut()
            .insert(ADMISSION_ANNOTATION.into(), text);
        assert_eq!(admitted_of(&promoted), Err(NotAdmitted::Forged));
        // None at all, or unreadable, or no key to check with.
        let none = incident("purge", "u-1", Mode::HardReject);
        assert_eq!(admitted_of(&none), Err(NotAdmitted::Missing));
        let mut garbage = none.clone();
        garbage
            .annotations_mut()
            .insert(ADMISSION_ANNOTATION.into(), "{".into());
        assert_eq!(admitted_of(&garbage), Err(NotAdmitted::Unreadable));
        assert_eq!(admitted(&purge, None), Err(NotAdmitted::NoKey));
    }

    fn admitted_of(incident: &MailIncident) -> Result<Admitted, NotAdmitted> {
        admitted(incident, Some(&key()))
    }

    #[test]
    fn the_digest_is_the_specs_and_hex_reads_back() {
        let a = incident("a", "u", Mode::TempFail);
        let mut b = a.clone();
        assert_eq!(spec_digest(&a.spec), spec_digest(&b.spec));
        b.spec.resolved = true;
        assert_ne!(spec_digest(&a.spec), spec_digest(&b.spec));
        assert_eq!(unhex(&hex(&[0, 15, 255])), Some(vec![0, 15, 255]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
        assert!(SigningKey::new(&[1; 31]).is_none());
    }
}
