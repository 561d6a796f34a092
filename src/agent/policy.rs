//! Postfix's policy delegation protocol, served by the agent so that TempFail and
//! HardReject reach senders at the very next RCPT, with no `postfix reload` and no wait
//! for running smtpd processes to exit.
//!
//! The site lists the service first in its recipient restrictions, with the answer it
//! wants when the agent is down in normal service (`DUNNO`: mail is accepted; never a
//! bounce). While an incident refuses mail the agent replaces that answer with a 4xx
//! (see [`fallback_action`]), so that a dead agent never turns a TempFail into 250s:
//!
//! ```text
//! smtpd_recipient_restrictions =
//!     check_policy_service { inet:127.0.0.1:10040, default_action=DUNNO },
//!     permit_mynetworks, reject_unauth_destination
//! ```
//!
//! Postfix sends `name=value` lines ended by an empty line and reads `action=...` back,
//! on a connection it keeps for later requests. The answer is the incident's reply in
//! TempFail and HardReject, `DUNNO` (no opinion: the next restriction decides) otherwise.

use super::state::Held;
use crate::{api::Mode, metrics::AgentMetrics};
use std::net::SocketAddr;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tracing::{debug, warn};

/// A request line longer than this ends the connection: Postfix's attributes are short.
const MAX_LINE: usize = 16 * 1024;

/// The `action=` value for a state: the incident's reply while it refuses mail.
pub fn action(held: &Held) -> String {
    match held {
        Held::Incident { document }
            if matches!(document.headline().mode, Mode::TempFail | Mode::HardReject) =>
        {
            let reply = &document.headline().reply;
            format!("{} {} {}", reply.code, reply.enhanced_code, reply.text)
        }
        _ => "DUNNO".into(),
    }
}

/// What Postfix answers when the policy service does not (the agent is dead, restarting
/// or in crash-loop back-off), set by the agent as the `default_action` of its
/// `check_policy_service` restriction while an incident refuses mail: the incident's
/// reply if it is a 4xx, a 451 otherwise. HardReject fails *soft* without the agent: a
/// 5xx nobody stands behind loses mail for good, a 4xx only delays it. `None` in every
/// other state: the site's own `default_action` (DUNNO) is restored.
pub fn fallback_action(held: &Held) -> Option<String> {
    match held {
        Held::Incident { document }
            if matches!(document.headline().mode, Mode::TempFail | Mode::HardReject) =>
        {
            let reply = &document.headline().reply;
            Some(if (400..500).contains(&reply.code) {
                action(held)
            } else {
                format!("451 4.3.0 {}", reply.text)
            })
        }
        _ => None,
    }
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
    loop {
        line.clear();
        // Attributes are read and ignored: the answer is the same for every recipient.
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
                let action = action(&intents.borrow());
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
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::fixtures::{document, held};

    #[test]
    fn only_refusing_modes_answer_with_the_reply() {
        let reply = "452 4.3.1 Mailbox storage temporarily unavailable, try again later";
        assert_eq!(
            action(&held(&document(Mode::TempFail, 452, "4.3.1"))),
            reply
        );
        assert!(action(&held(&document(Mode::HardReject, 550, "5.3.2"))).starts_with("550 5.3.2 "));
        assert_eq!(
            action(&held(&document(Mode::AcceptAndQueue, 452, "4.3.1"))),
            "DUNNO"
        );
        assert_eq!(action(&Held::Normal), "DUNNO");
        let releasing = held(&document(Mode::TempFail, 452, "4.3.1")).next(None, 1);
        assert_eq!(action(&releasing), "DUNNO");
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
        let request = "request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient=u@e2e.test\n\n";
        let ask = async |postfix: &mut TcpStream| {
            postfix.write_all(request.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            while !answer.ends_with(b"\n\n") {
                let mut byte = [0u8];
                postfix.read_exact(&mut byte).await.unwrap();
                answer.push(byte[0]);
            }
            String::from_utf8(answer).unwrap()
        };
        assert_eq!(ask(&mut postfix).await, "action=DUNNO\n\n");
        let mut quoted = document(Mode::TempFail, 452, "4.3.1");
        quoted.rules[0].reply.text = r#"say "hi" now, {x} $y \z"#.into();
        intents.send_replace(held(&quoted));
        assert_eq!(
            ask(&mut postfix).await,
            "action=452 4.3.1 say \"hi\" now, {x} $y \\z\n\n"
        );
        server.abort();
    }
}
