//! Several `trellis serve` runners on one PostgreSQL: the real binary three times over, the
//! two-step journey of the crash tests (two emails a second apart) to a real SMTP server,
//! one runner killed with SIGKILL and another stopped with SIGSTOP past its lease and then
//! resumed.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::app::SmtpSink;
use crate::helpers::root;

const TOKEN: &str = "runners-test-token-0123456789";

/// Customers through the journey.
const CUSTOMERS: usize = 300;

/// Deliveries per channel each runner has on the wire at most.
const CONCURRENCY: usize = 4;

/// A runner's lease: short, so the test sees takeovers within seconds.
const LEASE: &str = "2s";

struct Runner {
    child: Child,
    port: u16,
}

impl Runner {
    fn start(db: &str, smtp: &str) -> Runner {
        Self::start_as(db, smtp, "all")
    }

    /// A runner in `role` (`all`, `api` or `worker`).
    fn start_as(db: &str, smtp: &str, role: &str) -> Runner {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let fixtures = root().join("tests/fixtures/crash");
        let child = Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args(["serve", "--database-url", db, "--smtp-url", smtp])
            .args(["--api-token", TOKEN, "--lease-ttl", LEASE, "--role", role])
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--workflows")
            .arg(fixtures.join("workflows"))
            .arg("--templates")
            .arg(fixtures.join("templates"))
            .args(["--from", "Runners <runners@trellis.test>"])
            .arg("--channel-concurrency")
            .arg(CONCURRENCY.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the binary starts");
        Runner { child, port }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal}");
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_until_up(client: &reqwest::Client, runner: &Runner) {
    for _ in 0..400 {
        if client
            .get(runner.url("/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("a runner did not come up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_runners_lose_nothing_duplicate_at_most_what_was_on_the_wire_and_a_stalled_one_sends_and_records_nothing_it_lost()
 {
    let (db, _schema) = trellis::store::testing::temp_postgres_url().await;
    let smtp = SmtpSink::start();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let post = |runner: &Runner, batch: usize| {
        let events: Vec<_> = (batch * 30..(batch + 1) * 30)
            .map(|i| json!({"id": format!("signup-{i}"), "customer_id": format!("c{i:04}"), "name": "signup"}))
            .collect();
        client
            .post(runner.url("/v1/events/batch"))
            .bearer_auth(TOKEN)
            .json(&events)
            .send()
    };

    // The runner that will be stopped works alone first, against a slow SMTP server, so it
    // holds claimed messages waiting for a connection when it freezes.
    let stalled = Runner::start(&db, &smtp.url());
    wait_until_up(&client, &stalled).await;
    for i in 0..CUSTOMERS {
        let body = json!({"email": format!("c{i:04}@example.com"), "consent": {"email": true}});
        let put = client
            .put(stalled.url(&format!("/v1/customers/c{i:04}")))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(put.status().is_success());
    }
    smtp.slow(Some(100));
    for batch in 0..4 {
        assert!(post(&stalled, batch).await.unwrap().status().is_success());
    }
    let holding = wait_for(&smtp, 8).await;
    stalled.signal("-STOP");

    // Two more runners; one of them dies with work in hand.
    let (kept, killed) = (
        Runner::start(&db, &smtp.url()),
        Runner::start(&db, &smtp.url()),
    );
    wait_until_up(&client, &kept).await;
    wait_until_up(&client, &killed).await;
    for batch in 4..7 {
        assert!(post(&killed, batch).await.unwrap().status().is_success());
    }
    wait_for(&smtp, holding + 8).await;
    killed.signal("-KILL");
    for batch in 7..10 {
        assert!(post(&kept, batch).await.unwrap().status().is_success());
    }
    // The stopped runner stays stopped, well past its lease (2 s), until the kept runner has
    // taken its work over and delivered everything: then what the stopped one still holds
    // (deliveries it had on the wire, planned writes) is all stale when it resumes.
    let expected = CUSTOMERS * 2;
    smtp.slow(None);
    for _ in 0..1200 {
        if smtp.message_ids().len() >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stalled.signal("-CONT");
    // The resumed runner has had its chance to send or write what it held.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let by_id = smtp.message_ids();
    let raw: usize = by_id.values().sum();
    println!(
        "RELIABILITY three runners, one SIGKILL, one SIGSTOP past its lease: {} of {expected} messages, {} raw duplicates",
        by_id.len(),
        raw - by_id.len()
    );
    // Every message once, and no journey played twice (a second enrollment would bring
    // Message-IDs of its own).
    assert_eq!(by_id.len(), expected, "distinct Message-IDs");
    assert!(
        raw - by_id.len() <= 2 * CONCURRENCY,
        "{} raw duplicates: more than the stopped and the killed runner's deliveries on the wire",
        raw - by_id.len()
    );

    // What the store says: every message sent, one enrollment per customer, completed.
    let store = trellis::store::Store::open(&db, Default::default())
        .await
        .unwrap();
    let counts = store.message_counts().await.unwrap();
    assert_eq!(
        counts,
        [("email".to_owned(), "sent".to_owned(), expected as i64)],
        "{counts:?}"
    );
    // A late outcome is not recorded over the work of the runner that took the message over:
    // where a message was delivered twice, the store keeps the provider's answer to the last
    // delivery (the sink answers "queued as N", N counting deliveries from 0).
    let mut last: std::collections::BTreeMap<String, (usize, String)> = Default::default();
    for (n, mail) in smtp.messages().iter().enumerate() {
        let header = |name: &str| {
            mail.lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        let to = header("To:");
        last.insert(header("Message-ID:"), (n, to));
    }
    let mut checked = 0;
    for (message_id, (n, to)) in &last {
        // `message_ids` counts by the whole header line.
        if by_id[&format!("Message-ID: {message_id}")] < 2 {
            continue;
        }
        let customer = to
            .trim_matches(['<', '>'])
            .split('@')
            .next()
            .unwrap_or_default();
        let id = trellis::model::CustomerId::parse(customer.to_owned()).unwrap();
        let messages = store.messages_of(&id).await.unwrap();
        let key = message_id
            .trim_matches(['<', '>'])
            .split('@')
            .next()
            .unwrap_or_default();
        let stored = messages.iter().find(|m| m.key == key).unwrap();
        assert!(
            stored
                .provider_id
                .as_deref()
                .is_some_and(|p| p.ends_with(&format!("queued as {n}"))),
            "{message_id}: delivered last as {n}, recorded {:?}",
            stored.provider_id
        );
        checked += 1;
    }
    assert!(
        checked > 0,
        "the stopped runner had deliveries on the wire (the SMTP server is slow): some message was delivered twice"
    );
    for i in (0..CUSTOMERS).step_by(7) {
        let id = trellis::model::CustomerId::parse(format!("c{i:04}")).unwrap();
        let enrollments = store.enrollments_of(&id).await.unwrap();
        assert_eq!(enrollments.len(), 1, "c{i:04}: {enrollments:?}");
        assert!(!enrollments[0].active, "c{i:04}: {enrollments:?}");
    }
    drop((stalled, kept, killed));
}

/// Waits (up to a minute) until at least `n` messages arrived; returns how many did.
async fn wait_for(smtp: &SmtpSink, n: usize) -> usize {
    for _ in 0..1200 {
        let arrived = smtp.messages().len();
        if arrived >= n {
            return arrived;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{n} messages did not arrive within a minute");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_whose_customer_was_taken_after_its_lease_writes_nothing_of_its_plan() {
    use trellis::journey::{CustomerWrite, LoadSpec};
    use trellis::store::{JourneyTx, OpenOptions, Store};

    let (db, _schema) = trellis::store::testing::temp_postgres_url().await;
    let options = OpenOptions {
        lease_ttl: Duration::from_secs(1),
        ..OpenOptions::default()
    };
    let (a, b) = (
        Store::open(&db, options).await.unwrap(),
        Store::open(&db, options).await.unwrap(),
    );
    assert_ne!(a.runner(), b.runner());
    let now: jiff::Timestamp = "2026-03-02T08:00:00Z".parse().unwrap();
    let ada = trellis::model::CustomerId::parse("ada").unwrap();
    let mut tx = a.begin().await.unwrap();
    tx.put_customer(&trellis::model::Customer::minimal(ada.clone()), now)
        .await
        .unwrap();
    let signup = trellis::model::Event {
        id: None,
        name: "signup".into(),
        timestamp: now,
        properties: Default::default(),
    };
    tx.insert_event(&ada, &signup, now).await.unwrap();
    tx.commit().await.unwrap();

    let pending = |store: &Store| {
        let store = store.clone();
        async move {
            let mut tx = store.begin().await.unwrap();
            let events = tx.pending_events(10).await.unwrap();
            tx.end_unwritten().await.unwrap();
            events
        }
    };
    // A takes ada's event; while A's lease lasts, B is given nothing.
    let taken = pending(&a).await;
    assert_eq!(taken.len(), 1);
    assert!(pending(&b).await.is_empty(), "ada is A's");
    let spec = LoadSpec {
        history_since: None,
        sends_since: None,
        fired_since: None,
        enrollments: true,
    };
    let loaded = a
        .load_customers(std::slice::from_ref(&ada), &spec)
        .await
        .unwrap();
    // Plans on the same version; B's leaves the profile (and so the version) as it is, so
    // only the lease can tell A's write from a current one.
    let plan = |profile: Option<trellis::model::Customer>| CustomerWrite {
        id: Some(ada.clone()),
        version: loaded[0].version,
        processed: Some(taken[0].seq),
        profile,
        ..CustomerWrite::default()
    };
    let mut stale = trellis::model::Customer::minimal(ada.clone());
    stale.attributes.insert("planned_by".into(), json!("a"));

    // A stalls past its lease; B takes ada over and writes first.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert_eq!(
        pending(&b).await.len(),
        1,
        "ada's event is B's once A's lease ran out"
    );
    let mut tx = b.begin().await.unwrap();
    assert!(
        tx.write_customers(&[plan(None)], now)
            .await
            .unwrap()
            .is_empty()
    );
    tx.commit().await.unwrap();

    // A wakes and writes its plan: skipped whole, B's stands.
    let mut tx = a.begin().await.unwrap();
    let skipped = tx.write_customers(&[plan(Some(stale))], now).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        skipped,
        std::slice::from_ref(&ada),
        "A's lease was taken: nothing of its plan is written"
    );
    let stored = a.customer(&ada).await.unwrap().unwrap();
    assert_eq!(stored.attributes.get("planned_by"), None, "{stored:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stored_through_one_runner_wakes_the_others_scheduler_and_a_queued_message_its_dispatcher()
 {
    use trellis::journey::CustomerWrite;
    use trellis::store::{JourneyTx, Store};

    let (db, _schema) = trellis::store::testing::temp_postgres_url().await;
    let (api, worker) = (
        Store::open(&db, Default::default()).await.unwrap(),
        Store::open(&db, Default::default()).await.unwrap(),
    );
    let (events, outbox) = (
        std::sync::Arc::new(tokio::sync::Notify::new()),
        std::sync::Arc::new(tokio::sync::Notify::new()),
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let listening = tokio::spawn({
        let (worker, events, outbox, shutdown) = (
            worker.clone(),
            events.clone(),
            outbox.clone(),
            shutdown.clone(),
        );
        async move { worker.listen_for_work(events, outbox, shutdown).await }
    });
    // LISTEN takes effect once the listener's connection has run it; until then a
    // notification is not heard, so the event is stored again until one is.
    let now: jiff::Timestamp = "2026-03-02T08:00:00Z".parse().unwrap();
    let ada = trellis::model::CustomerId::parse("ada").unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let mut tx = api.begin().await.unwrap();
            let event = trellis::model::Event {
                id: None,
                name: "signup".into(),
                timestamp: now,
                properties: Default::default(),
            };
            tx.insert_event(&ada, &event, now).await.unwrap();
            tx.commit().await.unwrap();
            if tokio::time::timeout(Duration::from_millis(200), events.notified())
                .await
                .is_ok()
            {
                break;
            }
        }
    })
    .await;
    assert!(heard.is_ok(), "the worker's scheduler was never nudged");

    // A journey write that queues a message nudges the dispatchers.
    let message = trellis::store::NewMessage {
        key: "k1".into(),
        enrollment_id: "e".into(),
        workflow_id: "w".into(),
        node: "n".into(),
        customer_id: "ada".into(),
        template: None,
        status: trellis::store::MessageStatus::Pending,
        payload: trellis::store::Payload::None,
        note: None,
        transactional: false,
        cap: None,
    };
    let version = api
        .load_customers(
            std::slice::from_ref(&ada),
            &trellis::journey::LoadSpec {
                history_since: None,
                sends_since: None,
                fired_since: None,
                enrollments: false,
            },
        )
        .await
        .unwrap()[0]
        .version;
    let mut tx = api.begin().await.unwrap();
    let write = CustomerWrite {
        id: Some(ada.clone()),
        version,
        messages: vec![message],
        ..CustomerWrite::default()
    };
    assert!(tx.write_customers(&[write], now).await.unwrap().is_empty());
    tx.commit().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), outbox.notified())
        .await
        .expect("the worker's dispatcher is nudged");
    shutdown.cancel();
    listening.await.unwrap();
}

#[tokio::test]
async fn a_role_other_than_all_is_refused_on_sqlite_which_has_one_runner() {
    for role in ["api", "worker"] {
        let refusal = crate::app::build_error(&["--role", role, "--api-token", TOKEN])
            .await
            .expect("a split role on SQLite is refused");
        assert!(
            refusal.contains("--role") && refusal.contains("PostgreSQL"),
            "{refusal}"
        );
    }
    assert_eq!(
        crate::app::build_error(&["--role", "all", "--api-token", TOKEN]).await,
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_runner_at_a_time_leads_the_sweep_and_another_takes_over_when_its_lease_ends() {
    use trellis::store::{OpenOptions, Store};

    let (db, _schema) = trellis::store::testing::temp_postgres_url().await;
    let options = OpenOptions {
        lease_ttl: Duration::from_secs(1),
        ..OpenOptions::default()
    };
    let (a, b) = (
        Store::open(&db, options).await.unwrap(),
        Store::open(&db, options).await.unwrap(),
    );
    assert!(a.lead("sweep").await.unwrap(), "the first to ask leads");
    assert!(
        !b.lead("sweep").await.unwrap(),
        "while A's lease lasts, B does not"
    );
    assert!(a.lead("sweep").await.unwrap(), "A keeps it by asking again");
    assert!(
        b.lead("other").await.unwrap(),
        "each job has a leader of its own"
    );
    // A stops asking (it died, or stalled): B leads once A's lease has ended, and A no more.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert!(b.lead("sweep").await.unwrap());
    assert!(!a.lead("sweep").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_runner_stores_events_and_a_worker_runner_sends_what_they_start() {
    let (db, _schema) = trellis::store::testing::temp_postgres_url().await;
    let smtp = SmtpSink::start();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let api = Runner::start_as(&db, &smtp.url(), "api");
    wait_until_up(&client, &api).await;
    let worker = Runner::start_as(&db, &smtp.url(), "worker");
    // The worker serves no HTTP: its port stays closed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        client.get(worker.url("/healthz")).send().await.is_err(),
        "a worker listens nowhere"
    );
    let put = client
        .put(api.url("/v1/customers/ada"))
        .bearer_auth(TOKEN)
        .json(&json!({"email": "ada@example.com", "consent": {"email": true}}))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    let post = client
        .post(api.url("/v1/events"))
        .bearer_auth(TOKEN)
        .json(&json!({"customer_id": "ada", "name": "signup"}))
        .send()
        .await
        .unwrap();
    assert!(post.status().is_success());
    // Both emails of the two-step journey, sent by the worker (the API runner has no
    // scheduler or dispatcher).
    assert_eq!(wait_for(&smtp, 2).await, 2);
    drop((api, worker));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_customers_pending_events_never_hide_the_others_from_the_claims() {
    use trellis::store::{JourneyTx, Store};

    let (db, _schema) = trellis::store::testing::temp_postgres_url().await;
    let store = Store::open(&db, Default::default()).await.unwrap();
    let now: jiff::Timestamp = "2026-03-02T08:00:00Z".parse().unwrap();
    let (ada, bob) = (
        trellis::model::CustomerId::parse("ada").unwrap(),
        trellis::model::CustomerId::parse("bob").unwrap(),
    );
    let ping = trellis::model::Event {
        id: None,
        name: "ping".into(),
        timestamp: now,
        properties: Default::default(),
    };
    // Ada's 50 events arrive first, then she is erased before any is processed.
    let mut tx = store.begin().await.unwrap();
    let adas: Vec<(&trellis::model::CustomerId, &trellis::model::Event)> =
        (0..50).map(|_| (&ada, &ping)).collect();
    tx.insert_events(&adas, now).await.unwrap();
    tx.insert_event(&bob, &ping, now).await.unwrap();
    assert!(tx.erase_customer(&ada, now).await.unwrap());
    tx.commit().await.unwrap();
    // A claim of 10 looks at a window of 40: the erased events must not fill it.
    let mut tx = store.begin().await.unwrap();
    let pending = tx.pending_events(10).await.unwrap();
    tx.end_unwritten().await.unwrap();
    let whose: Vec<&str> = pending.iter().map(|e| e.customer_id.as_str()).collect();
    assert_eq!(whose, ["bob"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_leases_its_pages_and_passes_over_a_customer_another_runner_holds() {
    use trellis::store::{JourneyStore, JourneyTx, Store};

    let (db, _schema) = trellis::store::testing::temp_postgres_url().await;
    let (a, b) = (
        Store::open(&db, Default::default()).await.unwrap(),
        Store::open(&db, Default::default()).await.unwrap(),
    );
    let now: jiff::Timestamp = "2026-03-02T08:00:00Z".parse().unwrap();
    let mut tx = a.begin().await.unwrap();
    for id in ["ada", "bob", "cy"] {
        let id = trellis::model::CustomerId::parse(id).unwrap();
        tx.put_customer(&trellis::model::Customer::minimal(id), now)
            .await
            .unwrap();
    }
    let ping = trellis::model::Event {
        id: None,
        name: "ping".into(),
        timestamp: now,
        properties: Default::default(),
    };
    tx.insert_event(
        &trellis::model::CustomerId::parse("bob").unwrap(),
        &ping,
        now,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    // A works on bob; B's sweep pages over everyone else, leasing them.
    let mut tx = a.begin().await.unwrap();
    assert_eq!(tx.pending_events(10).await.unwrap().len(), 1);
    tx.end_unwritten().await.unwrap();
    let page = JourneyStore::customer_ids_after(&b, None, 10)
        .await
        .unwrap();
    let ids: Vec<&str> = page.iter().map(|c| c.as_str()).collect();
    assert_eq!(ids, ["ada", "cy"], "bob is A's until A is done with him");
    // Those two are B's now: A's next claim does not get them.
    let mut tx = a.begin().await.unwrap();
    let again = tx.pending_events(10).await.unwrap();
    tx.end_unwritten().await.unwrap();
    assert!(again.iter().all(|e| e.customer_id.as_str() == "bob"));
}
