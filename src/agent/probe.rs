//! Observed on the wire: the agent asks its own MTA, over SMTP on loopback, the RCPT
//! question senders ask, for a recipient the site names (`--probe-recipient`), and
//! checks the answer against the state it applied. Reading the configuration back says
//! what the MTA was told; the probe says what senders hear (a Postfix not reloaded, an
//! ACL that no longer reads the mode file). The session is EHLO, `MAIL FROM:<>`, RCPT,
//! then RSET and QUIT: no message is ever sent. Runs on a blocking thread.

use super::{Difference, DriftKind, differs, state::Held};
use crate::api::{Mode, scope::recipient_domain};
use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// How long the probe waits to connect and for each reply.
const PROBE_DEADLINE: Duration = Duration::from_secs(10);

/// Where and what the agent asks its MTA.
#[derive(Clone, Debug)]
pub struct Probe {
    /// The MTA's SMTP listener, on loopback.
    pub address: SocketAddr,
    /// A recipient the MTA accepts in normal service.
    pub recipient: String,
}

impl Probe {
    /// The MTA's reply to RCPT TO (its last line), after a greeting, EHLO and MAIL FROM
    /// each answered as expected; an error if the session goes wrong before RCPT.
    pub fn ask(&self) -> std::io::Result<String> {
        let stream = TcpStream::connect_timeout(&self.address, PROBE_DEADLINE)?;
        stream.set_read_timeout(Some(PROBE_DEADLINE))?;
        stream.set_write_timeout(Some(PROBE_DEADLINE))?;
        // Each command goes out whole in one write: nothing to gain from Nagle's wait.
        stream.set_nodelay(true)?;
        let mut session = Session {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        session.expect(None, "220")?;
        session.expect(Some("EHLO mail-incident-agent.localhost"), "250")?;
        session.expect(Some("MAIL FROM:<>"), "250")?;
        let answer = session.reply(Some(&format!("RCPT TO:<{}>", self.recipient)))?;
        // Leave no transaction behind; a failure here changes nothing about the answer.
        session.reply(Some("RSET")).ok();
        session.reply(Some("QUIT")).ok();
        Ok(answer)
    }
}

struct Session {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Session {
    /// Sends `command` (if any) and reads the reply: its last line.
    fn reply(&mut self, command: Option<&str>) -> std::io::Result<String> {
        if let Some(command) = command {
            // One write: `write!` would send the line and its CRLF apart, and the MTA,
            // waiting for the line's end, delays the ACK the CRLF waits for (40 ms).
            self.writer.write_all(format!("{command}\r\n").as_bytes())?;
        }
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            // A reply's last line has a space (or nothing), not a dash, after the code.
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(line.trim_end().to_string());
            }
        }
    }

    /// [`Session::reply`], failing unless the reply starts with `code`.
    fn expect(&mut self, command: Option<&str>, code: &str) -> std::io::Result<()> {
        let reply = self.reply(command)?;
        if reply.starts_with(code) {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "{}: {reply}",
                command.unwrap_or("greeting")
            )))
        }
    }
}

/// The reply code of an SMTP reply line, if it has one.
pub fn reply_code(reply: &str) -> Option<u16> {
    reply.get(..3)?.parse().ok()
}

/// Where the RCPT answer the probe heard differs from what `held` promises senders for
/// `recipient`: the code and enhanced code of the rule covering its domain while that
/// rule is TempFail or HardReject (MTAs may put their own words before its text), a 2xx
/// in every other case.
pub fn judge(held: &Held, recipient: &str, heard: &str) -> Option<Difference> {
    let domain = recipient_domain(recipient);
    let refusing = match held {
        Held::Incident { document } => document
            .rule_for(domain.as_deref())
            .filter(|rule| matches!(rule.mode, Mode::TempFail | Mode::HardReject)),
        _ => None,
    };
    let wanted = match refusing {
        Some(rule) => format!("{} {} ", rule.reply.code, rule.reply.enhanced_code),
        None => "2".to_string(),
    };
    (!heard.starts_with(&wanted)).then(|| Difference {
        kind: DriftKind::Answer,
        what: differs(
            &format!("RCPT TO:<{recipient}> answer"),
            Some(heard),
            Some(&format!("{}...", wanted.trim_end())),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::fixtures::{document, held};

    #[test]
    fn the_answer_heard_is_judged_against_the_state_applied() {
        let temp_fail = held(&document(Mode::TempFail, 452, "4.3.1"));
        let postfix = "452 4.3.1 <u@e2e.test>: Recipient address rejected: storage down";
        assert_eq!(judge(&temp_fail, "u@e2e.test", postfix), None);
        let accepted = judge(&temp_fail, "u@e2e.test", "250 2.1.5 Ok").unwrap();
        assert_eq!(accepted.kind, DriftKind::Answer);
        assert_eq!(
            accepted.what,
            "RCPT TO:<u@e2e.test> answer = \"250 2.1.5 Ok\", want \"452 4.3.1...\""
        );
        let reject = held(&document(Mode::HardReject, 550, "5.3.2"));
        assert!(judge(&reject, "u", "451 4.3.0 fallback").is_some());
        let queueing = held(&document(Mode::AcceptAndQueue, 452, "4.3.1"));
        assert_eq!(judge(&queueing, "u", "250 Accepted"), None);
        assert!(judge(&Held::Normal, "u", "550 5.1.1 unknown").is_some());
        assert_eq!(reply_code("452 4.3.1 x"), Some(452));
        // A scoped incident: the probe recipient's own domain decides.
        let scoped = held(&crate::agent::fixtures::rules(&[(
            Mode::TempFail,
            452,
            "4.3.1",
            &["pec.e2e.test"],
        )]));
        assert_eq!(judge(&scoped, "probe@e2e.test", "250 2.1.5 Ok"), None);
        assert!(judge(&scoped, "probe@e2e.test", "452 4.3.1 x").is_some());
        assert_eq!(judge(&scoped, "probe@PEC.e2e.test", "452 4.3.1 x"), None);
        assert!(judge(&scoped, "probe@pec.e2e.test", "250 2.1.5 Ok").is_some());
        assert_eq!(reply_code(""), None);
    }

    #[test]
    fn the_probe_asks_rcpt_and_sends_nothing() {
        let mta = fixtures::FakeSmtp::start("452 4.3.1 storage down");
        let probe = Probe {
            address: mta.address,
            recipient: "probe@e2e.test".into(),
        };
        assert_eq!(probe.ask().unwrap(), "452 4.3.1 storage down");
        assert_eq!(
            *mta.heard.lock().unwrap(),
            [
                "EHLO mail-incident-agent.localhost",
                "MAIL FROM:<>",
                "RCPT TO:<probe@e2e.test>",
                "RSET",
                "QUIT"
            ]
        );
    }
}

/// An SMTP server for the probe's tests.
#[cfg(test)]
pub mod fixtures {
    use std::{
        io::{BufRead, BufReader, Write},
        net::{SocketAddr, TcpListener},
        sync::{Arc, Mutex},
    };

    /// Serves SMTP sessions one after the other on a thread, answering RCPT with
    /// `rcpt_reply` (which a test may change) and anything else with 250, and records
    /// every command it hears.
    pub struct FakeSmtp {
        pub address: SocketAddr,
        pub rcpt_reply: Arc<Mutex<String>>,
        pub heard: Arc<Mutex<Vec<String>>>,
    }

    impl FakeSmtp {
        pub fn start(rcpt_reply: &str) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let fake = Self {
                address: listener.local_addr().unwrap(),
                rcpt_reply: Arc::new(Mutex::new(rcpt_reply.into())),
                heard: Arc::default(),
            };
            let (reply, heard) = (fake.rcpt_reply.clone(), fake.heard.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { return };
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut writer = stream;
                    writer.write_all(b"220 mx ESMTP\r\n").ok();
                    let mut line = String::new();
                    while reader.read_line(&mut line).unwrap_or(0) > 0 {
                        let command = line.trim_end().to_string();
                        line.clear();
                        let answer = match command.split(' ').next().unwrap_or("") {
                            "EHLO" => "250-mx\r\n250 PIPELINING".to_string(),
                            "RCPT" => reply.lock().unwrap().clone(),
                            "QUIT" => "221 bye".to_string(),
                            _ => "250 ok".to_string(),
                        };
                        // Recorded before the reply, so that a client holding the reply
                        // finds its command heard.
                        heard.lock().unwrap().push(command.clone());
                        writer.write_all(format!("{answer}\r\n").as_bytes()).ok();
                        if command == "QUIT" {
                            break;
                        }
                    }
                }
            });
            fake
        }
    }
}
