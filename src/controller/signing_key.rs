//! The key the admission webhook signs its records with and the controller checks them
//! with (see [`crate::api::admission`]): 32 random bytes in the Secret
//! [`SIGNING_KEY_SECRET`] of the operator's namespace, made by the first replica that
//! finds none. Every replica keeps the key it first read; a Secret deleted or changed by
//! another hand is put back from it, with an event naming who changed it, so that no
//! approval is lost to an accident. (A new key would fail every HardReject closed until
//! someone allowed to bounce mail applied it again.)

use super::{cached::changed_by, events::Events};
use crate::{
    Error, Result,
    api::admission::SigningKey,
    plan::{EventReason, Note},
    retry::retry_delays,
};
use futures::{StreamExt, future::BoxFuture};
use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client,
    api::PostParams,
    runtime::{WatchStreamExt, watcher},
};
use ring::rand::{SecureRandom, SystemRandom};
use std::time::Duration;
use tracing::{info, warn};

/// The Secret holding the key.
pub const SIGNING_KEY_SECRET: &str = "mail-incident-operator-signing-key";
/// Its data field.
const KEY_FIELD: &str = "hmac-sha256.key";
const KEY_BYTES: usize = 32;
/// How often the Secret is compared with the key held, besides on every change.
const RECHECK_EVERY: Duration = Duration::from_secs(60);

/// What to do about the Secret, given the key this replica holds.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Nothing: the Secret holds the key.
    Keep,
    /// Take the Secret's key (this replica held none).
    Adopt(Vec<u8>),
    /// Create the Secret with this key (none held: a new one).
    Create(Vec<u8>),
    /// Put the held key back into the Secret another hand changed.
    PutBack,
}

/// Decides from the Secret's key bytes (`None`: no Secret, or no usable key in it).
fn step(held: Option<&[u8]>, stored: Option<&[u8]>, fresh: impl FnOnce() -> Vec<u8>) -> Step {
    let stored = stored.filter(|bytes| bytes.len() >= KEY_BYTES);
    match (held, stored) {
        (Some(held), Some(stored)) if held == stored => Step::Keep,
        (None, Some(stored)) => Step::Adopt(stored.to_vec()),
        (None, None) => Step::Create(fresh()),
        (Some(_), _) => Step::PutBack,
    }
}

/// Loads (or makes) the key before returning it, then keeps the Secret in a background
/// task until `stop`. The key a replica holds never changes while it runs (a changed
/// Secret is put back, not followed), so it is returned as it is. `instance` names this
/// replica in events.
pub async fn start(
    client: Client,
    namespace: &str,
    instance: String,
    stop: BoxFuture<'static, ()>,
) -> Result<SigningKey> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut keeper = Keeper {
        secrets,
        events: Events::new(client, instance),
        held: None,
    };
    let mut delays = retry_delays(Duration::from_millis(200), Duration::from_secs(5));
    // Start-up waits for the key: the controller must not judge a HardReject without it.
    let mut attempts = 0;
    loop {
        match keeper.converge().await {
            Ok(()) => break,
            Err(error) if attempts < 10 => {
                attempts += 1;
                warn!(%error, "cannot load the signing key; retrying");
                tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))).await;
            }
            Err(error) => return Err(error),
        }
    }
    let key = keeper
        .held
        .as_deref()
        .and_then(SigningKey::new)
        .ok_or_else(|| Error::Webhook("the signing key loaded is too short".into()))?;
    tokio::spawn(async move {
        tokio::select! {
            () = keeper.keep() => {}
            () = stop => {}
        }
    });
    Ok(key)
}

struct Keeper {
    secrets: Api<Secret>,
    events: Events,
    held: Option<Vec<u8>>,
}

impl Keeper {
    /// Compares on every change of the Secret and every [`RECHECK_EVERY`]; errors are
    /// retried with backoff, never given up on (the key held stays in use meanwhile).
    async fn keep(&mut self) {
        let config =
            watcher::Config::default().fields(&format!("metadata.name={SIGNING_KEY_SECRET}"));
        let mut changes = watcher(self.secrets.clone(), config)
            .default_backoff()
            .boxed();
        let mut delays = retry_delays(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            let wait = match self.converge().await {
                Ok(()) => {
                    delays = retry_delays(Duration::from_millis(500), Duration::from_secs(30));
                    RECHECK_EVERY
                }
                Err(error) => {
                    warn!(%error, "cannot keep the signing key Secret; retrying");
                    delays.next().unwrap_or(RECHECK_EVERY)
                }
            };
            tokio::select! {
                _ = changes.next() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn converge(&mut self) -> Result<()> {
        let found = self
            .secrets
            .get_opt(SIGNING_KEY_SECRET)
            .await
            .map_err(Error::api(format!("get Secret {SIGNING_KEY_SECRET}")))?;
        let stored = found
            .as_ref()
            .and_then(|s| s.data.as_ref()?.get(KEY_FIELD))
            .map(|bytes| bytes.0.as_slice());
        match step(self.held.as_deref(), stored, random_key) {
            Step::Keep => Ok(()),
            Step::Adopt(key) => {
                info!("loaded the signing key of admission records");
                self.held = Some(key);
                Ok(())
            }
            Step::Create(key) => {
                match self
                    .secrets
                    .create(&PostParams::default(), &secret(&key, None))
                    .await
                {
                    Ok(_) => {
                        info!("made a new signing key for admission records");
                        self.held = Some(key);
                        Ok(())
                    }
                    // Another replica made it first: take theirs on the next look.
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        Box::pin(self.converge()).await
                    }
                    Err(error) => Err(Error::api(format!("create Secret {SIGNING_KEY_SECRET}"))(
                        error,
                    )),
                }
            }
            Step::PutBack => {
                let held = self.held.clone().unwrap_or_default();
                let who = found
                    .as_ref()
                    .and_then(|s| changed_by(&s.metadata))
                    .unwrap_or("someone")
                    .to_string();
                let written = match &found {
                    Some(existing) => {
                        let version = existing.metadata.resource_version.clone();
                        self.secrets
                            .replace(
                                SIGNING_KEY_SECRET,
                                &PostParams::default(),
                                &secret(&held, version),
                            )
                            .await
                    }
                    None => {
                        self.secrets
                            .create(&PostParams::default(), &secret(&held, None))
                            .await
                    }
                };
                let restored =
                    written.map_err(Error::api(format!("put back Secret {SIGNING_KEY_SECRET}")))?;
                let how = if found.is_some() {
                    format!("changed by {who}")
                } else {
                    "deleted".into()
                };
                warn!(
                    how,
                    "the signing key Secret was {how}; put back the key in use"
                );
                self.events
                    .publish(
                        &restored,
                        &Note {
                            warning: true,
                            reason: EventReason::SigningKeyRestored,
                            message: format!(
                                "The signing key of admission records was {how}; the key in use was put back (a new key would stop every approved HardReject)"
                            ),
                        },
                    )
                    .await;
                Ok(())
            }
        }
    }
}

fn random_key() -> Vec<u8> {
    let mut key = vec![0; KEY_BYTES];
    // The system's random source failing leaves no safe key to make: fail loudly.
    SystemRandom::new()
        .fill(&mut key)
        .expect("the system's random source works");
    key
}

fn secret(key: &[u8], resource_version: Option<String>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(SIGNING_KEY_SECRET.into()),
            resource_version,
            labels: Some(
                [(
                    "app.kubernetes.io/name".to_string(),
                    "mail-incident-operator".to_string(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        data: Some([(KEY_FIELD.to_string(), ByteString(key.to_vec()))].into()),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_adopts_the_stored_key_makes_one_when_none_and_puts_its_own_back() {
        let ours = [1u8; 32];
        let theirs = [2u8; 32];
        let fresh = || vec![9; 32];
        assert_eq!(
            step(None, Some(&theirs), fresh),
            Step::Adopt(theirs.to_vec())
        );
        assert_eq!(step(None, None, fresh), Step::Create(vec![9; 32]));
        assert_eq!(
            step(None, Some(&[3; 8]), fresh),
            Step::Create(vec![9; 32]),
            "too short to use"
        );
        assert_eq!(step(Some(&ours), Some(&ours), fresh), Step::Keep);
        assert_eq!(step(Some(&ours), Some(&theirs), fresh), Step::PutBack);
        assert_eq!(step(Some(&ours), None, fresh), Step::PutBack);
        assert_eq!(random_key().len(), KEY_BYTES);
        assert_ne!(random_key(), random_key());
    }
}
