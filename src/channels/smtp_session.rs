//! One SMTP transaction on an open connection, pipelined when the server allows it (RFC 2920).
//!
//! lettre's `AsyncSmtpConnection::send` waits for the reply to `MAIL`, to each `RCPT` and to
//! `DATA` before it sends the next command, then sends the message and waits again: four round
//! trips per message. When the server's EHLO lists `PIPELINING`, [`send`] writes `MAIL`,
//! `RCPT` and `DATA` as one group, reads their three replies, then writes the message with its
//! closing `.` and reads the last reply: two round trips, two writes. The group ends at `DATA`
//! because RFC 2920 lets nothing follow a command that changes the session's state; the
//! message waits for the 354.
//!
//! The session stays on lettre's connection, which keeps doing the greeting, EHLO, STARTTLS,
//! AUTH and reply parsing: its `command` writes whatever its argument displays as, in one
//! write, and reads one reply, and its `read_response` reads the next one. So a group is one
//! `command` holding the three commands' text, then one `read_response` per further reply;
//! the message is one `command` too, dot-stuffed here as lettre's `message` does it. lettre's
//! `ServerInfo` keeps only the extensions lettre uses, so [`offers_pipelining`] asks once per
//! connection with an EHLO of its own. Without `PIPELINING`, or for an envelope or message
//! that is not ASCII (it needs `SMTPUTF8` or `8BITMIME`, which lettre negotiates), lettre's
//! own `send` runs, as before.

use lettre::Address;
use lettre::address::Envelope;
use lettre::transport::smtp::Error;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;

use super::DeliveryError;
use super::email::{classify, classify_reply};

/// The command a reply answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `MAIL FROM`: about the sender.
    Mail,
    /// `RCPT TO`: about the recipient.
    Rcpt,
    /// `DATA`, before the message: about the transaction.
    Data,
    /// The end of the message: about the message, and for a single recipient about it too.
    EndOfData,
}

/// Maps a reply that failed to what the dispatcher should do, by the command it answered.
/// Only a reply about the recipient can suppress the address: its `RCPT`, or the end of the
/// data (servers that check the mailbox late answer there, and the message has one
/// recipient). A `MAIL` or `DATA` refusal is about the sender or the session, whatever
/// enhanced code it carries, so it fails the message without suppressing anything.
pub fn refusal(phase: Phase, code: Option<u16>, reason: String) -> DeliveryError {
    match classify_reply(code, reason) {
        DeliveryError::Refused { reason } if matches!(phase, Phase::Mail | Phase::Data) => {
            DeliveryError::Permanent { reason }
        }
        other => other,
    }
}

/// Why a transaction failed, and how to let go of its connection.
#[derive(Debug)]
pub struct Failure {
    /// What to tell the dispatcher.
    pub error: DeliveryError,
    /// The server accepted `DATA` and waits for the message, so a `QUIT` would be read as
    /// part of it: close the socket without one (the server discards a message cut off).
    pub in_data: bool,
}

impl Failure {
    fn new(error: DeliveryError) -> Self {
        Self {
            error,
            in_data: false,
        }
    }
}

/// Sends EHLO again and tells whether the server lists `PIPELINING` (lettre's own EHLO
/// reply is not kept whole). Call it before AUTH, with no transaction open: an EHLO resets
/// the session's state (RFC 5321, 4.1.4).
///
/// # Errors
/// lettre's error for a refused EHLO or a broken connection.
pub async fn offers_pipelining(
    conn: &mut AsyncSmtpConnection,
    hello: &ClientId,
) -> Result<bool, Error> {
    let reply = conn.command(Ehlo::new(hello.clone())).await?;
    // The first line is the server's name, each further line one extension.
    Ok(reply.message().skip(1).any(|line| {
        line.split_whitespace()
            .next()
            .is_some_and(|keyword| keyword.eq_ignore_ascii_case("PIPELINING"))
    }))
}

/// Sends one message over `conn`: pipelined when `pipelining` (the server offers it, see
/// [`offers_pipelining`]), else with lettre's one command at a time. Returns the server's
/// reply to the end of the data.
///
/// # Errors
/// The first refusal among the replies, mapped by [`refusal`]; a transient error when the
/// connection broke or a reply did not parse. After an error the connection must be closed
/// (see [`Failure::in_data`]), never reused.
pub async fn send(
    conn: &mut AsyncSmtpConnection,
    pipelining: bool,
    envelope: &Envelope,
    body: &[u8],
) -> Result<Response, Failure> {
    let ascii_addresses = envelope
        .from()
        .into_iter()
        .chain(envelope.to())
        .all(|address| AsRef::<str>::as_ref(address).is_ascii());
    let text = std::str::from_utf8(body)
        .ok()
        .filter(|text| text.is_ascii());
    let (true, true, Some(text)) = (pipelining, ascii_addresses, text) else {
        return conn
            .send(envelope, body)
            .await
            .map_err(|e| Failure::new(classify(&e)));
    };
    let phases = std::iter::once(Phase::Mail)
        .chain(envelope.to().iter().map(|_| Phase::Rcpt))
        .chain(std::iter::once(Phase::Data));
    // The group in one write; the first reply is MAIL's.
    let mut mail_reply = Some(conn.command(group(envelope.from(), envelope.to())).await);
    // Every reply of the group is read, even after a refusal (RFC 2920: the client must
    // check them all); the first refusal is the one reported.
    let mut first_refusal = None;
    let mut data_accepted = false;
    for phase in phases {
        let reply = match mail_reply.take() {
            Some(reply) => reply,
            None => conn.read_response().await,
        };
        match reply {
            Ok(_) => data_accepted = phase == Phase::Data,
            Err(e) => match e.status() {
                // No reply: the connection broke or the server said something unreadable,
                // and the replies still due cannot be told apart any more.
                None => return Err(Failure::new(classify(&e))),
                Some(code) => {
                    first_refusal
                        .get_or_insert_with(|| refusal(phase, Some(code.into()), e.to_string()));
                }
            },
        }
    }
    if let Some(error) = first_refusal {
        // A server may accept DATA after refusing every recipient (RFC 2920 warns of it).
        return Err(Failure {
            error,
            in_data: data_accepted,
        });
    }
    // The message and its end in one write (lettre's `message` makes them two).
    conn.command(data_lines(text)).await.map_err(|e| {
        Failure::new(match e.status() {
            Some(code) => refusal(Phase::EndOfData, Some(code.into()), e.to_string()),
            None => classify(&e),
        })
    })
}

/// A message as `DATA` carries it: a line that starts with `.` gets another one (RFC 5321,
/// 4.5.2), and CRLF `.` CRLF ends it — the bytes lettre's `message` sends. Built at its
/// final size, and handed to `command` by value, which then copies it once.
fn data_lines(message: &str) -> String {
    const END: &str = "\r\n.\r\n";
    let mut data = String::with_capacity(message.len() + END.len() + 16);
    let mut rest = message;
    if rest.starts_with('.') {
        data.push('.');
    }
    while let Some(at) = rest.find("\r\n.") {
        // Up to the line's start; the line itself, dot first, goes out with what follows.
        let (line_end, next) = rest.split_at(at + 2);
        data.push_str(line_end);
        data.push('.');
        rest = next;
    }
    data.push_str(rest);
    data.push_str(END);
    data
}

/// The text of `MAIL`, each `RCPT` and `DATA`, each line ending in CRLF, sent as one write.
fn group(from: Option<&Address>, to: &[Address]) -> String {
    let mut group = Mail::new(from.cloned(), Vec::new()).to_string();
    for recipient in to {
        group.push_str(&Rcpt::new(recipient.clone(), Vec::new()).to_string());
    }
    group.push_str(&Data.to_string());
    group
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::channels::email::SmtpChannel;
    use crate::store::Payload;

    /// One step of a scripted server: read until what arrived since the last reply ends with
    /// `until`, answering nothing before; then write `reply` in one write.
    type Step = (&'static str, String);

    /// The greeting's and both EHLOs' steps (lettre's, then [`offers_pipelining`]'s).
    fn hello(pipelining: bool) -> Vec<Step> {
        let extensions = if pipelining {
            "250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
        } else {
            "250-sink\r\n250 8BITMIME\r\n"
        };
        vec![("\r\n", extensions.into()), ("\r\n", extensions.into())]
    }

    /// A server for one connection that greets and plays `steps`. Its result is what arrived
    /// before each reply, then everything that arrived after the last one until the client
    /// closed (a `QUIT` is answered 221).
    async fn scripted_server(steps: Vec<Step>) -> (u16, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            socket.write_all(b"220 sink ESMTP\r\n").await.unwrap();
            let mut received = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            for (until, reply) in steps {
                let mut pending = String::new();
                while !pending.ends_with(until) {
                    let n = socket.read(&mut buf).await.unwrap();
                    assert!(
                        n > 0,
                        "the client closed while the server waited for {until:?}: {pending:?}"
                    );
                    pending.push_str(std::str::from_utf8(&buf[..n]).unwrap());
                }
                received.push(pending);
                socket.write_all(reply.as_bytes()).await.unwrap();
            }
            let mut tail = String::new();
            loop {
                let n = socket.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                tail.push_str(std::str::from_utf8(&buf[..n]).unwrap());
                if tail.ends_with("QUIT\r\n") {
                    let _ = socket.write_all(b"221 Bye\r\n").await;
                }
            }
            received.push(tail);
            received
        });
        (port, server)
    }

    fn channel(port: u16) -> SmtpChannel {
        SmtpChannel::new(
            &format!("smtp://127.0.0.1:{port}?tls=off"),
            "Acme <news@acme.example>",
            1,
        )
        .unwrap()
    }

    fn welcome(to: &str) -> Payload {
        Payload::Email {
            to: to.into(),
            from: None,
            reply_to: None,
            subject: "Welcome".into(),
            html: "<p>Hi</p>".into(),
            text: "Hi\n.\nBye".into(),
            unsubscribe: "https://t.example/u/tok".into(),
        }
    }

    /// Sends `key` to `to`, failing the test if the client gets stuck (it waits for a reply
    /// the server holds back until the whole group has arrived).
    async fn send(
        channel: &SmtpChannel,
        key: &str,
        to: &str,
    ) -> Result<Option<String>, DeliveryError> {
        tokio::time::timeout(Duration::from_secs(10), channel.send(key, &welcome(to)))
            .await
            .expect("the client sent the whole group without waiting for a reply")
            .map(|delivered| delivered.provider_id)
    }

    const GROUP: &str = "MAIL FROM:<news@acme.example>\r\nRCPT TO:<ada@example.com>\r\nDATA\r\n";
    const ACCEPTED: &str =
        "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n";

    #[tokio::test]
    async fn with_pipelining_mail_rcpt_and_data_arrive_together_before_any_reply() {
        let mut steps = hello(true);
        for n in 1..=2 {
            steps.push(("DATA\r\n", ACCEPTED.into()));
            steps.push(("\r\n.\r\n", format!("250 2.0.0 Ok: queued as Q{n}\r\n")));
        }
        let (port, server) = scripted_server(steps).await;
        let channel = channel(port);
        assert_eq!(
            send(&channel, "k1", "ada@example.com").await,
            Ok(Some("2.0.0 Ok: queued as Q1".into()))
        );
        // The same connection, back from the pool, pipelines the next message too.
        assert_eq!(
            send(&channel, "k2", "ada@example.com").await,
            Ok(Some("2.0.0 Ok: queued as Q2".into()))
        );
        drop(channel);
        let received = server.await.unwrap();
        assert!(
            received[0].starts_with("EHLO ") && received[1].starts_with("EHLO "),
            "{received:?}"
        );
        for (group, message, key) in [(2, 3, "k1"), (4, 5, "k2")] {
            assert_eq!(
                received[group], GROUP,
                "one group, nothing answered before it ended"
            );
            let message = &received[message];
            assert!(
                message.contains(&format!("Message-ID: <{key}@acme.example>\r\n")),
                "{message}"
            );
            assert!(message.contains("\r\n..\r\n"), "dot-stuffed: {message}");
        }
        assert_eq!(received[6], "", "nothing after the last message");
    }

    #[tokio::test]
    async fn a_refused_recipient_in_a_pipelined_group_is_refused_with_its_code() {
        let mut steps = hello(true);
        steps.push((
            "DATA\r\n",
            "250 2.1.0 Ok\r\n550 5.1.1 <gone@example.com>: Recipient address rejected\r\n554 5.5.1 Error: no valid recipients\r\n".into(),
        ));
        let (port, server) = scripted_server(steps).await;
        let err = send(&channel(port), "k1", "gone@example.com")
            .await
            .unwrap_err();
        let DeliveryError::Refused { reason } = &err else {
            panic!("a 550 5.1.1 at RCPT refuses the address: {err:?}");
        };
        assert!(
            reason.contains("550") && reason.contains("5.1.1 <gone@example.com>"),
            "{reason}"
        );
        let received = server.await.unwrap();
        assert_eq!(received[2], GROUP.replace("ada@", "gone@"));
        assert_eq!(
            received[3], "QUIT\r\n",
            "no message, and the connection is closed"
        );
    }

    #[tokio::test]
    async fn replies_in_a_pipelined_group_map_by_the_command_they_answer() {
        for (replies, expected) in [
            // A MAIL refusal is about the sender, whatever its code says: no suppression.
            (
                "553 5.1.1 <news@acme.example>: unknown sender\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n",
                "permanent",
            ),
            (
                "250 Ok\r\n450 4.2.1 <ada@example.com>: mailbox busy\r\n554 5.5.1 no valid recipients\r\n",
                "transient",
            ),
            (
                "250 Ok\r\n250 Ok\r\n554 5.1.1 transaction failed\r\n",
                "permanent",
            ),
            (
                "421 4.3.2 closing\r\n421 4.3.2 closing\r\n421 4.3.2 closing\r\n",
                "transient",
            ),
        ] {
            let mut steps = hello(true);
            steps.push(("DATA\r\n", replies.into()));
            let (port, server) = scripted_server(steps).await;
            let err = send(&channel(port), "k1", "ada@example.com")
                .await
                .unwrap_err();
            let got = match err {
                DeliveryError::Refused { .. } => "refused",
                DeliveryError::Permanent { .. } => "permanent",
                DeliveryError::Transient { .. } => "transient",
            };
            assert_eq!(got, expected, "{replies}");
            assert_eq!(server.await.unwrap()[3], "QUIT\r\n", "{replies}");
        }
    }

    #[tokio::test]
    async fn a_server_that_accepts_data_after_refusing_every_recipient_gets_no_message_and_no_quit()
    {
        let mut steps = hello(true);
        steps.push((
            "DATA\r\n",
            "250 Ok\r\n550 5.1.1 <gone@example.com>: no such user\r\n354 go ahead\r\n".into(),
        ));
        let (port, server) = scripted_server(steps).await;
        let err = send(&channel(port), "k1", "gone@example.com")
            .await
            .unwrap_err();
        assert!(matches!(err, DeliveryError::Refused { .. }), "{err:?}");
        // A QUIT now would be taken as the message's first line: the socket just closes.
        assert_eq!(server.await.unwrap()[3], "");
    }

    #[tokio::test]
    async fn without_pipelining_each_command_waits_for_its_reply() {
        let mut steps = hello(false);
        steps.push(("\r\n", "250 2.1.0 Ok\r\n".into()));
        steps.push(("\r\n", "250 2.1.5 Ok\r\n".into()));
        steps.push(("\r\n", "354 go ahead\r\n".into()));
        steps.push(("\r\n.\r\n", "250 2.0.0 Ok: queued as Q1\r\n".into()));
        let (port, server) = scripted_server(steps).await;
        let channel = channel(port);
        assert_eq!(
            send(&channel, "k1", "ada@example.com").await,
            Ok(Some("2.0.0 Ok: queued as Q1".into()))
        );
        drop(channel);
        let received = server.await.unwrap();
        assert_eq!(
            received[2..5],
            [
                "MAIL FROM:<news@acme.example>\r\n",
                "RCPT TO:<ada@example.com>\r\n",
                "DATA\r\n"
            ],
            "one command per reply"
        );
        assert!(
            received[5].contains("Message-ID: <k1@acme.example>\r\n"),
            "{}",
            received[5]
        );
    }

    #[test]
    fn a_group_is_mail_each_rcpt_and_data_in_one_text() {
        let from: Address = "news@acme.example".parse().unwrap();
        let to: Vec<Address> = vec!["ada@example.com".parse().unwrap()];
        assert_eq!(
            group(Some(&from), &to),
            "MAIL FROM:<news@acme.example>\r\nRCPT TO:<ada@example.com>\r\nDATA\r\n"
        );
        assert_eq!(
            group(None, &to),
            "MAIL FROM:<>\r\nRCPT TO:<ada@example.com>\r\nDATA\r\n"
        );
    }

    #[test]
    fn a_message_is_dot_stuffed_and_ended_as_lettre_does() {
        for (message, data) in [
            ("Hi\r\n", "Hi\r\n\r\n.\r\n"),
            (".\r\n", "..\r\n\r\n.\r\n"),
            (
                "a\r\n.b\r\n..c\r\nd.e\r\n",
                "a\r\n..b\r\n...c\r\nd.e\r\n\r\n.\r\n",
            ),
            ("a\r\n.", "a\r\n..\r\n.\r\n"),
            // Only CRLF starts a line, as in lettre's codec.
            ("a\n.b\r.c\r\r\n.d", "a\n.b\r.c\r\r\n..d\r\n.\r\n"),
            ("", "\r\n.\r\n"),
        ] {
            assert_eq!(data_lines(message), data, "{message:?}");
        }
    }

    #[test]
    fn only_a_reply_about_the_recipient_suppresses_it() {
        let no_such_user = "permanent error (550): 5.1.1 <gone@example.com>: no such user";
        for (phase, code, reason, expected) in [
            (Phase::Rcpt, 550, no_such_user, "refused"),
            (Phase::EndOfData, 550, no_such_user, "refused"),
            (Phase::Mail, 550, no_such_user, "permanent"),
            (Phase::Data, 554, no_such_user, "permanent"),
            (
                Phase::Mail,
                553,
                "permanent error (553): 5.1.8 bad sender",
                "permanent",
            ),
            (
                Phase::Rcpt,
                550,
                "permanent error (550): 5.7.1 relaying denied",
                "permanent",
            ),
            (
                Phase::Rcpt,
                450,
                "transient error (450): 4.2.1 mailbox busy",
                "transient",
            ),
            (
                Phase::Mail,
                421,
                "transient error (421): 4.3.2 closing",
                "transient",
            ),
            (
                Phase::EndOfData,
                451,
                "transient error (451): 4.3.0 try again",
                "transient",
            ),
        ] {
            let got = match refusal(phase, Some(code), reason.to_owned()) {
                DeliveryError::Refused { .. } => "refused",
                DeliveryError::Permanent { .. } => "permanent",
                DeliveryError::Transient { .. } => "transient",
            };
            assert_eq!(got, expected, "{phase:?} {reason}");
        }
    }
}
