//! Postfix's policy delegation protocol, served by the agent so that TempFail and
//! HardReject reach senders at the very next RCPT, with no `postfix reload` and no wait
//! for running smtpd processes to exit.
//!
//! The site lists the service first in its recipient restrictions, with the answer it
//! wants when the agent is down in normal service (`DUNNO`: mail is accepted; never a
//! bounce). While an incident refuses everyone's mail the agent replaces that answer
//! with a 4xx (see [`fallback_action`]), so that a dead agent never turns a TempFail into
//! 250s:
//!
//! ```text
//! smtpd_recipient_restrictions =
//!     check_policy_service { inet:127.0.0.1:10040, default_action=DUNNO },
//!     permit_mynetworks, reject_unauth_destination
//! ```
//!
//! Postfix sends `name=value` lines ended by an empty line and reads `action=...` back,
//! on a connection it keeps for later requests. Each request names its recipient; the
//! answer is the reply of the document's rule for the recipient's domain (the first rule
//! that covers it) when that rule is TempFail or HardReject, and `DUNNO` (no opinion: the
//! next restriction decides) otherwise, so that one SMTP session gets each recipient's
//! own answer.
//!
//! The fallback has no recipient to go by: it is one answer for every RCPT. It follows
//! the rule that covers everyone, when there is one; with scoped rules only it stays the
//! site's (`DUNNO`), because refusing every recipient for a dead agent would refuse mail
//! no incident is about, and mail it accepts for a scoped domain is still held: Postfix
//! routes those domains to a deferred transport (see [`super::postfix`]), with or without
//! the agent. A scoped TempFail or HardReject thus turns into a hold while the agent is
//! down, and nothing is lost.

use super::{metrics::AgentMetrics, state::Held};
use crate::api::{Mode, mode_document::Rule, scope::recipient_domain};
use std::net::SocketAddr;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tracing::{debug, warn};

/// A request line longer than this ends the connection: Postfix's attributes are short.
const MAX_LINE: usize = 16 * 1024;

/// The `action=` value for a recipient (`None`: a request that names none) in a state:
/// the reply of the rule covering its domain while that rule refuses mail.
pub fn action(held: &Held, recipient: Option<&str>) -> String {
    let domain = recipient.and_then(recipient_domain);
    match held {
        Held::Incident { document } => match document.rule_for(domain.as_deref()) {
            Some(rule) if refuses(rule) => reply_text(rule),
            _ => "DUNNO".into(),
        },
        _ => "DUNNO".into(),
    }
}

/// What Postfix answers when the policy service does not (the agent is dead, restarting
/// or in crash-loop back-off), set by the agent as the `default_action` of its
/// `check_policy_service` restriction while an incident refuses everyone's mail: the
/// reply of the rule covering everyone if it is a 4xx, a 451 otherwise. HardReject fails
/// *soft* without the agent: a 5xx nobody stands behind loses mail for good, a 4xx only
/// delays it. `None` in every other state, scoped rules only included (see the module's
/// documentation): the site's own `default_action` (DUNNO) is restored.
pub fn fallback_action(held: &Held) -> Option<String> {
    let Held::Incident { document } = held else {
        return None;
    };
    let rule = document.rule_for(None).filter(|rule| refuses(rule))?;
    Some(if (400..500).contains(&rule.reply.code) {
        reply_text(rule)
    } else {
        format!("451 4.3.0 {}", rule.reply.text)
    })
}

fn refuses(rule: &Rule) -> bool {
    matches!(rule.mode, Mode::TempFail | Mode::HardReject)
}

fn reply_text(rule: &Rule) -> String {
    let reply = &rule.reply;
    format!("{} {} {}", reply.code, reply.enhanced_code, reply.text)
}

/// The policy service, bound before the agent reports ready.
pub struct PolicyService {
    listener: TcpListener,
}

impl PolicyService {
    pub async fn bind(address: SocketAddr) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(address).await?,
        })
    }

    /// Answers every connection from the current intent, until the task is dropped.
    pub async fn serve(self, intents: watch::Receiver<Held>, metrics: AgentMetrics) {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    debug!(%peer, "policy connection");
                    tokio::spawn(answer_requests(stream, intents.clone(), metrics.clone()));
                }
                Err(error) => {
                    warn!(%error, "policy service cannot accept");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Answers one Postfix connection's requests until it closes.
async fn answer_requests(stream: TcpStream, intents: watch::Receiver<Held>, metrics: AgentMetrics) {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut line = String::new();
    // The recipient of the request being read, if it names one.
    let mut recipient: Option<String> = None;
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE as u64)
            .read_line(&mut line)
            .await
        {
            Ok(0) => return,
            Ok(_) if !line.ends_with('\n') => {
                debug!("policy request line too long or cut; closing");
                return;
            }
            Ok(_) if line.trim_end_matches(['\r', '\n']).is_empty() => {
                let action = action(&intents.borrow(), recipient.take().as_deref());
                debug!(%action, "policy answer");
                metrics.count_policy_answer(&action);
                if writer
                    .write_all(format!("action={action}\n\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(_) => {
                // Every other attribute is ignored.
                if let Some(value) = line.strip_prefix("recipient=") {
                    recipient = Some(value.trim_end_matches(['\r', '\n']).to_string());
                }
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::fixtures::{document, held, rules};

    const USER: Option<&str> = Some("user@e2e.test");

    #[test]
    fn only_refusing_modes_answer_with_the_reply() {
        let reply = "452 4.3.1 Mailbox storage temporarily unavailable, try again later";
        assert_eq!(
            action(&held(&document(Mode::TempFail, 452, "4.3.1")), USER),
            reply
        );
        assert!(
            action(&held(&document(Mode::HardReject, 550, "5.3.2")), USER)
                .starts_with("550 5.3.2 ")
        );
        assert_eq!(
            action(&held(&document(Mode::AcceptAndQueue, 452, "4.3.1")), USER),
            "DUNNO"
        );
        assert_eq!(action(&Held::Normal, USER), "DUNNO");
        let releasing = held(&document(Mode::TempFail, 452, "4.3.1")).next(None, 1);
        assert_eq!(action(&releasing, USER), "DUNNO");
        // An unscoped rule covers a request without a recipient too.
        assert_eq!(
            action(&held(&document(Mode::TempFail, 452, "4.3.1")), None),
            reply
        );
    }

    #[test]
    fn each_recipient_gets_the_answer_of_the_first_rule_covering_its_domain() {
        let scoped = held(&rules(&[
            (Mode::HardReject, 550, "5.3.2", &["a.storage.e2e.test"]),
            (
                Mode::TempFail,
                452,
                "4.3.1",
                &["*.storage.e2e.test", "pec.e2e.test"],
            ),
            (Mode::AcceptAndQueue, 452, "4.3.1", &["queue.e2e.test"]),
        ]));
        let code = |recipient: &str| action(&scoped, Some(recipient))[..3].to_string();
        assert_eq!(code("u@a.storage.e2e.test"), "550");
        assert_eq!(code("U@A.Storage.E2E.Test."), "550", "matched case-blind");
        assert_eq!(code("u@b.storage.e2e.test"), "452");
        assert_eq!(code("u@pec.e2e.test"), "452");
        assert_eq!(
            code("u@storage.e2e.test"),
            "DUN",
            "not a subdomain of itself"
        );
        assert_eq!(code("u@queue.e2e.test"), "DUN", "held, not refused");
        assert_eq!(code("u@e2e.test"), "DUN");
        assert_eq!(action(&scoped, None), "DUNNO");
        assert_eq!(action(&scoped, Some("postmaster")), "DUNNO");
        // Behind the scoped rules, one for everyone answers the rest.
        let layered = held(&rules(&[
            (Mode::HardReject, 550, "5.3.2", &["pec.e2e.test"]),
            (Mode::TempFail, 451, "4.3.0", &[]),
        ]));
        assert!(action(&layered, Some("u@pec.e2e.test")).starts_with("550 5.3.2 "));
        assert!(action(&layered, Some("u@e2e.test")).starts_with("451 4.3.0 "));
    }

    #[test]
    fn without_the_agent_only_a_rule_for_everyone_refuses_and_scoped_ones_keep_the_sites_fallback()
    {
        let scoped = |mode| held(&rules(&[(mode, 452, "4.3.1", &["pec.e2e.test"])]));
        assert_eq!(fallback_action(&scoped(Mode::TempFail)), None);
        assert_eq!(fallback_action(&scoped(Mode::HardReject)), None);
        // A scoped HardReject before a TempFail for everyone: the TempFail's reply.
        let layered = held(&rules(&[
            (Mode::HardReject, 550, "5.3.2", &["pec.e2e.test"]),
            (Mode::TempFail, 451, "4.3.0", &[]),
        ]));
        assert!(
            fallback_action(&layered)
                .unwrap()
                .starts_with("451 4.3.0 Mailbox storage")
        );
        // Everyone's mail held but only a scope refused: accepted and held.
        let queueing = held(&rules(&[
            (Mode::TempFail, 452, "4.3.1", &["pec.e2e.test"]),
            (Mode::AcceptAndQueue, 452, "4.3.1", &[]),
        ]));
        assert_eq!(fallback_action(&queueing), None);
    }

    #[test]
    fn without_the_agent_refusing_modes_fail_soft_and_others_keep_the_sites_fallback() {
        assert_eq!(
            fallback_action(&held(&document(Mode::TempFail, 452, "4.3.1"))).as_deref(),
            Some("452 4.3.1 Mailbox storage temporarily unavailable, try again later")
        );
        assert_eq!(
            fallback_action(&held(&document(Mode::HardReject, 550, "5.3.2"))).as_deref(),
            Some("451 4.3.0 Mailbox storage temporarily unavailable, try again later")
        );
        assert_eq!(
            fallback_action(&held(&document(Mode::AcceptAndQueue, 452, "4.3.1"))),
            None
        );
        assert_eq!(fallback_action(&Held::Normal), None);
        let releasing = held(&document(Mode::TempFail, 452, "4.3.1")).next(None, 1);
        assert_eq!(fallback_action(&releasing), None);
    }

    #[tokio::test]
    async fn each_request_on_a_kept_connection_gets_the_current_answer() {
        let service = PolicyService::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let address = service.listener.local_addr().unwrap();
        let (intents, receiver) = watch::channel(Held::Normal);
        let server = tokio::spawn(service.serve(receiver, AgentMetrics::default()));
        let mut postfix = TcpStream::connect(address).await.unwrap();
        let ask = async |postfix: &mut TcpStream, recipient: &str| {
            let request = format!(
                "request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient={recipient}\nsize=0\n\n"
            );
            postfix.write_all(request.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            while !answer.ends_with(b"\n\n") {
                let mut byte = [0u8];
                postfix.read_exact(&mut byte).await.unwrap();
                answer.push(byte[0]);
            }
            String::from_utf8(answer).unwrap()
        };
        assert_eq!(ask(&mut postfix, "u@e2e.test").await, "action=DUNNO\n\n");
        let mut quoted = document(Mode::TempFail, 452, "4.3.1");
        quoted.rules[0].reply.text = r#"say "hi" now, {x} $y \z"#.into();
        intents.send_replace(held(&quoted));
        assert_eq!(
            ask(&mut postfix, "u@e2e.test").await,
            "action=452 4.3.1 say \"hi\" now, {x} $y \\z\n\n"
        );
        // Scoped: on the same connection, each request by its own recipient.
        let mut scoped = quoted.clone();
        scoped.rules[0].recipient_domains = Some(vec!["pec.e2e.test".into()]);
        intents.send_replace(held(&scoped));
        assert!(
            ask(&mut postfix, "u@pec.e2e.test")
                .await
                .starts_with("action=452 4.3.1 ")
        );
        assert_eq!(ask(&mut postfix, "u@e2e.test").await, "action=DUNNO\n\n");
        assert!(
            ask(&mut postfix, "u@pec.e2e.test")
                .await
                .starts_with("action=452 4.3.1 ")
        );
        server.abort();
    }
}
