//! The mutating admission webhook of MailIncidents, served by every replica.
//!
//! - A write that makes or changes a HardReject in force needs the `bounce` verb on
//!   `mailincidents.mailops.dev` (asked of the API server with a SubjectAccessReview
//!   for the requesting user, as CSR approval and cert-manager's signers do); without it
//!   the write is refused, saying which verb and which role grants it.
//! - Every admitted change of the spec is stamped with a signed record of who made it
//!   (see [`crate::api::admission`]); a write that changes only metadata keeps the
//!   record as it was, so nobody can write or remove one by hand while the webhook is up.
//!
//! The webhook configuration's failurePolicy is Ignore (Kubernetes 1.20 has no
//! matchConditions to fail only HardReject closed): while it is down, every write goes
//! through unstamped, and the controller applies no HardReject without a record that
//! checks out. Resolving, deleting and the other modes never wait for it.

use crate::api::{
    MailIncident, Mode,
    admission::{ADMISSION_ANNOTATION, Admission, SigningKey},
};
use crate::plan::BOUNCE_ROLE;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::{
    Api, Client, ResourceExt,
    api::PostParams,
    core::{
        DynamicObject,
        admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation},
    },
};
use tracing::{info, warn};

/// The path the webhook configuration calls.
pub const MUTATE_PATH: &str = "/mutate-mailincidents";

/// The verb a HardReject needs.
pub const BOUNCE_VERB: &str = "bounce";

/// Whether writing `new` over `old` (absent for a creation) makes or changes a
/// HardReject in force: resolving one, or any change of one already resolved, does not.
pub fn needs_bounce(old: Option<&MailIncident>, new: &MailIncident) -> bool {
    new.spec.mode == Mode::HardReject
        && !new.spec.resolved
        && old.is_none_or(|old| old.spec != new.spec)
}

/// One write to decide on.
#[derive(Debug, Clone)]
pub struct Write<'a> {
    pub operation: &'a Operation,
    pub namespace: &'a str,
    pub user: &'a str,
    pub old: Option<&'a MailIncident>,
    pub new: &'a MailIncident,
    /// Seconds since the epoch.
    pub now: i64,
}

/// What the webhook answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Refused, with the message the user reads.
    Deny(String),
    /// Admitted, changed by this JSON patch (maybe empty).
    Admit(json_patch::Patch),
}

/// Decides on `write`, knowing whether its user holds `bounce` (`None`: not asked, or
/// the question failed).
pub fn decide(write: &Write<'_>, may_bounce: Option<bool>, key: &SigningKey) -> Verdict {
    let new = write.new;
    let old_record = write
        .old
        .and_then(|old| old.annotations().get(ADMISSION_ANNOTATION));
    if write.old.is_some_and(|old| old.spec == new.spec) {
        // Only metadata changed: the record stays the one that was.
        return Verdict::Admit(annotation_patch(new, old_record));
    }
    let bounce = needs_bounce(write.old, new);
    if bounce {
        if new.metadata.name.as_deref().unwrap_or_default().is_empty() {
            return Verdict::Deny(
                "a HardReject incident needs a name of its own (metadata.name, not generateName): its approval is bound to it".into(),
            );
        }
        if may_bounce != Some(true) {
            let who = format!("user {:?}", write.user);
            return Verdict::Deny(refusal(&who, write.namespace, may_bounce.is_none()));
        }
    }
    let name = new.name_any();
    let uid = match write.operation {
        Operation::Create => String::new(),
        _ => write
            .old
            .and_then(|old| old.metadata.uid.clone())
            .unwrap_or_default(),
    };
    let record = Admission {
        namespace: write.namespace,
        name: &name,
        uid: &uid,
        user: write.user,
        operation: match write.operation {
            Operation::Create => "CREATE",
            _ => "UPDATE",
        },
        may_bounce: bounce,
        at: write.now,
        spec: &new.spec,
    }
    .sign(key);
    let text = serde_json::to_string(&record).unwrap_or_default();
    Verdict::Admit(annotation_patch(new, Some(&text)))
}

/// What a user without `bounce` reads; `who` is `user "NAME"`, or `you` in the plugin.
pub fn refusal(who: &str, namespace: &str, unknown: bool) -> String {
    let asked = if unknown {
        " (the API server could not be asked whether they may)"
    } else {
        ""
    };
    format!(
        "{who} may not make MTAs bounce mail{asked}: mode HardReject needs the verb \"{BOUNCE_VERB}\" on mailincidents.mailops.dev in namespace {namespace}, which the ClusterRole {BOUNCE_ROLE} grants (edit does not)"
    )
}

/// The JSON patch that leaves `object`'s record annotation as `wanted` (absent: none).
fn annotation_patch(object: &MailIncident, wanted: Option<&String>) -> json_patch::Patch {
    let annotations = object.metadata.annotations.as_ref();
    let current = annotations.and_then(|a| a.get(ADMISSION_ANNOTATION));
    let path = format!(
        "/metadata/annotations/{}",
        ADMISSION_ANNOTATION.replace('~', "~0").replace('/', "~1")
    );
    let operations = match (current, wanted) {
        (current, wanted) if current == wanted => serde_json::json!([]),
        (_, None) => serde_json::json!([{"op": "remove", "path": path}]),
        (_, Some(wanted)) if annotations.is_none() => serde_json::json!([
            {"op": "add", "path": "/metadata/annotations", "value": {ADMISSION_ANNOTATION: wanted}}
        ]),
        (_, Some(wanted)) => serde_json::json!([{"op": "add", "path": path, "value": wanted}]),
    };
    serde_json::from_value(operations).unwrap_or_default()
}

/// What the webhook needs to answer a review.
#[derive(Clone)]
pub struct Reviewer {
    pub client: Client,
    pub signing_key: SigningKey,
}

impl Reviewer {
    /// Answers an AdmissionReview; anything it cannot read is admitted unchanged (the
    /// controller fails a HardReject without a record closed).
    pub async fn review(
        &self,
        review: AdmissionReview<DynamicObject>,
    ) -> AdmissionReview<DynamicObject> {
        let request: AdmissionRequest<DynamicObject> = match review.try_into() {
            Ok(request) => request,
            Err(error) => {
                warn!(%error, "unreadable admission review");
                return AdmissionResponse::invalid(error.to_string()).into_review();
            }
        };
        let response = AdmissionResponse::from(&request);
        let typed = |object: &Option<DynamicObject>| {
            object
                .as_ref()
                .and_then(|o| serde_json::to_value(o).ok())
                .and_then(|v| serde_json::from_value::<MailIncident>(v).ok())
        };
        let (Some(new), old) = (typed(&request.object), typed(&request.old_object)) else {
            return response.into_review();
        };
        let namespace = request.namespace.clone().unwrap_or_default();
        let user = request.user_info.username.clone().unwrap_or_default();
        let write = Write {
            operation: &request.operation,
            namespace: &namespace,
            user: &user,
            old: old.as_ref(),
            new: &new,
            now: k8s_openapi::jiff::Timestamp::now().as_second(),
        };
        let may_bounce = if needs_bounce(old.as_ref(), &new) {
            self.may_bounce(&request, &namespace).await
        } else {
            None
        };
        match decide(&write, may_bounce, &self.signing_key) {
            Verdict::Deny(message) => {
                info!(%user, incident = %new.name_any(), %namespace, "refused a HardReject: {message}");
                response.deny(message).into_review()
            }
            Verdict::Admit(patch) if patch.0.is_empty() => response.into_review(),
            Verdict::Admit(patch) => match response.clone().with_patch(patch) {
                Ok(patched) => patched.into_review(),
                Err(error) => {
                    warn!(%error, "cannot serialize the admission patch");
                    response.into_review()
                }
            },
        }
    }

    /// Asks the API server whether the requesting user may `bounce` this incident.
    async fn may_bounce(
        &self,
        request: &AdmissionRequest<DynamicObject>,
        namespace: &str,
    ) -> Option<bool> {
        let user = &request.user_info;
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username.clone(),
                uid: user.uid.clone(),
                groups: user.groups.clone(),
                extra: user.extra.clone(),
                resource_attributes: Some(ResourceAttributes {
                    group: Some("mailops.dev".into()),
                    resource: Some("mailincidents".into()),
                    verb: Some(BOUNCE_VERB.into()),
                    namespace: Some(namespace.into()),
                    name: Some(request.name.clone()).filter(|n| !n.is_empty()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        match Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
        {
            Ok(answer) => Some(answer.status.is_some_and(|s| s.allowed)),
            Err(error) => {
                warn!(%error, "cannot ask whether the user may bounce mail");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::admission::{AdmissionRecord, admitted};

    fn key() -> SigningKey {
        SigningKey::new(&[5; 32]).unwrap()
    }

    fn incident(mode: &str, resolved: bool) -> MailIncident {
        let mut spec = serde_json::json!({
            "mode": mode, "reason": "INC-1", "targets": {"matchLabels": {"app": "mta"}},
            "resolved": resolved,
        });
        if mode == "HardReject" {
            spec["hardReject"] = serde_json::json!({"acknowledgeBounces": true});
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "mailops.dev/v1alpha1", "kind": "MailIncident",
            "metadata": {"name": "purge", "namespace": "mail", "uid": "u-1",
                         "creationTimestamp": "2026-12-06T10:00:00Z"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn write<'a>(
        operation: &'a Operation,
        old: Option<&'a MailIncident>,
        new: &'a MailIncident,
    ) -> Write<'a> {
        Write {
            operation,
            namespace: "mail",
            user: "lead",
            old,
            new,
            now: 1_796_551_200,
        }
    }

    /// `object` with `patch` applied, as the API server stores it.
    fn patched(object: &MailIncident, verdict: Verdict) -> MailIncident {
        let Verdict::Admit(patch) = verdict else {
            panic!("refused: {verdict:?}")
        };
        let mut value = serde_json::to_value(object).unwrap();
        json_patch::patch(&mut value, &patch).unwrap();
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_hard_reject_in_force_needs_bounce_resolving_it_does_not() {
        let temp_fail = incident("TempFail", false);
        let hard_reject = incident("HardReject", false);
        let resolved = incident("HardReject", true);
        assert!(needs_bounce(None, &hard_reject));
        assert!(
            needs_bounce(Some(&temp_fail), &hard_reject),
            "an escalation"
        );
        assert!(
            !needs_bounce(Some(&hard_reject), &hard_reject),
            "metadata only"
        );
        assert!(!needs_bounce(Some(&hard_reject), &resolved));
        assert!(
            needs_bounce(Some(&resolved), &hard_reject),
            "taken back in force"
        );
        assert!(!needs_bounce(None, &temp_fail));
        let mut extended = hard_reject.clone();
        extended.spec.duration = Some("2d".into());
        assert!(
            needs_bounce(Some(&hard_reject), &extended),
            "a longer bounce window"
        );
    }

    #[test]
    fn a_user_without_bounce_is_refused_naming_the_verb_and_the_role() {
        let hard_reject = incident("HardReject", false);
        let create = Operation::Create;
        let verdict = decide(&write(&create, None, &hard_reject), Some(false), &key());
        assert_eq!(
            verdict,
            Verdict::Deny(
                "user \"lead\" may not make MTAs bounce mail: mode HardReject needs the verb \"bounce\" on mailincidents.mailops.dev in namespace mail, which the ClusterRole mail-incident-operator-bounce grants (edit does not)".into()
            )
        );
        let Verdict::Deny(unknown) = decide(&write(&create, None, &hard_reject), None, &key())
        else {
            panic!()
        };
        assert!(unknown.contains("could not be asked"), "{unknown}");
    }

    #[test]
    fn an_admitted_spec_carries_a_record_the_controller_verifies() {
        let hard_reject = incident("HardReject", false);
        let create = Operation::Create;
        let mut stored = patched(
            &hard_reject,
            decide(&write(&create, None, &hard_reject), Some(true), &key()),
        );
        stored.metadata.creation_timestamp = hard_reject.metadata.creation_timestamp.clone();
        let admitted = admitted(&stored, Some(&key())).unwrap();
        assert_eq!(
            (admitted.user.as_str(), admitted.may_bounce),
            ("lead", true)
        );

        // A TempFail records its author too, without bounce.
        let update = Operation::Update;
        let temp_fail = incident("TempFail", false);
        let stored = patched(
            &temp_fail,
            decide(
                &write(&update, Some(&hard_reject), &temp_fail),
                None,
                &key(),
            ),
        );
        let record: AdmissionRecord =
            serde_json::from_str(&stored.annotations()[ADMISSION_ANNOTATION]).unwrap();
        assert_eq!((record.uid.as_str(), record.may_bounce), ("u-1", false));
    }

    #[test]
    fn a_metadata_only_write_keeps_the_record_as_it_was() {
        let create = Operation::Create;
        let update = Operation::Update;
        let hard_reject = incident("HardReject", false);
        let stored = patched(
            &hard_reject,
            decide(&write(&create, None, &hard_reject), Some(true), &key()),
        );
        // A forged record, and a removed one, are put back; a label change keeps it.
        let mut forged = stored.clone();
        forged
            .annotations_mut()
            .insert(ADMISSION_ANNOTATION.into(), "{\"user\":\"root\"}".into());
        let verdict = decide(&write(&update, Some(&stored), &forged), None, &key());
        assert_eq!(
            patched(&forged, verdict).annotations(),
            stored.annotations()
        );
        let mut stripped = stored.clone();
        stripped.metadata.annotations = None;
        let verdict = decide(&write(&update, Some(&stored), &stripped), None, &key());
        assert_eq!(
            patched(&stripped, verdict).annotations(),
            stored.annotations()
        );
        let mut labelled = stored.clone();
        labelled.labels_mut().insert("team".into(), "mail".into());
        assert_eq!(
            decide(&write(&update, Some(&stored), &labelled), None, &key()),
            Verdict::Admit(json_patch::Patch(vec![]))
        );
        // A record slipped onto an object that had none (written while the webhook was
        // down) is removed.
        let mut slipped = hard_reject.clone();
        slipped.metadata.annotations = stored.metadata.annotations.clone();
        let verdict = decide(&write(&update, Some(&hard_reject), &slipped), None, &key());
        assert!(
            !patched(&slipped, verdict)
                .annotations()
                .contains_key(ADMISSION_ANNOTATION)
        );
    }
}
