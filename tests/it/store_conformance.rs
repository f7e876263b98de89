//! One suite, every journey store: the SQLite store `serve` uses, the memory store the
//! simulator uses and the PostgreSQL store must answer the journey drive's port
//! (`JourneyStore`, `JourneyTx`) the same way. Each case runs on all three; a store that
//! breaks a rule the others keep fails here. PostgreSQL is the database at
//! `TRELLIS_TEST_POSTGRES_URL` (`./test.sh` starts one), a fresh schema per case; without the
//! variable the cases fail, saying how to set it.

use std::collections::BTreeSet;

use jiff::Timestamp;
use trellis::engine::policy::counts_toward_caps;
use trellis::journey::{CustomerState, CustomerWrite, FireWrite, LoadSpec};
use trellis::model::{Channel, Customer, CustomerId, Event, EventId};
use trellis::simulate::Stage;
use trellis::store::{JourneyStore, JourneyTx, MemoryStore, MessageStatus, NewMessage, Payload};

use crate::helpers::at;

/// Runs `case` on a fresh memory store, on a fresh SQLite file and on a fresh PostgreSQL
/// schema.
macro_rules! on_every_store {
    ($case:ident) => {
        let memory = MemoryStore::default();
        $case(&memory, "memory").await;
        let (sqlite, _dir) = trellis::store::testing::temp_store().await;
        $case(&sqlite, "sqlite").await;
        let (postgres, _schema) = trellis::store::testing::temp_postgres().await;
        $case(&postgres, "postgres").await;
    };
}

fn ada() -> CustomerId {
    CustomerId::parse("ada".to_owned()).unwrap()
}

fn ada_profile() -> Customer {
    serde_json::from_value(serde_json::json!({
        "id": "ada", "email": "Ada@Example.com", "phone": "+14155550101",
        "consent": {"email": true, "sms": true}
    }))
    .unwrap()
}

/// Ada's profile, stored at `when`.
async fn seed_ada<S: Stage>(store: &S, when: &str) {
    store.put_customer(&ada_profile(), at(when)).await.unwrap();
}

fn event(name: &str, id: Option<&str>, when: &str) -> Event {
    Event {
        id: id.map(|id| EventId::parse(id).unwrap()),
        name: name.into(),
        timestamp: at(when),
        properties: Default::default(),
    }
}

fn everything() -> LoadSpec {
    LoadSpec {
        history_since: None,
        sends_since: Some(Timestamp::MIN),
        fired_since: Some(Timestamp::MIN),
        enrollments: true,
    }
}

fn message(key: &str, status: MessageStatus, cap_at: Option<&str>) -> NewMessage {
    let send = trellis::engine::Effect::Send(trellis::engine::Message {
        key: trellis::model::IdempotencyKey::derive(&[key]),
        node: trellis::model::NodeId::parse("n".to_owned()).unwrap(),
        channel: Channel::Email,
        template: "welcome".into(),
        from: None,
        reply_to: None,
    });
    NewMessage {
        key: key.into(),
        enrollment_id: "e".into(),
        workflow_id: "w".into(),
        node: "n".into(),
        customer_id: "ada".into(),
        template: Some("welcome".into()),
        status,
        payload: Payload::None,
        note: None,
        transactional: false,
        cap: cap_at
            .and_then(|t| counts_toward_caps(trellis::workflow::Category::Marketing, &send, at(t))),
    }
}

/// Writes through the batch call the drive uses (a wave of one), planned on the customer's
/// version now.
async fn write<S: JourneyStore>(store: &S, mut w: CustomerWrite, now: &str) {
    w.version = load(store, &everything()).await.version;
    let mut tx = store.begin().await.unwrap();
    let skipped = tx.write_customers(&[w], at(now)).await.unwrap();
    assert!(
        skipped.is_empty(),
        "planned on the version now, nothing is skipped"
    );
    tx.commit().await.unwrap();
}

/// Loads Ada through the batch call the drive uses (a wave of one).
async fn load<S: JourneyStore>(store: &S, spec: &LoadSpec) -> CustomerState {
    store
        .load_customers(&[ada()], spec)
        .await
        .unwrap()
        .remove(0)
}

async fn events_arrive_in_order_once_per_id_and_leave_when_processed<S: JourneyStore + Stage>(
    store: &S,
    name: &str,
) {
    let now = at("2026-03-02T10:00:00Z");
    for (n, id) in [
        ("signup", Some("s1")),
        ("signup", Some("s1")),
        ("order", None),
    ] {
        store
            .insert_event(&ada(), &event(n, id, "2026-03-02T10:00:00Z"), now)
            .await
            .unwrap();
    }
    let mut tx = store.begin().await.unwrap();
    let pending = tx.pending_events(10).await.unwrap();
    tx.end_unwritten().await.unwrap();
    let seen: Vec<(i64, &str)> = pending
        .iter()
        .map(|e| (e.seq, e.event.name.as_str()))
        .collect();
    // A refused duplicate uses up a sequence number, as SQLite's AUTOINCREMENT does.
    assert_eq!(seen, [(1, "signup"), (3, "order")], "{name}");
    write(
        store,
        CustomerWrite {
            id: Some(ada()),
            processed: Some(1),
            ..CustomerWrite::default()
        },
        "2026-03-02T10:00:01Z",
    )
    .await;
    let mut tx = store.begin().await.unwrap();
    let left: Vec<i64> = tx
        .pending_events(10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    tx.end_unwritten().await.unwrap();
    assert_eq!(left, [3], "{name}");
    // History holds every stored event, processed or not, oldest first.
    assert_eq!(load(store, &everything()).await.history.len(), 2, "{name}");
}

async fn a_key_is_written_once_unless_its_row_is_held<S: JourneyStore + Stage>(
    store: &S,
    name: &str,
) {
    seed_ada(store, "2026-03-02T10:00:00Z").await;
    let first = CustomerWrite {
        id: Some(ada()),
        messages: vec![
            message("held", MessageStatus::Held, None),
            message("sent", MessageStatus::Pending, Some("2026-03-02T10:00:00Z")),
        ],
        ..CustomerWrite::default()
    };
    write(store, first, "2026-03-02T10:00:00Z").await;
    let second = CustomerWrite {
        id: Some(ada()),
        messages: vec![
            message("held", MessageStatus::Pending, Some("2026-03-02T12:00:00Z")),
            message("sent", MessageStatus::Pending, Some("2026-03-02T12:00:00Z")),
        ],
        ..CustomerWrite::default()
    };
    write(store, second, "2026-03-02T12:00:00Z").await;
    // The held row became the send, counted from when it was decided; the other kept its mark.
    let mut sends = load(store, &everything()).await.cap_sends;
    sends.sort();
    assert_eq!(
        sends,
        [
            (Channel::Email, at("2026-03-02T10:00:00Z")),
            (Channel::Email, at("2026-03-02T12:00:00Z"))
        ],
        "{name}"
    );
    // Only marks after `sends_since` count.
    let recent = LoadSpec {
        sends_since: Some(at("2026-03-02T10:00:00Z")),
        ..everything()
    };
    assert_eq!(load(store, &recent).await.cap_sends.len(), 1, "{name}");
}

async fn enrollments_load_active_in_entry_order_and_one_active_per_workflow<
    S: JourneyStore + Stage,
>(
    store: &S,
    name: &str,
) {
    let wf = crate::helpers::example("welcome_series");
    let old = trellis::engine::Enrollment::new(
        "welcome_series:ada:1".to_owned(),
        &wf,
        ada(),
        None,
        at("2026-03-01T10:00:00Z"),
    );
    let mut ended = old.clone();
    ended.status = trellis::engine::Status::Exited {
        reason: trellis::engine::ExitReason::Completed,
        at: at("2026-03-01T11:00:00Z"),
    };
    let new = trellis::engine::Enrollment::new(
        "welcome_series:ada:2".to_owned(),
        &wf,
        ada(),
        None,
        at("2026-03-02T10:00:00Z"),
    );
    write(
        store,
        CustomerWrite {
            id: Some(ada()),
            enrollments: vec![old.clone(), ended, new.clone()],
            ..CustomerWrite::default()
        },
        "2026-03-02T10:00:00Z",
    )
    .await;
    let state = load(store, &everything()).await;
    let active: Vec<&str> = state.enrollments.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(active, ["welcome_series:ada:2"], "{name}");
    assert_eq!(
        state.last_entered.get("welcome_series"),
        Some(&at("2026-03-02T10:00:00Z")),
        "{name}"
    );
    // A second active enrollment in the same workflow is refused and the batch writes nothing.
    let version = load(store, &everything()).await.version;
    let mut tx = store.begin().await.unwrap();
    let refused = tx
        .write_customers(
            &[CustomerWrite {
                id: Some(ada()),
                version,
                enrollments: vec![old],
                ..CustomerWrite::default()
            }],
            at("2026-03-02T11:00:00Z"),
        )
        .await;
    assert!(refused.is_err(), "{name}: {refused:?}");
    assert!(
        !refused.as_ref().unwrap_err().is_unavailable(),
        "{name}: a broken rule is no error that passes: {refused:?}"
    );
    drop(tx);
    assert_eq!(
        load(store, &everything()).await.enrollments.len(),
        1,
        "{name}"
    );
}

async fn a_due_occurrence_is_kept_when_rescheduled_and_handled_once<S: JourneyStore + Stage>(
    store: &S,
    name: &str,
) {
    seed_ada(store, "2026-03-02T08:00:00Z").await;
    let schedule = |when: &str| FireWrite::Schedule {
        workflow_id: "weekly_newsletter".into(),
        at: Some(at(when)),
    };
    let w = |fires| CustomerWrite {
        id: Some(ada()),
        fires,
        ..CustomerWrite::default()
    };
    write(
        store,
        w(vec![schedule("2026-03-02T09:00:00Z")]),
        "2026-03-02T08:00:00Z",
    )
    .await;
    assert_eq!(
        store.next_due().await.unwrap(),
        Some(at("2026-03-02T09:00:00Z")),
        "{name}"
    );
    // Rescheduling after the occurrence is due keeps it: it has not been handled yet.
    write(
        store,
        w(vec![schedule("2026-03-09T09:00:00Z")]),
        "2026-03-02T09:30:00Z",
    )
    .await;
    let mut tx = store.begin().await.unwrap();
    let due = tx.due_fires(at("2026-03-02T09:30:00Z"), 10).await.unwrap();
    tx.end_unwritten().await.unwrap();
    assert_eq!(
        due,
        [(
            "weekly_newsletter".to_owned(),
            ada(),
            at("2026-03-02T09:00:00Z")
        )],
        "{name}"
    );
    write(
        store,
        w(vec![
            FireWrite::Fired {
                workflow_id: "weekly_newsletter".into(),
                occurrence: at("2026-03-02T09:00:00Z"),
            },
            FireWrite::Advance {
                workflow_id: "weekly_newsletter".into(),
                next: Some(at("2026-03-09T09:00:00Z")),
            },
        ]),
        "2026-03-02T09:30:00Z",
    )
    .await;
    let state = load(store, &everything()).await;
    assert_eq!(
        state.fired,
        BTreeSet::from([("weekly_newsletter".to_owned(), at("2026-03-02T09:00:00Z"))]),
        "{name}"
    );
    assert_eq!(
        store.next_due().await.unwrap(),
        Some(at("2026-03-09T09:00:00Z")),
        "{name}"
    );
    let later = LoadSpec {
        fired_since: Some(at("2026-03-03T00:00:00Z")),
        ..everything()
    };
    assert!(load(store, &later).await.fired.is_empty(), "{name}");
}

async fn segments_and_suppressions_load_as_written<S: JourneyStore + Stage>(store: &S, name: &str) {
    seed_ada(store, "2026-03-02T08:00:00Z").await;
    write(
        store,
        CustomerWrite {
            id: Some(ada()),
            joined: vec!["buyers".into(), "vip".into()],
            ..CustomerWrite::default()
        },
        "2026-03-02T08:00:00Z",
    )
    .await;
    write(
        store,
        CustomerWrite {
            id: Some(ada()),
            left: vec!["vip".into()],
            ..CustomerWrite::default()
        },
        "2026-03-02T09:00:00Z",
    )
    .await;
    store
        .suppress(
            Channel::Email,
            "ada@example.COM",
            "bounced: 550 5.1.1",
            at("2026-03-02T09:00:00Z"),
        )
        .await
        .unwrap();
    let state = load(store, &everything()).await;
    assert_eq!(
        state.segments,
        BTreeSet::from(["buyers".to_owned()]),
        "{name}"
    );
    // Addresses compare without case; the key is the customer's address as written.
    assert_eq!(
        state.suppressed.into_iter().collect::<Vec<_>>(),
        [(
            (Channel::Email, "Ada@Example.com".to_owned()),
            "bounced: 550 5.1.1".to_owned()
        )],
        "{name}"
    );
    assert_eq!(state.customer.map(|c| c.id), Some(ada()), "{name}");
}

async fn a_transaction_dropped_unfinished_writes_nothing<S: JourneyStore + Stage>(
    store: &S,
    name: &str,
) {
    seed_ada(store, "2026-03-02T08:00:00Z").await;
    let version = load(store, &everything()).await.version;
    let mut tx = store.begin().await.unwrap();
    tx.write_customers(
        &[CustomerWrite {
            id: Some(ada()),
            version,
            joined: vec!["buyers".into()],
            messages: vec![message(
                "k",
                MessageStatus::Pending,
                Some("2026-03-02T08:00:00Z"),
            )],
            ..CustomerWrite::default()
        }],
        at("2026-03-02T08:00:00Z"),
    )
    .await
    .unwrap();
    drop(tx);
    let state = load(store, &everything()).await;
    assert!(
        state.segments.is_empty() && state.cap_sends.is_empty(),
        "{name}: {state:?}"
    );
    // Nothing of it is left holding the customer: the next write goes through at once.
    let next = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        write(
            store,
            CustomerWrite {
                id: Some(ada()),
                joined: vec!["vip".into()],
                ..CustomerWrite::default()
            },
            "2026-03-02T08:00:01Z",
        ),
    );
    next.await
        .unwrap_or_else(|_| panic!("{name}: the dropped transaction still holds the customer"));
    assert_eq!(
        load(store, &everything()).await.segments,
        BTreeSet::from(["vip".to_owned()]),
        "{name}"
    );
}

async fn a_wave_loads_and_writes_as_its_customers_one_by_one<S: JourneyStore + Stage>(
    store: &S,
    name: &str,
) {
    let bob: Customer = serde_json::from_value(serde_json::json!({
        "id": "bob", "email": "bob@example.com", "consent": {"email": true}
    }))
    .unwrap();
    let bob_id = bob.id.clone();
    seed_ada(store, "2026-03-02T08:00:00Z").await;
    store
        .put_customer(&bob, at("2026-03-02T08:00:00Z"))
        .await
        .unwrap();
    store
        .insert_event(
            &bob_id,
            &event("signup", None, "2026-03-02T08:00:00Z"),
            at("2026-03-02T08:00:00Z"),
        )
        .await
        .unwrap();
    store
        .suppress(
            Channel::Email,
            "bob@example.com",
            "complaint",
            at("2026-03-02T08:00:00Z"),
        )
        .await
        .unwrap();
    let for_ada = CustomerWrite {
        id: Some(ada()),
        version: Some(0),
        joined: vec!["buyers".into()],
        messages: vec![message(
            "a1",
            MessageStatus::Pending,
            Some("2026-03-02T08:30:00Z"),
        )],
        ..CustomerWrite::default()
    };
    let mut for_bob_message = message("b1", MessageStatus::Pending, Some("2026-03-02T08:40:00Z"));
    for_bob_message.customer_id = "bob".into();
    let for_bob = CustomerWrite {
        id: Some(bob_id.clone()),
        version: Some(0),
        messages: vec![for_bob_message],
        processed: Some(1),
        fires: vec![FireWrite::Schedule {
            workflow_id: "weekly_newsletter".into(),
            at: Some(at("2026-03-09T09:00:00Z")),
        }],
        ..CustomerWrite::default()
    };
    let mut tx = store.begin().await.unwrap();
    tx.write_customers(&[for_ada, for_bob], at("2026-03-02T09:00:00Z"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let ids = [bob_id.clone(), ada()];
    let together = store.load_customers(&ids, &everything()).await.unwrap();
    let mut alone = Vec::new();
    for id in &ids {
        alone.extend(
            store
                .load_customers(std::slice::from_ref(id), &everything())
                .await
                .unwrap(),
        );
    }
    assert_eq!(together, alone, "{name}");
    assert_eq!(
        together[0].customer.as_ref().map(|c| c.id.clone()),
        Some(bob_id),
        "{name}: in the order asked"
    );
    assert_eq!(together[0].cap_sends.len(), 1, "{name}");
    assert_eq!(together[0].suppressed.len(), 1, "{name}");
    assert_eq!(together[1].segments.len(), 1, "{name}");
    assert_eq!(
        store.next_due().await.unwrap(),
        Some(at("2026-03-09T09:00:00Z")),
        "{name}"
    );
}

async fn a_write_planned_on_an_old_version_is_skipped_whole<S: JourneyStore + Stage>(
    store: &S,
    name: &str,
) {
    seed_ada(store, "2026-03-02T08:00:00Z").await;
    let loaded = store
        .load_customers(&[ada()], &everything())
        .await
        .unwrap()
        .remove(0);
    assert_eq!(loaded.version, Some(0), "{name}: a new row is version 0");
    // The profile changes between the load and the write (an opt-out through the API).
    let mut opted_out = ada_profile();
    opted_out.consent.email = false;
    store
        .put_customer(&opted_out, at("2026-03-02T08:00:01Z"))
        .await
        .unwrap();
    let planned = CustomerWrite {
        id: Some(ada()),
        version: loaded.version,
        messages: vec![message(
            "m",
            MessageStatus::Pending,
            Some("2026-03-02T08:00:02Z"),
        )],
        profile: Some(ada_profile()),
        ..CustomerWrite::default()
    };
    let mut tx = store.begin().await.unwrap();
    let skipped = tx
        .write_customers(std::slice::from_ref(&planned), at("2026-03-02T08:00:02Z"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(skipped, [ada()], "{name}");
    let now = load(store, &everything()).await;
    assert_eq!(now.version, Some(1), "{name}: one change, one version");
    assert!(
        now.cap_sends.is_empty(),
        "{name}: nothing of the stale plan was written"
    );
    assert_eq!(
        now.customer.map(|c| c.consent.email),
        Some(false),
        "{name}: the opt-out stands"
    );
    // Planned again on the version now, it is written.
    let mut tx = store.begin().await.unwrap();
    let again = CustomerWrite {
        version: Some(1),
        ..planned
    };
    assert!(
        tx.write_customers(&[again], at("2026-03-02T08:00:03Z"))
            .await
            .unwrap()
            .is_empty(),
        "{name}"
    );
    tx.commit().await.unwrap();
    assert_eq!(
        load(store, &everything()).await.cap_sends.len(),
        1,
        "{name}"
    );
}

async fn orders_aggregate_and_unchanged_traits_leave_the_version_alone<S: JourneyStore + Stage>(
    store: &S,
    name: &str,
) {
    seed_ada(store, "2026-03-01T08:00:00Z").await;
    let order = |value: serde_json::Value, when: &str| {
        let mut e = event("order_completed", None, when);
        e.properties.insert("value".into(), value);
        e
    };
    for (value, when) in [
        (serde_json::json!(20.5), "2026-03-02T08:00:00Z"),
        (serde_json::json!("9.5"), "2026-03-03T08:00:00Z"),
        (serde_json::json!("not a number"), "2026-03-04T08:00:00Z"),
    ] {
        store
            .insert_event(&ada(), &order(value, when), at(when))
            .await
            .unwrap();
    }
    store
        .insert_event(
            &ada(),
            &event("signup", None, "2026-03-05T08:00:00Z"),
            at("2026-03-05T08:00:00Z"),
        )
        .await
        .unwrap();
    let stats = store.order_stats().await.unwrap();
    assert_eq!(
        stats,
        [trellis::traits::OrderStats {
            customer_id: "ada".into(),
            orders: 3,
            revenue: 30.0,
            first_order: Some(at("2026-03-02T08:00:00Z")),
            last_order: Some(at("2026-03-04T08:00:00Z")),
        }],
        "{name}"
    );
    let now = at("2026-03-10T08:00:00Z");
    let traits = trellis::traits::compute(&stats, now, Default::default());
    store.write_traits(&traits, now).await.unwrap();
    let scored = load(store, &everything()).await;
    let attributes = &scored.customer.as_ref().unwrap().attributes;
    assert_eq!(
        (attributes.get("lifecycle"), attributes.get("value_tier")),
        // The only customer with revenue is in the top 1 %.
        (
            Some(&serde_json::json!("new")),
            Some(&serde_json::json!("platinum"))
        ),
        "{name}: {attributes:?}"
    );
    store.write_traits(&traits, now).await.unwrap();
    assert_eq!(
        load(store, &everything()).await.version,
        scored.version,
        "{name}: the same traits again change nothing"
    );
}

async fn computed_attributes_are_replaced_whole_and_the_customers_own_stay<
    S: JourneyStore + Stage,
>(
    store: &S,
    name: &str,
) {
    let when = "2026-03-02T08:00:00Z";
    let mut profile = ada_profile();
    profile
        .attributes
        .insert("plan".into(), serde_json::json!("pro"));
    store.put_customer(&profile, at(when)).await.unwrap();
    let traits = |predicted: Option<serde_json::Value>, vap: Option<serde_json::Value>| {
        vec![trellis::traits::Traits {
            customer_id: "ada".into(),
            rfm: Some((5, 4, 3, "champions")),
            value_tier: "gold",
            lifecycle: "active",
            predicted,
            vap,
        }]
    };
    let first = traits(
        Some(
            serde_json::json!({"p_alive": 0.9, "orders_90d": 1.2, "churn_risk": "low",
                                "next_order_date": "2026-03-20"}),
        ),
        Some(serde_json::json!({"value": 5, "attrition": 1, "potential": 4, "segment": "reward"})),
    );
    store.write_traits(&first, at(when)).await.unwrap();
    let attributes = |state: &CustomerState| state.customer.as_ref().unwrap().attributes.clone();
    let written = load(store, &everything()).await;
    assert_eq!(
        attributes(&written).get("predicted"),
        Some(
            &serde_json::json!({"p_alive": 0.9, "orders_90d": 1.2, "churn_risk": "low",
                                  "next_order_date": "2026-03-20"})
        ),
        "{name}"
    );
    assert_eq!(attributes(&written)["vap"]["segment"], "reward", "{name}");
    // The next fit predicts no next order and no VAP: the old keys go, not merged into.
    let second = traits(
        Some(serde_json::json!({"p_alive": 0.2, "orders_90d": 0.1, "churn_risk": "high"})),
        None,
    );
    store.write_traits(&second, at(when)).await.unwrap();
    let rewritten = load(store, &everything()).await;
    let now_attributes = attributes(&rewritten);
    assert_eq!(
        now_attributes.get("predicted"),
        Some(&serde_json::json!({"p_alive": 0.2, "orders_90d": 0.1, "churn_risk": "high"})),
        "{name}"
    );
    assert_eq!(now_attributes.get("vap"), None, "{name}");
    assert_eq!(
        now_attributes.get("plan"),
        Some(&serde_json::json!("pro")),
        "{name}"
    );
    assert_eq!(now_attributes["rfm"]["segment"], "champions", "{name}");
    store.write_traits(&second, at(when)).await.unwrap();
    assert_eq!(
        load(store, &everything()).await.version,
        rewritten.version,
        "{name}: the same traits again change nothing"
    );
}

async fn the_same_key_twice_in_one_write_is_applied_in_turn<S: JourneyStore + Stage>(
    store: &S,
    name: &str,
) {
    // PostgreSQL refuses a key twice in one upsert; its adapter merges the rows first, to
    // what SQLite's rows applied in turn (and the memory store) leave.
    seed_ada(store, "2026-03-02T08:00:00Z").await;
    let wf = crate::helpers::example("welcome_series");
    let entered = trellis::engine::Enrollment::new(
        "welcome_series:ada:1".to_owned(),
        &wf,
        ada(),
        None,
        at("2026-03-02T08:00:00Z"),
    );
    let mut exited = entered.clone();
    exited.status = trellis::engine::Status::Exited {
        reason: trellis::engine::ExitReason::Completed,
        at: at("2026-03-02T08:00:00Z"),
    };
    let twice = CustomerWrite {
        id: Some(ada()),
        messages: vec![
            // Held, then decided: the decision replaces the hold.
            message("held", MessageStatus::Held, None),
            message("held", MessageStatus::Pending, Some("2026-03-02T08:00:01Z")),
            // Pending twice: the first stands.
            message("kept", MessageStatus::Pending, Some("2026-03-02T08:00:02Z")),
            message("kept", MessageStatus::Pending, Some("2026-03-02T08:00:03Z")),
        ],
        enrollments: vec![entered, exited],
        fires: vec![
            FireWrite::Schedule {
                workflow_id: "weekly_newsletter".into(),
                at: Some(at("2026-03-09T09:00:00Z")),
            },
            FireWrite::Schedule {
                workflow_id: "weekly_newsletter".into(),
                at: Some(at("2026-03-16T09:00:00Z")),
            },
        ],
        ..CustomerWrite::default()
    };
    write(store, twice, "2026-03-02T08:00:00Z").await;
    let state = load(store, &everything()).await;
    let mut sends = state.cap_sends.clone();
    sends.sort();
    assert_eq!(
        sends,
        [
            (Channel::Email, at("2026-03-02T08:00:01Z")),
            (Channel::Email, at("2026-03-02T08:00:02Z"))
        ],
        "{name}"
    );
    assert!(state.enrollments.is_empty(), "{name}: the exit came last");
    assert_eq!(
        state.last_entered.get("welcome_series"),
        Some(&at("2026-03-02T08:00:00Z")),
        "{name}"
    );
    assert_eq!(
        store.next_due().await.unwrap(),
        Some(at("2026-03-16T09:00:00Z")),
        "{name}: the later schedule, written last"
    );
}

/// Registers and pauses workflows, as `serve` does at start and the API's pause does: the
/// SQL stores keep a `workflows` row, the memory store only the paused set.
trait Workflows {
    async fn register(&self, id: &str, now: Timestamp);
    async fn pause(&self, id: &str, paused: bool);
}

impl Workflows for MemoryStore {
    async fn register(&self, _id: &str, _now: Timestamp) {}

    async fn pause(&self, id: &str, paused: bool) {
        self.set_paused(id, paused);
    }
}

impl Workflows for trellis::store::Store {
    async fn register(&self, id: &str, now: Timestamp) {
        let mut tx = self.begin().await.unwrap();
        tx.register_workflow(id, "v1", "source", "path", now)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }

    async fn pause(&self, id: &str, paused: bool) {
        let mut tx = self.begin().await.unwrap();
        assert!(tx.set_paused(id, paused).await.unwrap());
        tx.commit().await.unwrap();
    }
}

impl Workflows for trellis::store::PgStore {
    async fn register(&self, id: &str, now: Timestamp) {
        let mut tx = self.begin().await.unwrap();
        tx.register_workflow(id, "v1", "source", "path", now)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }

    async fn pause(&self, id: &str, paused: bool) {
        let mut tx = self.begin().await.unwrap();
        assert!(tx.set_paused(id, paused).await.unwrap());
        tx.commit().await.unwrap();
    }
}

/// The ids of the enrollments due at `now`, at most `limit`.
async fn due_ids<S: JourneyStore>(store: &S, now: &str, limit: u32) -> Vec<String> {
    let mut tx = store.begin().await.unwrap();
    let due = tx.due_enrollments(at(now), limit).await.unwrap();
    tx.end_unwritten().await.unwrap();
    due.into_iter().map(|e| e.id).collect()
}

async fn wake_ups_come_due_earliest_first_and_a_paused_workflows_wait<
    S: JourneyStore + Stage + Workflows,
>(
    store: &S,
    name: &str,
) {
    let now = at("2026-03-02T08:00:00Z");
    seed_ada(store, "2026-03-02T08:00:00Z").await;
    store.register("welcome_series", now).await;
    store.register("cart_abandonment", now).await;
    let waiting = |id: &str, workflow: &str, wake: &str| {
        let mut e = trellis::engine::Enrollment::new(
            id.to_owned(),
            &crate::helpers::example(workflow),
            ada(),
            None,
            now,
        );
        e.status = trellis::engine::Status::Waiting {
            node: trellis::model::NodeId::parse("wait".to_owned()).unwrap(),
            wake_at: at(wake),
        };
        e
    };
    write(
        store,
        CustomerWrite {
            id: Some(ada()),
            enrollments: vec![
                waiting("cart:ada:1", "cart_abandonment", "2026-03-02T10:00:00Z"),
                waiting("welcome:ada:1", "welcome_series", "2026-03-02T09:00:00Z"),
            ],
            ..CustomerWrite::default()
        },
        "2026-03-02T08:00:00Z",
    )
    .await;
    assert_eq!(
        store.next_due().await.unwrap(),
        Some(at("2026-03-02T09:00:00Z")),
        "{name}"
    );
    assert!(
        due_ids(store, "2026-03-02T08:30:00Z", 10).await.is_empty(),
        "{name}"
    );
    assert_eq!(
        due_ids(store, "2026-03-02T11:00:00Z", 10).await,
        ["welcome:ada:1", "cart:ada:1"],
        "{name}"
    );
    assert_eq!(
        due_ids(store, "2026-03-02T11:00:00Z", 1).await,
        ["welcome:ada:1"],
        "{name}"
    );
    store.pause("welcome_series", true).await;
    assert_eq!(
        store.paused().await.unwrap(),
        BTreeSet::from(["welcome_series".to_owned()]),
        "{name}"
    );
    assert_eq!(
        due_ids(store, "2026-03-02T11:00:00Z", 10).await,
        ["cart:ada:1"],
        "{name}: a paused workflow's wake-ups wait"
    );
    assert_eq!(
        store.next_due().await.unwrap(),
        Some(at("2026-03-02T10:00:00Z")),
        "{name}"
    );
    store.pause("welcome_series", false).await;
    assert!(store.paused().await.unwrap().is_empty(), "{name}");
    assert_eq!(
        store.next_due().await.unwrap(),
        Some(at("2026-03-02T09:00:00Z")),
        "{name}"
    );
}

async fn the_sweep_pages_through_customers_in_bytewise_order<S: JourneyStore + Stage>(
    store: &S,
    name: &str,
) {
    // Uppercase sorts before lowercase bytewise; a locale's collation would interleave them.
    for id in ["bob", "Zoe", "ada", "Bea"] {
        let customer: Customer = serde_json::from_value(serde_json::json!({"id": id})).unwrap();
        store
            .put_customer(&customer, at("2026-03-02T08:00:00Z"))
            .await
            .unwrap();
    }
    let ids = |page: Vec<CustomerId>| {
        page.into_iter()
            .map(|c| c.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    let first = store.customer_ids_after(None, 3).await.unwrap();
    assert_eq!(ids(first.clone()), ["Bea", "Zoe", "ada"], "{name}");
    let rest = store
        .customer_ids_after(Some(first[2].as_str()), 3)
        .await
        .unwrap();
    assert_eq!(ids(rest), ["bob"], "{name}");
}

#[tokio::test]
async fn every_store_answers_the_journey_port_alike() {
    on_every_store!(a_write_planned_on_an_old_version_is_skipped_whole);
    on_every_store!(a_wave_loads_and_writes_as_its_customers_one_by_one);
    on_every_store!(events_arrive_in_order_once_per_id_and_leave_when_processed);
    on_every_store!(a_key_is_written_once_unless_its_row_is_held);
    on_every_store!(enrollments_load_active_in_entry_order_and_one_active_per_workflow);
    on_every_store!(a_due_occurrence_is_kept_when_rescheduled_and_handled_once);
    on_every_store!(segments_and_suppressions_load_as_written);
    on_every_store!(a_transaction_dropped_unfinished_writes_nothing);
    on_every_store!(orders_aggregate_and_unchanged_traits_leave_the_version_alone);
    on_every_store!(computed_attributes_are_replaced_whole_and_the_customers_own_stay);
    on_every_store!(the_same_key_twice_in_one_write_is_applied_in_turn);
    on_every_store!(wake_ups_come_due_earliest_first_and_a_paused_workflows_wait);
    on_every_store!(the_sweep_pages_through_customers_in_bytewise_order);
}

/// A store that, the first time the drive loads customers, changes one of them right after
/// the load, as an API request landing while the scheduler plans would.
struct ChangedWhilePlanning<S> {
    inner: S,
    change: std::sync::Mutex<Option<Customer>>,
}

impl<S: JourneyStore + Stage> JourneyStore for ChangedWhilePlanning<&S> {
    type Tx = S::Tx;

    async fn begin(&self) -> Result<S::Tx, trellis::store::Error> {
        self.inner.begin().await
    }

    async fn paused(&self) -> Result<BTreeSet<String>, trellis::store::Error> {
        self.inner.paused().await
    }

    async fn next_due(&self) -> Result<Option<Timestamp>, trellis::store::Error> {
        self.inner.next_due().await
    }

    async fn load_customers(
        &self,
        ids: &[CustomerId],
        spec: &LoadSpec,
    ) -> Result<Vec<CustomerState>, trellis::store::Error> {
        let states = self.inner.load_customers(ids, spec).await?;
        let change = self.change.lock().unwrap().take();
        if let Some(customer) = change {
            self.inner
                .put_customer(&customer, at("2026-03-02T15:00:00Z"))
                .await?;
        }
        Ok(states)
    }

    async fn customer_ids_after(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<CustomerId>, trellis::store::Error> {
        self.inner.customer_ids_after(after, limit).await
    }

    async fn order_stats(&self) -> Result<Vec<trellis::traits::OrderStats>, trellis::store::Error> {
        self.inner.order_stats().await
    }

    async fn write_traits(
        &self,
        traits: &[trellis::traits::Traits],
        now: Timestamp,
    ) -> Result<(), trellis::store::Error> {
        self.inner.write_traits(traits, now).await
    }
}

async fn an_opt_out_made_while_the_scheduler_plans_stops_the_send<S: JourneyStore + Stage>(
    store: &S,
    name: &str,
) {
    let now = at("2026-03-02T15:00:00Z");
    let ada: Customer = serde_json::from_value(serde_json::json!({
        "id": "ada", "email": "ada@example.com", "consent": {"email": true}
    }))
    .unwrap();
    store.put_customer(&ada, now).await.unwrap();
    store
        .insert_event(&ada.id, &event("signup", None, "2026-03-02T15:00:00Z"), now)
        .await
        .unwrap();
    let mut opted_out = ada.clone();
    opted_out.consent.email = false;
    let racing = ChangedWhilePlanning {
        inner: store,
        change: std::sync::Mutex::new(Some(opted_out)),
    };
    let workflow = crate::helpers::example("welcome_series");
    let shell = trellis::simulate::shell(
        &[workflow],
        std::sync::Arc::new(crate::helpers::templates()),
        &Default::default(),
    );
    let nothing = |_: &trellis::journey::TickReport| {};
    let mut sink = trellis::journey::Sink {
        committed: &nothing,
        journal: None,
    };
    let report = trellis::journey::drive::tick(&racing, &shell, 200, now, &mut sink)
        .await
        .unwrap();
    // Planned on the old profile, the first write was skipped; the next round planned on the
    // opt-out: the welcome is suppressed, never queued.
    assert_eq!(
        (report.events, report.messages),
        (1, 0),
        "{name}: {report:?}"
    );
    let state = load(store, &everything()).await;
    assert!(state.cap_sends.is_empty(), "{name}: no send was queued");
    assert_eq!(
        state.enrollments.len(),
        1,
        "{name}: the customer still entered, once"
    );
}

#[tokio::test]
async fn a_profile_changed_between_load_and_write_is_planned_again() {
    on_every_store!(an_opt_out_made_while_the_scheduler_plans_stops_the_send);
}
