//! A small pool of SMTP connections whose sockets have `TCP_NODELAY` set.
//!
//! lettre's own pool opens its sockets itself and leaves Nagle's algorithm on. lettre writes
//! a message body and its closing `\r\n.\r\n` as two writes, so the second one waits for the
//! server's delayed ACK: about 40 ms per message on every connection, whatever the server's
//! speed. This pool opens the TCP connection itself, sets `TCP_NODELAY`, and hands the socket
//! to lettre's connection (EHLO, STARTTLS, AUTH); each message is one
//! [`smtp_session::send`], pipelined when the server offers it.
//!
//! Implicit TLS (`smtps://`) stays on lettre's transport: there the TLS handshake must come
//! before the greeting, which lettre does only on sockets it opens.

use std::time::Duration;

use tokio::time::Instant;

use lettre::Message;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use tokio::net::TcpStream;

use super::email::classify;
use super::{DeliveryError, smtp_session};

/// How long a connection being closed after a failure may take to answer its `QUIT`.
const GOODBYE: Duration = Duration::from_secs(1);

/// Connections idle longer than this are checked with `NOOP` before reuse; servers drop
/// idle clients after a while and a dead socket should not cost a retry.
const CHECK_AFTER_IDLE: Duration = Duration::from_secs(5);

/// What to do about TLS on a plain `smtp://` connection.
#[derive(Clone)]
pub enum StartTls {
    /// Never upgrade.
    Off,
    /// Upgrade when the server offers STARTTLS.
    Opportunistic(TlsParameters),
    /// Refuse to send unless the server offers STARTTLS.
    Required(TlsParameters),
}

/// Where and how to connect.
#[derive(Clone)]
pub struct SmtpTarget {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// STARTTLS mode.
    pub tls: StartTls,
    /// `AUTH` credentials, if any.
    pub credentials: Option<Credentials>,
    /// The EHLO name.
    pub hello: ClientId,
    /// Limit on connecting and on each whole message.
    pub timeout: Duration,
}

/// The `AUTH` mechanisms Trellis offers, in order of preference.
const MECHANISMS: [Mechanism; 2] = [Mechanism::Plain, Mechanism::Login];

/// Why a connection could not be opened and logged in.
#[derive(Debug)]
pub enum Refusal {
    /// The settings cannot work with this server: retrying will not help until they change.
    Misconfigured(String),
    /// The server could not be reached or refused for now.
    Failed(DeliveryError),
}

/// An open, logged-in connection.
struct Session {
    conn: AsyncSmtpConnection,
    /// The server offers `PIPELINING` (RFC 2920) on it.
    pipelining: bool,
}

/// Open connections kept for reuse; at most `max_idle` of them.
pub struct NodelayPool {
    target: SmtpTarget,
    idle: std::sync::Mutex<Vec<(Session, Instant)>>,
    max_idle: usize,
}

impl NodelayPool {
    /// A pool that keeps up to `max_idle` open connections between messages.
    pub fn new(target: SmtpTarget, max_idle: usize) -> Self {
        Self {
            target,
            idle: std::sync::Mutex::new(Vec::new()),
            max_idle: max_idle.max(1),
        }
    }

    /// Sends one message over a pooled or new connection, pipelined when the server offers
    /// it ([`smtp_session::send`]), and returns the server's reply text. A connection that
    /// fails is closed, never returned to the pool.
    ///
    /// # Errors
    /// Transient for connection problems, timeouts and 4xx replies; permanent for 5xx;
    /// refused for a 5xx about the recipient's address.
    pub async fn send(&self, message: &Message) -> Result<Vec<String>, DeliveryError> {
        let envelope = message.envelope().clone();
        let body = message.formatted();
        let mut session = self.checkout().await?;
        let sent = tokio::time::timeout(
            self.target.timeout,
            smtp_session::send(&mut session.conn, session.pipelining, &envelope, &body),
        )
        .await;
        match sent {
            Ok(Ok(response)) => {
                self.checkin(session);
                Ok(response.message().map(str::to_owned).collect())
            }
            Ok(Err(failure)) => {
                if !failure.in_data {
                    say_goodbye(session.conn).await;
                }
                // Else dropped: the socket closes without a QUIT the server would take as data.
                Err(failure.error)
            }
            // Dropped: a server that does not answer would not answer a QUIT either.
            Err(_) => Err(DeliveryError::transient(format!(
                "the SMTP server did not answer within {:?}",
                self.target.timeout
            ))),
        }
    }

    async fn checkout(&self) -> Result<Session, DeliveryError> {
        loop {
            let taken = self.idle.lock().map(|mut idle| idle.pop()).ok().flatten();
            let Some((mut session, since)) = taken else {
                return self.connect().await;
            };
            if session.conn.has_broken() {
                continue;
            }
            if since.elapsed() < CHECK_AFTER_IDLE || session.conn.test_connected().await {
                return Ok(session);
            }
            session.conn.abort().await;
        }
    }

    fn checkin(&self, session: Session) {
        if session.conn.has_broken() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.max_idle
        {
            idle.push((session, Instant::now()));
        }
        // A full pool drops the connection; the server sees the socket close.
    }

    async fn connect(&self) -> Result<Session, DeliveryError> {
        self.connect_checked()
            .await
            .map_err(|refusal| match refusal {
                Refusal::Misconfigured(reason) => {
                    // Not the message's fault: keep it (retried with backoff) and say so loudly.
                    tracing::error!(%reason, "The SMTP settings do not work with this server.");
                    DeliveryError::transient(reason)
                }
                Refusal::Failed(err) => err,
            })
    }

    /// Connects once and logs in, telling a configuration problem (no usable `AUTH`
    /// mechanism, credentials refused) apart from a server that is merely unreachable.
    ///
    /// # Errors
    /// [`Refusal::Misconfigured`] or [`Refusal::Failed`].
    pub async fn probe(&self) -> Result<(), Refusal> {
        let mut session = self.connect_checked().await?;
        let _ = session.conn.quit().await;
        Ok(())
    }

    async fn connect_checked(&self) -> Result<Session, Refusal> {
        let target = &self.target;
        let what = format!("connecting to {}:{}", target.host, target.port);
        // Nothing said while connecting is about one recipient: never suppress for it.
        let failed = |e: DeliveryError| {
            Refusal::Failed(match e {
                DeliveryError::Refused { reason } => DeliveryError::permanent(reason),
                other => other,
            })
        };
        let connecting = async {
            let tcp = TcpStream::connect((target.host.as_str(), target.port))
                .await
                .map_err(|e| failed(DeliveryError::transient(format!("{what}: {e}"))))?;
            tcp.set_nodelay(true)
                .map_err(|e| failed(DeliveryError::transient(format!("{what}: {e}"))))?;
            let mut conn =
                AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &target.hello)
                    .await
                    .map_err(|e| failed(classify(&e)))?;
            match &target.tls {
                StartTls::Off => {}
                StartTls::Opportunistic(params) | StartTls::Required(params)
                    if conn.can_starttls() =>
                {
                    conn.starttls(params.clone(), &target.hello)
                        .await
                        .map_err(|e| failed(classify(&e)))?;
                }
                StartTls::Opportunistic(_) => {}
                StartTls::Required(_) => {
                    conn.abort().await;
                    return Err(Refusal::Misconfigured(format!(
                        "{}:{} does not offer STARTTLS, which the SMTP URL requires (tls=required)",
                        target.host, target.port
                    )));
                }
            }
            // Before AUTH: this EHLO resets the session.
            let pipelining = smtp_session::offers_pipelining(&mut conn, &target.hello)
                .await
                .map_err(|e| failed(classify(&e)))?;
            if let Some(credentials) = &target.credentials {
                let usable: Vec<Mechanism> = MECHANISMS
                    .into_iter()
                    .filter(|m| conn.server_info().supports_auth_mechanism(*m))
                    .collect();
                if usable.is_empty() {
                    let offered = conn.server_info().to_string();
                    conn.abort().await;
                    return Err(Refusal::Misconfigured(format!(
                        "{}:{} offers no authentication mechanism Trellis can use (PLAIN or LOGIN), but the SMTP URL has a user and password; the server says: {offered}. Check the port, and whether AUTH needs TLS first (tls=required or smtps://)",
                        target.host, target.port
                    )));
                }
                if let Err(e) = conn.auth(&usable, credentials).await {
                    conn.abort().await;
                    return Err(match e.status().map(u16::from) {
                        Some(code) if !super::email::reply_is_transient(code) => {
                            Refusal::Misconfigured(format!(
                                "{}:{} refused the SMTP URL's user and password: {e}",
                                target.host, target.port
                            ))
                        }
                        _ => failed(classify(&e)),
                    });
                }
            }
            Ok(Session { conn, pipelining })
        };
        tokio::time::timeout(target.timeout, connecting)
            .await
            .unwrap_or_else(|_| {
                Err(failed(DeliveryError::transient(format!(
                    "{what}: no answer within {:?}",
                    target.timeout
                ))))
            })
    }
}

/// Closes a connection after a failure: `QUIT` if the server still answers within
/// [`GOODBYE`], then the socket.
async fn say_goodbye(mut conn: AsyncSmtpConnection) {
    let _ = tokio::time::timeout(GOODBYE, conn.abort()).await;
}
