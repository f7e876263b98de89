//! Faults of the machine under the real binary: a full disk (a small tmpfs) and a database
//! locked by another process. Each must answer 503 with `Retry-After` within a bounded
//! time, lose nothing it accepted, and recover by itself.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::root;

const TOKEN: &str = "faults-test-token-0123456789";

/// `trellis serve` on `db`, with the shipped workflows; killed on drop.
struct Server {
    child: Child,
    port: u16,
    client: reqwest::Client,
}

impl Server {
    async fn start(db: &Path, outbox: &Path) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args(["serve", "--api-token", TOKEN, "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--database-url")
            .arg(format!("sqlite://{}", db.display()))
            .arg("--outbox")
            .arg(outbox)
            .current_dir(root())
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the binary starts");
        let server = Server {
            child,
            port,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        };
        for _ in 0..400 {
            if server.health().await.0 == 200 {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the server did not come up");
    }

    async fn health(&self) -> (u16, Value) {
        match self
            .client
            .get(format!("http://127.0.0.1:{}/healthz", self.port))
            .send()
            .await
        {
            Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
            Err(_) => (0, Value::Null),
        }
    }

    /// Posts one event; returns the status, the `Retry-After` header and the body.
    async fn post_event(&self, event: &Value) -> (u16, Option<String>, Value) {
        let response = self
            .client
            .post(format!("http://127.0.0.1:{}/v1/events", self.port))
            .bearer_auth(TOKEN)
            .json(event)
            .send()
            .await
            .expect("the server answers");
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        (
            status,
            retry_after,
            response.json().await.unwrap_or(Value::Null),
        )
    }

    async fn customer(&self, id: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("http://127.0.0.1:{}/v1/customers/{id}", self.port))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small tmpfs, unmounted on drop. Mounting needs root, which every machine of this
/// project's kind (and its CI) runs as; elsewhere the test says so and fails.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "the disk-full test mounts a small tmpfs and needs root (run ./test.sh as root)"
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system to the last byte.
    fn fill(&self) {
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=64k"])
            .arg(format!("of={}", self.path().join("filler").display()))
            .stderr(Stdio::null())
            .status();
    }

    fn free(&self) {
        std::fs::remove_file(self.path().join("filler")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn signup(i: usize, padding: usize) -> Value {
    json!({
        "id": format!("signup-{i}"),
        "customer_id": format!("c{i:04}"),
        "name": "signup",
        "properties": {"padding": "x".repeat(padding)},
    })
}

#[tokio::test]
async fn a_full_disk_answers_503_with_retry_after_and_recovers_by_itself() {
    let disk = Tmpfs::mount("4M");
    let outbox = tempfile::tempdir().unwrap();
    let server = Server::start(&disk.path().join("t.db"), outbox.path()).await;
    let (status, _, _) = server.post_event(&signup(0, 10)).await;
    assert_eq!(status, 202);

    disk.fill();
    let mut accepted = vec![0];
    let mut refused = None;
    for i in 1..200 {
        let (status, retry_after, body) = server.post_event(&signup(i, 4000)).await;
        match status {
            202 => accepted.push(i),
            503 => {
                assert!(retry_after.is_some(), "a 503 says when to retry");
                assert_eq!(body["error"], "unavailable", "{body}");
                refused = Some(i);
                break;
            }
            other => panic!("a full disk answers 503, not {other}: {body}"),
        }
    }
    let refused = refused.expect("a full disk refuses a write within 200 events");
    let (status, body) = server.health().await;
    assert_eq!(
        (status, body["status"].as_str()),
        (503, Some("cannot write"))
    );

    disk.free();
    // Recovery needs no restart: the next attempts go through by themselves.
    let mut attempts = 0;
    loop {
        let (status, _, body) = server.post_event(&signup(refused, 10)).await;
        if status == 202 {
            accepted.push(refused);
            break;
        }
        assert_eq!(status, 503, "{body}");
        attempts += 1;
        assert!(attempts < 150, "writes did not recover: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in refused + 1..refused + 20 {
        let (status, _, body) = server.post_event(&signup(i, 10)).await;
        assert_eq!(status, 202, "writes keep working after recovery: {body}");
        accepted.push(i);
    }
    assert_eq!(server.health().await.0, 200);
    let kept = accepted.len();
    for i in accepted {
        let (status, body) = server.customer(&format!("c{i:04}")).await;
        assert_eq!(status, 200, "accepted event {i} was kept: {body}");
    }
    println!(
        "RELIABILITY disk full: 503 with Retry-After at event {refused}, writes back after {attempts} retries without a restart, {kept} of {kept} accepted events kept"
    );
}

/// Holds SQLite's write lock on `db` from another process for `hold`.
fn lock_from_another_process(db: &Path, hold: Duration) -> Child {
    let python = std::env::var("TRELLIS_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = Command::new(python)
        .arg("-c")
        .arg(
            "import sqlite3, sys, time\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             c.execute('BEGIN EXCLUSIVE')\n\
             print('locked', flush=True)\n\
             time.sleep(float(sys.argv[2]))\n\
             c.execute('ROLLBACK')\n",
        )
        .arg(db)
        .arg(hold.as_secs_f64().to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");
    child
}

#[tokio::test]
async fn a_database_locked_by_another_process_answers_503_within_a_bounded_wait() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let server = Server::start(&db, &dir.path().join("outbox")).await;
    assert_eq!(server.post_event(&signup(0, 10)).await.0, 202);

    let mut locker = lock_from_another_process(&db, Duration::from_secs(30));
    // The wait is bounded: 6 s at the gate and 3 s busy at most, once (a group that meets
    // the lock is not retried alone). The rest is margin for a loaded machine.
    let (status, retry_after, body) =
        tokio::time::timeout(Duration::from_secs(13), server.post_event(&signup(1, 10)))
            .await
            .expect("a locked database answers within 13 s");
    assert_eq!(status, 503, "{body}");
    assert!(retry_after.is_some());
    let (health, body) = server.health().await;
    assert_eq!(
        (health, body["status"].as_str()),
        (503, Some("cannot write"))
    );
    let _ = locker.kill();
    let _ = locker.wait();

    // Nothing accepted before was lost, and the refused event goes through on retry.
    let (status, _, body) = server.post_event(&signup(1, 10)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(server.health().await.0, 200);
    for i in 0..2 {
        assert_eq!(server.customer(&format!("c{i:04}")).await.0, 200);
    }
    println!(
        "RELIABILITY database locked 30 s by another process: 503 with Retry-After within 13 s, 2 of 2 accepted events kept"
    );
}

#[tokio::test]
async fn a_short_lock_by_another_process_only_delays_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let server = Server::start(&db, &dir.path().join("outbox")).await;
    assert_eq!(server.post_event(&signup(0, 10)).await.0, 202);
    let mut locker = lock_from_another_process(&db, Duration::from_secs(2));
    let (status, _, body) = server.post_event(&signup(1, 10)).await;
    assert_eq!(
        status, 202,
        "a lock shorter than the wait is waited out: {body}"
    );
    let _ = locker.wait();
    assert_eq!(server.customer("c0001").await.0, 200);
    println!(
        "RELIABILITY database locked 2 s by another process: the request waited and was accepted"
    );
}
