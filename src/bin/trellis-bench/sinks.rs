//! The receiving ends of delivery: postfix's `smtp-sink` as the SMTP server, and a
//! Twilio-style HTTP server that accepts every message.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;

use crate::workload::free_port;

/// A running `smtp-sink`, stopped on drop.
pub struct SmtpSink {
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Child,
}

impl SmtpSink {
    /// Starts `smtp-sink` (Debian package postfix) on a free port and waits until it
    /// accepts connections.
    pub fn start() -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut command = Command::new("smtp-sink");
        // As root, smtp-sink insists on dropping privileges to a named user.
        if std::env::var("USER").as_deref() == Ok("root") || is_root() {
            command.args(["-u", "nobody"]);
        }
        let child = command
            .args([&format!("127.0.0.1:{port}"), "1024"])
            .stdout(Stdio::null())
            .spawn()
            .context("starting smtp-sink (install the Debian package postfix)")?;
        let sink = Self { port, child };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(sink);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("smtp-sink did not start listening on port {port}")
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Twilio-style `Messages.json` endpoint that counts what it accepts.
pub struct SmsServer {
    /// Base URL, such as `http://127.0.0.1:1234`.
    pub base: String,
    /// Messages accepted.
    pub accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SmsServer {
    /// Starts it on a free port.
    pub async fn start() -> anyhow::Result<Self> {
        async fn messages(
            State(count): State<Arc<AtomicUsize>>,
            body: String,
        ) -> (StatusCode, String) {
            if !body.contains("To=") || !body.contains("Body=") {
                return (
                    StatusCode::BAD_REQUEST,
                    r#"{"code":21604,"message":"To and Body are required"}"#.into(),
                );
            }
            let n = count.fetch_add(1, Ordering::Relaxed) + 1;
            (
                StatusCode::CREATED,
                format!(r#"{{"sid":"SM{n:032}","status":"queued"}}"#),
            )
        }
        let accepted = Arc::new(AtomicUsize::new(0));
        let app = Router::new()
            .route("/2010-04-01/Accounts/{sid}/Messages.json", post(messages))
            .with_state(accepted.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            base,
            accepted,
            task,
        })
    }

    /// Messages accepted so far.
    pub fn count(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for SmsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
