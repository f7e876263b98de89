//! The wall clock jumping under a running server (libfaketime, with the monotonic clock left
//! alone): forward two hours, back one. Wake-ups that came due fire once, none fires twice,
//! none is lost.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::app::SmtpSink;
use crate::helpers::root;

const TOKEN: &str = "clock-jump-token-0123456789";

/// Debian's libfaketime, wherever the architecture puts it.
fn libfaketime() -> PathBuf {
    std::fs::read_dir("/usr/lib")
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists())
        .expect("libfaketime is installed (./test.sh installs Debian's libfaketime)")
}

/// `trellis serve` under libfaketime, its offset read from `offset_file` at every call.
fn start(db: &Path, workflows: &Path, smtp: &str, port: u16, offset_file: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args([
            "serve",
            "--api-token",
            TOKEN,
            "--smtp-url",
            smtp,
            "--listen",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--database-url")
        .arg(format!("sqlite://{}", db.display()))
        .arg("--workflows")
        .arg(workflows)
        .arg("--templates")
        .arg(root().join("tests/fixtures/crash/templates"))
        .args(["--from", "Clock <clock@trellis.test>"])
        .env("LD_PRELOAD", libfaketime())
        .env("FAKETIME_TIMESTAMP_FILE", offset_file)
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts")
}

async fn sign_up(client: &reqwest::Client, port: u16, ids: std::ops::Range<usize>) {
    for i in ids {
        let id = format!("c{i:03}");
        let put = client
            .put(format!("http://127.0.0.1:{port}/v1/customers/{id}"))
            .bearer_auth(TOKEN)
            .json(&json!({"email": format!("{id}@example.com"), "consent": {"email": true}}))
            .send()
            .await
            .unwrap();
        assert!(put.status().is_success());
        let post = client
            .post(format!("http://127.0.0.1:{port}/v1/events"))
            .bearer_auth(TOKEN)
            .json(&json!({"id": format!("signup-{id}"), "customer_id": id, "name": "signup"}))
            .send()
            .await
            .unwrap();
        assert!(post.status().is_success());
    }
}

/// Waits up to 10 s for `n` distinct messages; returns (distinct, raw).
async fn wait_for(smtp: &SmtpSink, n: usize) -> (usize, usize) {
    wait_up_to(smtp, n, 200).await
}

/// Waits `polls` × 50 ms at most for `n` distinct messages; returns (distinct, raw).
async fn wait_up_to(smtp: &SmtpSink, n: usize, polls: usize) -> (usize, usize) {
    let mut counts = (0, 0);
    for _ in 0..polls {
        let mails = smtp.messages();
        let mut ids: Vec<String> = mails
            .iter()
            .filter_map(|m| m.lines().find(|l| l.starts_with("Message-ID:")))
            .map(str::to_owned)
            .collect();
        let raw = ids.len();
        ids.sort();
        ids.dedup();
        counts = (ids.len(), raw);
        if ids.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wall_clock_jumping_forward_and_back_fires_each_wake_up_once() {
    let smtp = SmtpSink::start();
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("wf");
    std::fs::create_dir_all(&workflows).unwrap();
    std::fs::write(
        workflows.join("hourly.yaml"),
        "id: hourly\nname: Two emails an hour apart\ntrigger: { event: { name: signup } }\nstart: first\nnodes:\n  first:\n    send_email: { template: first, next: pause }\n  pause:\n    wait: { duration: 1h, next: second }\n  second:\n    send_email: { template: second, next: done }\n  done: exit\n",
    )
    .unwrap();
    let offset = dir.path().join("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = start(
        &dir.path().join("t.db"),
        &workflows,
        &smtp.url(),
        port,
        &offset,
    );
    let client = reqwest::Client::new();
    let mut up = false;
    for _ in 0..400 {
        if client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(up, "the server came up under libfaketime");

    sign_up(&client, port, 0..20).await;
    assert_eq!(wait_for(&smtp, 20).await, (20, 20), "the first emails");
    assert_eq!(
        wait_up_to(&smtp, 21, 30).await.0,
        20,
        "the waits are not due yet"
    );

    // Forward two hours: every wait came due and fires once.
    std::fs::write(&offset, "+2h\n").unwrap();
    assert_eq!(
        wait_for(&smtp, 40).await,
        (40, 40),
        "after the jump forward"
    );

    // Back one hour: nothing fires again; new customers wait their hour from the new now.
    std::fs::write(&offset, "+1h\n").unwrap();
    sign_up(&client, port, 20..30).await;
    assert_eq!(wait_for(&smtp, 50).await, (50, 50), "the new first emails");
    assert_eq!(
        wait_up_to(&smtp, 51, 50).await,
        (50, 50),
        "no wake-up fired twice, none early"
    );

    // Forward again past their hour: each of theirs fires once.
    std::fs::write(&offset, "+3h\n").unwrap();
    let (distinct, raw) = wait_for(&smtp, 60).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!((distinct, raw), (60, 60), "every wake-up fired, once");
    println!(
        "RELIABILITY clock jumps (+2h, -1h, +2h): {distinct} of 60 messages, {} duplicates",
        raw - distinct
    );
}
