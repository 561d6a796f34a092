//! Pure decisions on the webhook's certificates: what to write to the Secret next, whether
//! a serving certificate may be served, and which webhooks need the caBundle. No clock,
//! no client: every input is given.
//!
//! A CA rotation goes in steps, each a write of the Secret that every replica sees:
//! 1. [`Step::RotateCa`]: a new CA signs from now on; the bundle holds it and the old one,
//!    and the serving certificate (from the old CA) is kept. The keeper publishes the
//!    bundle to every webhook's caBundle.
//! 2. Once the bundle has been in every caBundle for `settle` (every API server trusts
//!    both CAs), [`Step::RenewServing`] from the new CA.
//! 3. `settle` after that certificate was made (every replica serves it),
//!    [`Step::TrustOnlyCa`] drops the old CA from the bundle.
//!
//! At no point does an API server meet a certificate from a CA it does not trust.

use super::pki::{Der, Names, ServingFacts, Stored};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use serde_json::json;
use std::time::{Duration, SystemTime};

/// What the Secret needs next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing; look again at `recheck_at` at the latest.
    Keep { recheck_at: SystemTime },
    /// No usable CA: a new CA, a serving certificate from it, a bundle of it alone.
    Create { why: String },
    /// The CA is missing from the bundle: it joins it.
    TrustCa,
    /// A new serving certificate from the current CA.
    RenewServing { why: String },
    /// A new CA signs from now on, trusted beside the current one.
    RotateCa,
    /// Every serving certificate is from the current CA: the others leave the bundle.
    TrustOnlyCa,
}

/// The next step for the Secret holding `stored`. `published_since` is since when every
/// webhook's caBundle has held the stored bundle (none: not yet everywhere).
pub(crate) fn next_step(
    stored: &Stored,
    names: &Names,
    published_since: Option<SystemTime>,
    settle: Duration,
    now: SystemTime,
) -> Step {
    let ca = match &stored.ca {
        Ok(ca) if ca.validity.contains(now) => ca,
        Ok(_) => {
            return Step::Create {
                why: "the CA is not valid now".into(),
            };
        }
        Err(flaw) => {
            return Step::Create {
                why: (*flaw).to_string(),
            };
        }
    };
    if !stored.bundle.contains(&ca.der) {
        return Step::TrustCa;
    }
    let serving = match servable(stored, names, now) {
        Ok(serving) => serving,
        Err(why) => return Step::RenewServing { why },
    };
    if now >= serving.validity.renew_at() {
        return Step::RenewServing {
            why: "two thirds of its life have passed".into(),
        };
    }
    let renew_at = serving.validity.renew_at();
    if serving.signer.as_ref() != Some(&ca.der) {
        // A rotation under way: serve from the new CA only once every API server trusts it.
        return match published_since.map(|since| since + settle) {
            Some(trusted_at) if now >= trusted_at => Step::RenewServing {
                why: "the new CA is trusted everywhere".into(),
            },
            Some(trusted_at) => Step::Keep {
                recheck_at: trusted_at.min(renew_at),
            },
            None => Step::Keep {
                recheck_at: renew_at,
            },
        };
    }
    if stored.bundle.len() > 1 {
        // Replicas that have not loaded the current certificate yet still serve one from
        // an older CA.
        let served_everywhere_at = serving.validity.issued_at() + settle;
        return if now >= served_everywhere_at {
            Step::TrustOnlyCa
        } else {
            Step::Keep {
                recheck_at: served_everywhere_at.min(renew_at),
            }
        };
    }
    if now >= ca.validity.renew_at() {
        return Step::RotateCa;
    }
    Step::Keep {
        recheck_at: renew_at.min(ca.validity.renew_at()),
    }
}

/// The serving certificate, if it may be served now: valid, for every name, from a CA of
/// the bundle. Otherwise why not.
pub(crate) fn servable<'a>(
    stored: &'a Stored,
    names: &Names,
    now: SystemTime,
) -> Result<&'a ServingFacts, String> {
    let serving = stored.serving.as_ref().map_err(|flaw| flaw.to_string())?;
    if !serving.validity.contains(now) {
        return Err("it is not valid now".into());
    }
    let missing = names
        .dns
        .iter()
        .filter(|dns| !serving.names.dns.contains(&dns.to_ascii_lowercase()))
        .cloned()
        .chain(
            names
                .ips
                .iter()
                .filter(|ip| !serving.names.ips.contains(ip))
                .map(ToString::to_string),
        )
        .collect::<Vec<_>>();
    if !missing.is_empty() {
        return Err(format!("it does not name {}", missing.join(", ")));
    }
    match &serving.signer {
        Some(_) => Ok(serving),
        None => Err("no CA of the bundle signed it".into()),
    }
}

/// The bundle after `step`, given the bundle before it and the current CA (`ca`, which is
/// the new one for [`Step::RotateCa`] and [`Step::Create`]).
pub(crate) fn bundle_after(step: &Step, bundle: &[Der], ca: &Der) -> Vec<Der> {
    match step {
        Step::Create { .. } | Step::TrustOnlyCa => vec![ca.clone()],
        Step::TrustCa | Step::RotateCa => std::iter::once(ca.clone())
            .chain(bundle.iter().filter(|der| *der != ca).cloned())
            .collect(),
        Step::Keep { .. } | Step::RenewServing { .. } => bundle.to_vec(),
    }
}

/// The names of the webhooks of `configuration` whose caBundle is not `bundle`.
pub(crate) fn stale_webhooks<'a>(
    configuration: &'a MutatingWebhookConfiguration,
    bundle: &[u8],
) -> Vec<&'a str> {
    configuration
        .webhooks
        .iter()
        .flatten()
        .filter(|webhook| {
            webhook.client_config.ca_bundle.as_ref().map(|b| &b.0[..]) != Some(bundle)
        })
        .map(|webhook| webhook.name.as_str())
        .collect()
}

/// The server-side apply of `bundle` as the caBundle of every webhook of `configuration`,
/// and of nothing else. Every webhook, not only the stale ones: a field this manager
/// applied before and leaves out now would be removed.
pub(crate) fn ca_bundle_apply(
    configuration: &MutatingWebhookConfiguration,
    bundle: &[u8],
) -> serde_json::Value {
    let bundle = k8s_openapi::ByteString(bundle.to_vec());
    let webhooks: Vec<_> = configuration
        .webhooks
        .iter()
        .flatten()
        .map(|webhook| json!({"name": webhook.name, "clientConfig": {"caBundle": bundle}}))
        .collect();
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": configuration.metadata.name},
        "webhooks": webhooks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::pki::{CaFacts, Validity};

    const DAY: Duration = Duration::from_secs(24 * 60 * 60);
    const SETTLE: Duration = Duration::from_secs(60);

    fn now() -> SystemTime {
        crate::webhook::pki::tests::now()
    }

    fn names() -> Names {
        crate::webhook::pki::tests::names()
    }

    fn validity(started_days_ago: u32, days_left: u32) -> Validity {
        Validity {
            not_before: now() - DAY * started_days_ago,
            not_after: now() + DAY * days_left,
        }
    }

    /// A healthy Secret: CA `[1]` a month into its year, a serving certificate from it
    /// made a day ago, a bundle of the CA alone.
    fn healthy() -> Stored {
        Stored {
            ca: Ok(CaFacts {
                der: vec![1],
                validity: validity(30, 335),
            }),
            serving: Ok(ServingFacts {
                validity: validity(1, 29),
                names: names(),
                signer: Some(vec![1]),
            }),
            bundle: vec![vec![1]],
        }
    }

    fn step(stored: &Stored) -> Step {
        next_step(stored, &names(), None, SETTLE, now())
    }

    fn with_serving(change: impl FnOnce(&mut ServingFacts)) -> Stored {
        let mut stored = healthy();
        change(stored.serving.as_mut().unwrap());
        stored
    }

    #[test]
    fn a_healthy_secret_is_kept_until_the_serving_certificate_is_two_thirds_through() {
        let serving_renewal = now() - DAY + DAY * 20;
        assert_eq!(
            step(&healthy()),
            Step::Keep {
                recheck_at: serving_renewal
            }
        );
        let later = next_step(&healthy(), &names(), None, SETTLE, serving_renewal);
        assert!(matches!(later, Step::RenewServing { .. }), "{later:?}");
    }

    #[test]
    fn no_secret_or_an_unusable_ca_makes_everything_anew() {
        let absent = crate::webhook::pki::read(&Default::default());
        assert_eq!(
            step(&absent),
            Step::Create {
                why: "ca.crt holds no certificate".into()
            }
        );
        let mut expired = healthy();
        expired.ca.as_mut().unwrap().validity = validity(400, 0);
        assert!(matches!(step(&expired), Step::Create { .. }));
    }

    #[test]
    fn a_ca_missing_from_the_bundle_joins_it_first() {
        let mut stored = healthy();
        stored.bundle = vec![vec![7]];
        assert_eq!(step(&stored), Step::TrustCa);
        assert_eq!(
            bundle_after(&Step::TrustCa, &stored.bundle, &vec![1]),
            vec![vec![1], vec![7]]
        );
    }

    #[test]
    fn a_serving_certificate_is_renewed_when_unusable_expired_misnamed_or_unsigned() {
        let mut unreadable = healthy();
        unreadable.serving = Err("tls.crt does not parse");
        let cases = [
            (unreadable, "tls.crt does not parse"),
            (
                with_serving(|s| s.validity = validity(31, 0)),
                "it is not valid now",
            ),
            (
                with_serving(|s| s.names.dns.truncate(1)),
                "it does not name hook.ops.svc",
            ),
            (
                with_serving(|s| s.names.ips.clear()),
                "it does not name 127.0.0.1",
            ),
            (
                with_serving(|s| s.signer = None),
                "no CA of the bundle signed it",
            ),
        ];
        for (stored, why) in cases {
            assert_eq!(step(&stored), Step::RenewServing { why: why.into() });
        }
    }

    #[test]
    fn names_asked_for_are_compared_without_case() {
        let mut asked = names();
        asked.dns[0].make_ascii_uppercase();
        assert!(servable(&healthy(), &asked, now()).is_ok());
    }

    #[test]
    fn a_ca_with_a_third_of_its_life_left_is_rotated_keeping_the_old_one_trusted() {
        let mut stored = healthy();
        stored.ca.as_mut().unwrap().validity = validity(250, 115);
        assert_eq!(step(&stored), Step::RotateCa);
        assert_eq!(
            bundle_after(&Step::RotateCa, &stored.bundle, &vec![2]),
            vec![vec![2], vec![1]]
        );
    }

    /// Just after [`Step::RotateCa`]: CA `[2]` is current, the serving certificate is
    /// from `[1]`, both are trusted.
    fn rotating() -> Stored {
        let mut stored = healthy();
        stored.ca = Ok(CaFacts {
            der: vec![2],
            validity: validity(0, 365),
        });
        stored.bundle = vec![vec![2], vec![1]];
        stored
    }

    #[test]
    fn during_a_rotation_certificates_move_to_the_new_ca_only_once_it_is_trusted_everywhere() {
        let stored = rotating();
        let serving_renewal = now() - DAY + DAY * 20;
        // Not yet in every caBundle: wait (for the caBundle watch, or the renewal date).
        assert_eq!(
            step(&stored),
            Step::Keep {
                recheck_at: serving_renewal
            }
        );
        // In every caBundle, but not long enough for every API server to have seen it.
        let since = now() - SETTLE / 2;
        assert_eq!(
            next_step(&stored, &names(), Some(since), SETTLE, now()),
            Step::Keep {
                recheck_at: since + SETTLE
            }
        );
        assert_eq!(
            next_step(&stored, &names(), Some(since), SETTLE, since + SETTLE),
            Step::RenewServing {
                why: "the new CA is trusted everywhere".into()
            }
        );
        assert_eq!(
            bundle_after(
                &Step::RenewServing { why: String::new() },
                &stored.bundle,
                &vec![2]
            ),
            stored.bundle
        );
    }

    #[test]
    fn the_old_ca_leaves_the_bundle_once_every_replica_serves_the_new_certificate() {
        let mut stored = rotating();
        let made = now() - Duration::from_secs(10);
        *stored.serving.as_mut().unwrap() = ServingFacts {
            validity: Validity {
                not_before: made - crate::webhook::pki::BACKDATE,
                not_after: made + DAY * 30,
            },
            names: names(),
            signer: Some(vec![2]),
        };
        let everywhere = made + SETTLE;
        assert_eq!(
            step(&stored),
            Step::Keep {
                recheck_at: everywhere
            }
        );
        assert_eq!(
            next_step(&stored, &names(), None, SETTLE, everywhere),
            Step::TrustOnlyCa
        );
        assert_eq!(
            bundle_after(&Step::TrustOnlyCa, &stored.bundle, &vec![2]),
            vec![vec![2]]
        );
    }

    #[test]
    fn a_serving_certificate_near_its_end_is_renewed_even_mid_rotation() {
        let mut stored = rotating();
        stored.serving.as_mut().unwrap().validity = validity(25, 5);
        assert!(matches!(step(&stored), Step::RenewServing { .. }));
    }

    fn webhooks_with(bundles: &[Option<&[u8]>]) -> MutatingWebhookConfiguration {
        let webhooks: Vec<_> = bundles
            .iter()
            .enumerate()
            .map(|(i, bundle)| {
                let mut client_config = json!({"url": "https://127.0.0.1/mutate"});
                if let Some(bundle) = bundle {
                    client_config["caBundle"] = json!(k8s_openapi::ByteString(bundle.to_vec()));
                }
                json!({
                    "name": format!("w{i}.mailops.dev"), "clientConfig": client_config,
                    "sideEffects": "None", "admissionReviewVersions": ["v1"],
                })
            })
            .collect();
        serde_json::from_value(json!({"metadata": {"name": "hooks"}, "webhooks": webhooks}))
            .unwrap()
    }

    #[test]
    fn webhooks_with_another_or_no_ca_bundle_are_stale() {
        let configuration = webhooks_with(&[Some(b"new"), None, Some(b"old")]);
        assert_eq!(
            stale_webhooks(&configuration, b"new"),
            ["w1.mailops.dev", "w2.mailops.dev"]
        );
        assert!(stale_webhooks(&webhooks_with(&[Some(b"new")]), b"new").is_empty());
    }

    #[test]
    fn the_ca_bundle_apply_names_every_webhook_and_only_its_ca_bundle() {
        let applied = ca_bundle_apply(&webhooks_with(&[Some(b"new"), None]), b"PEM");
        assert_eq!(
            applied,
            json!({
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": "hooks"},
                "webhooks": [
                    {"name": "w0.mailops.dev", "clientConfig": {"caBundle": "UEVN"}},
                    {"name": "w1.mailops.dev", "clientConfig": {"caBundle": "UEVN"}},
                ],
            })
        );
    }
}
