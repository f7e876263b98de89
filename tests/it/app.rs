//! The runtime in-process for black-box tests: a real SQLite file, the real scheduler and
//! dispatcher driven with a manual clock, the API through `Router::oneshot`, and real local
//! servers for SMTP (aiosmtpd) and a Twilio-shaped SMS API.
//!
//! With `TRELLIS_TEST_STORE=postgres`, every app opens a fresh schema of the test PostgreSQL
//! instead of the SQLite file (`./test.sh` plays the runtime modules a second time so).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use clap::Parser;
use jiff::{SignedDuration, Timestamp};
use serde_json::Value;
use tower::ServiceExt;
use trellis::channels::dispatch::{self, DrainReport};
use trellis::cli::serve::{Service, build};
use trellis::clock::{Clock, ManualClock};
use trellis::config::ServeConfig;
use trellis::scheduler::{self, TickReport};

use crate::helpers::root;

/// The bearer token test apps use.
pub const TOKEN: &str = "test-token-0123456789abcdef";

#[derive(Parser)]
#[command(args_override_self = true)]
struct Flags {
    #[command(flatten)]
    config: ServeConfig,
}

/// A running app.
pub struct TestApp {
    pub service: Service,
    pub clock: Arc<ManualClock>,
    pub router: Router,
    pub outbox: PathBuf,
    _dir: tempfile::TempDir,
    _schema: Option<trellis::store::testing::TempSchema>,
}

/// Whether test apps run on PostgreSQL (`TRELLIS_TEST_STORE=postgres`) instead of SQLite.
pub fn on_postgres() -> bool {
    std::env::var("TRELLIS_TEST_STORE").is_ok_and(|v| v == "postgres")
}

/// Starts the app on a fresh database with the shipped workflows and templates, plus
/// `extra` flags (such as `--smtp-url`).
pub async fn spawn_app(extra: &[&str]) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    spawn_app_in(dir, extra).await
}

/// Starts the app with its database in `dir` (kept alive by the app); later flags in `extra`
/// override the defaults, such as `--workflows`.
pub async fn spawn_app_in(dir: tempfile::TempDir, extra: &[&str]) -> TestApp {
    let (db_url, schema) = if on_postgres() {
        let (url, schema) = trellis::store::testing::temp_postgres_url().await;
        (url, Some(schema))
    } else {
        let path = dir.path().join("trellis.db");
        (format!("sqlite://{}", path.display()), None)
    };
    let outbox = dir.path().join("outbox");
    let mut args: Vec<String> = [
        "trellis",
        "--database-url",
        &db_url,
        "--api-token",
        TOKEN,
        "--public-url",
        "https://trellis.test",
        "--outbox",
        outbox.to_str().unwrap(),
        "--workflows",
        root().join("workflows").to_str().unwrap(),
        "--templates",
        root().join("templates").to_str().unwrap(),
        "--from",
        "Acme <news@acme.test>",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let config = Flags::try_parse_from(args)
        .expect("test flags parse")
        .config;
    let clock = Arc::new(ManualClock::new("2026-03-02T15:00:00Z".parse().unwrap()));
    let service = build(&config, clock.clone()).await.expect("the app builds");
    let router = trellis::api::router(service.api.clone());
    TestApp {
        service,
        clock,
        router,
        outbox,
        _dir: dir,
        _schema: schema,
    }
}

/// Builds the service from `flags` and returns the refusal it starts with, if any.
pub async fn build_error(flags: &[&str]) -> Option<String> {
    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        config: trellis::config::ServeConfig,
    }
    use clap::Parser;
    let clock = std::sync::Arc::new(trellis::clock::ManualClock::new(
        "2026-01-01T00:00:00Z".parse().unwrap(),
    ));
    let args = ["trellis", "--database-url", "sqlite::memory:"]
        .iter()
        .chain(flags);
    let config = Flags::try_parse_from(args).unwrap().config;
    trellis::cli::serve::build(&config, clock)
        .await
        .err()
        .map(|e| e.to_string())
}

impl TestApp {
    /// How many rows `table` holds, on either database.
    pub async fn count_rows(&self, table: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        let store = &self.service.api.store;
        match store.postgres_pool() {
            Some(pool) => sqlx::query_scalar(&sql).fetch_one(pool).await.unwrap(),
            None => sqlx::query_scalar(&sql)
                .fetch_one(store.sqlite_pool().expect("SQLite or PostgreSQL"))
                .await
                .unwrap(),
        }
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: SignedDuration) {
        self.clock.set(self.now().checked_add(by).unwrap());
    }

    /// A request with the token; returns the status and the JSON body (or Null).
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.raw(
            method,
            path,
            Some(TOKEN),
            "application/json",
            body.map(|b| b.to_string()).unwrap_or_default(),
        )
        .await
    }

    /// A request with full control over token, content type and body.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: String,
    ) -> (StatusCode, Value) {
        let authorization = token.map(|t| format!("Bearer {t}"));
        self.request(method, path, authorization, content_type, body)
            .await
    }

    /// A request with any `Authorization` header (Bearer, Basic, or none); the body comes
    /// back as JSON, or as a JSON string when it is not JSON (HTML pages, TwiML).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        authorization: Option<String>,
        content_type: &str,
        body: String,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", content_type);
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        let response = self
            .router
            .clone()
            .oneshot(request.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned())),
        )
    }

    /// Runs the scheduler and the dispatcher at the current time until neither has work.
    pub async fn settle(&self) -> (TickReport, DrainReport) {
        let mut ticks = TickReport::default();
        let mut drains = DrainReport::default();
        for _ in 0..50 {
            let t = scheduler::tick(&self.service.scheduler, self.now())
                .await
                .unwrap();
            let d = dispatch::drain(&self.service.dispatcher, self.now())
                .await
                .unwrap();
            ticks.events += t.events;
            ticks.woken += t.woken;
            ticks.fired += t.fired;
            ticks.messages += t.messages;
            ticks.next_wake = t.next_wake;
            drains.sent += d.sent;
            drains.retried += d.retried;
            drains.failed += d.failed;
            if t.events + t.woken + t.fired == 0 && d.attempted() == 0 {
                break;
            }
        }
        (ticks, drains)
    }

    /// Files in the outbox folder, sorted.
    pub fn outbox_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.outbox)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

/// A real SMTP server (aiosmtpd) in a child process.
pub struct SmtpSink {
    child: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl SmtpSink {
    pub fn start() -> SmtpSink {
        let dir = tempfile::tempdir().unwrap();
        let python = std::env::var("TRELLIS_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = Command::new(python)
            .arg(root().join("tests/support/smtp_sink.py"))
            .arg(dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs (./test.sh installs aiosmtpd in a virtual environment)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                panic!("the SMTP sink did not start: {line:?} (run the tests with ./test.sh, which installs aiosmtpd)")
            });
        SmtpSink { child, dir, port }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every message received, as raw text, in arrival order.
    pub fn messages(&self) -> Vec<String> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap())
            .collect()
    }

    /// While failing, the server answers 451 to every message.
    pub fn set_failing(&self, failing: bool) {
        self.fail_with(failing.then_some(""));
    }

    /// How many times each `Message-ID` arrived, by its header line.
    pub fn message_ids(&self) -> std::collections::BTreeMap<String, usize> {
        let mut by_id = std::collections::BTreeMap::new();
        for mail in self.messages() {
            let id = mail
                .lines()
                .find(|l| l.starts_with("Message-ID:"))
                .unwrap_or_default()
                .to_owned();
            *by_id.entry(id).or_insert(0) += 1;
        }
        by_id
    }

    /// While `Some(ms)`, every message is answered `ms` milliseconds late.
    pub fn slow(&self, ms: Option<u64>) {
        let flag = self.dir.path().join("SLOW");
        match ms {
            Some(ms) => std::fs::write(flag, ms.to_string()).unwrap(),
            None => {
                let _ = std::fs::remove_file(flag);
            }
        }
    }

    /// While `Some(reply)`, every message is answered with `reply` (empty: a 451).
    pub fn fail_with(&self, reply: Option<&str>) {
        let flag = self.dir.path().join("FAIL");
        match reply {
            Some(reply) => std::fs::write(flag, reply).unwrap(),
            None => {
                let _ = std::fs::remove_file(flag);
            }
        }
    }

    /// Refuses these addresses at RCPT with 550 5.1.1.
    pub fn reject(&self, addresses: &[&str]) {
        std::fs::write(self.dir.path().join("REJECT"), addresses.join("\n")).unwrap();
    }

    /// The next message is stored and the connection dropped before the server's 250.
    pub fn drop_after_next_data(&self) {
        std::fs::write(self.dir.path().join("DROP_ONCE"), "").unwrap();
    }

    /// From now on, EHLO does not offer PIPELINING (it does by default).
    pub fn without_pipelining(&self) {
        std::fs::write(self.dir.path().join("NO_PIPELINING"), "").unwrap();
    }

    /// For each RCPT received, in order: `"pipelined"` when the client had already sent
    /// DATA before the RCPT was answered, else `"waited"`.
    pub fn rcpt_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("RCPT_LOG"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A well-formed number the Twilio-shaped server refuses with 400, as Twilio does for a
/// number it cannot reach (error 21211).
pub const INVALID_NUMBER: &str = "+19999999999";

/// One request received by the Twilio-shaped server.
#[derive(Debug, Clone)]
pub struct SmsRequest {
    pub path: String,
    pub authorization: Option<String>,
    pub idempotency: Option<String>,
    pub form: Vec<(String, String)>,
}

/// A local HTTP server speaking Twilio's Messages API; answers 503 to the first
/// `fail_first` requests.
pub struct TwilioServer {
    pub base: String,
    pub received: Arc<Mutex<Vec<SmsRequest>>>,
}

/// How the Twilio-shaped server refuses its first requests.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: StatusCode,
    pub retry_after: Option<String>,
}

impl TwilioServer {
    pub async fn start(fail_first: usize) -> TwilioServer {
        Self::start_refusing(
            fail_first,
            Refusal {
                status: StatusCode::SERVICE_UNAVAILABLE,
                retry_after: None,
            },
        )
        .await
    }

    /// The `serve` flags that send SMS through this server.
    pub fn flags(&self) -> [&str; 6] {
        [
            "--twilio-base-url",
            &self.base,
            "--twilio-account-sid",
            "AC1",
            "--twilio-auth-token",
            "t",
        ]
    }

    /// Refuses the first `fail_first` requests as `refusal` says (a 429 with `Retry-After`).
    pub async fn start_refusing(fail_first: usize, refusal: Refusal) -> TwilioServer {
        use axum::extract::{Path, State};
        use axum::http::HeaderMap;
        use axum::routing::post;
        let received: Arc<Mutex<Vec<SmsRequest>>> = Arc::default();
        let state = (
            received.clone(),
            Arc::new(Mutex::new(fail_first)),
            Arc::new(refusal),
        );
        type S = (Arc<Mutex<Vec<SmsRequest>>>, Arc<Mutex<usize>>, Arc<Refusal>);
        async fn messages(
            State((received, failures, refusal)): State<S>,
            Path(sid): Path<String>,
            headers: HeaderMap,
            body: String,
        ) -> (StatusCode, HeaderMap, String) {
            {
                let mut left = failures.lock().unwrap();
                if *left > 0 {
                    *left -= 1;
                    let mut refused = HeaderMap::new();
                    if let Some(after) = &refusal.retry_after {
                        refused.insert("retry-after", after.parse().unwrap());
                    }
                    return (
                        refusal.status,
                        refused,
                        "{\"message\":\"try later\"}".into(),
                    );
                }
            }
            let form: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
                .into_owned()
                .collect();
            if form.iter().any(|(k, v)| k == "To" && v == INVALID_NUMBER) {
                return (
                    StatusCode::BAD_REQUEST,
                    HeaderMap::new(),
                    "{\"code\":21211,\"message\":\"Invalid 'To' Phone Number\"}".into(),
                );
            }
            let header = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let mut all = received.lock().unwrap();
            all.push(SmsRequest {
                path: format!("/2010-04-01/Accounts/{sid}/Messages.json"),
                authorization: header("authorization"),
                idempotency: header("i-twilio-idempotency-token"),
                form,
            });
            (
                StatusCode::CREATED,
                HeaderMap::new(),
                format!("{{\"sid\":\"SM{:032}\",\"status\":\"queued\"}}", all.len()),
            )
        }
        let app = Router::new()
            .route("/2010-04-01/Accounts/{sid}/Messages.json", post(messages))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        TwilioServer { base, received }
    }
}

/// A real Kannel gateway: bearerbox, smsbox and fakesmsc (a fake SMS centre) on free ports.
pub struct KannelGateway {
    children: Vec<Child>,
    pub dir: tempfile::TempDir,
    pub sendsms_port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("nothing listens on port {port}");
}

impl KannelGateway {
    pub fn start(password: &str) -> KannelGateway {
        let bearerbox = "/usr/sbin/bearerbox";
        assert!(
            std::path::Path::new(bearerbox).exists(),
            "Kannel is not installed: apt-get install kannel kannel-extras (.ci/run does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let (admin, smsbox, smsc, sendsms) = (free_port(), free_port(), free_port(), free_port());
        let d = dir.path().display();
        let conf = format!(
            "group = core\nadmin-port = {admin}\nadmin-password = adminpw\nsmsbox-port = {smsbox}\nbox-allow-ip = 127.0.0.1\n\
             log-file = {d}/bearerbox.log\nlog-level = 1\ndlr-storage = internal\n\n\
             group = smsc\nsmsc = fake\nsmsc-id = fake\nport = {smsc}\nconnect-allow-ip = 127.0.0.1\n\n\
             group = smsbox\nbearerbox-host = 127.0.0.1\nbearerbox-port = {smsbox}\nsendsms-port = {sendsms}\nlog-file = {d}/smsbox.log\nlog-level = 1\n\n\
             group = sendsms-user\nusername = trellis\npassword = {password}\nconcatenation = true\nmax-messages = 5\n\n\
             group = sms-service\nkeyword = default\ntext = \"ok\"\ncatch-all = true\n"
        );
        let conf_path = dir.path().join("kannel.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let quiet = || (Stdio::null(), Stdio::null());
        let (o, e) = quiet();
        let mut children = vec![
            Command::new(bearerbox)
                .arg(&conf_path)
                .stdout(o)
                .stderr(e)
                .spawn()
                .unwrap(),
        ];
        wait_for_port(smsbox);
        let (o, e) = quiet();
        children.push(
            Command::new("/usr/sbin/smsbox")
                .arg(&conf_path)
                .stdout(o)
                .stderr(e)
                .spawn()
                .unwrap(),
        );
        wait_for_port(smsc);
        // fakesmsc stays connected while it has mobile-originated messages left to send; it
        // sends one now and the next in an hour, and logs every message it receives.
        let log = std::fs::File::create(dir.path().join("fakesmsc.log")).unwrap();
        children.push(
            Command::new("/usr/lib/kannel/test/fakesmsc")
                .args([
                    "-H",
                    "127.0.0.1",
                    "-r",
                    &smsc.to_string(),
                    "-i",
                    "3600",
                    "-m",
                    "2",
                    "100 200 text ping",
                ])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        wait_for_port(sendsms);
        KannelGateway {
            children,
            dir,
            sendsms_port: sendsms,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.sendsms_port)
    }

    /// Messages the fake SMS centre received from `from`: `(to, rest of the line)`.
    pub fn received_from(&self, from: &str) -> Vec<(String, String)> {
        let log = std::fs::read_to_string(self.dir.path().join("fakesmsc.log")).unwrap_or_default();
        log.lines()
            .filter_map(|l| l.split_once("Got message ").map(|(_, rest)| rest))
            .filter_map(|rest| rest.split_once(": <").map(|(_, m)| m.trim_end_matches('>')))
            .filter_map(|m| {
                let mut parts = m.splitn(3, ' ');
                let (sender, to, rest) = (parts.next()?, parts.next()?, parts.next()?);
                (sender == from).then(|| (to.to_owned(), rest.to_owned()))
            })
            .collect()
    }
}

impl Drop for KannelGateway {
    fn drop(&mut self) {
        for child in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Serves the app's router on a real port, for callbacks from outside (Kannel's DLRs).
pub async fn serve_on(router: Router, listener: std::net::TcpListener) {
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
}
