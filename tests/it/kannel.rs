//! SMS through a real Kannel gateway with a fake SMS centre, and its delivery reports.

use std::time::Duration;

use jiff::SignedDuration;
use serde_json::json;

use crate::app::{KannelGateway, serve_on, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sms_goes_through_kannel_to_the_sms_centre_and_its_delivery_report_is_recorded() {
    let kannel = KannelGateway::start("kannel-secret");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let public = format!("http://{}", listener.local_addr().unwrap());
    let app = spawn_app(&[
        "--kannel-url",
        &kannel.url(),
        "--kannel-password",
        "kannel-secret",
        "--sms-from",
        "+15550001111",
        "--public-url",
        &public,
    ])
    .await;
    serve_on(app.router.clone(), listener).await;

    app.call("PUT", "/v1/customers/ada", Some(json!({
        "email": "ada@example.com", "phone": "+1 (415) 555-0101", "consent": {"email": true, "sms": true}
    }))).await;
    app.call("POST", "/v1/events", Some(json!({"customer_id": "ada", "name": "cart_updated", "properties": {"total": 42, "items": []}}))).await;
    app.settle().await;
    app.advance(SignedDuration::from_hours(1));
    app.settle().await;
    app.advance(SignedDuration::from_hours(23));
    let (_, drained) = app.settle().await;
    assert_eq!(drained.sent, 1, "{drained:?}");

    let mut received = Vec::new();
    let mut delivery = json!(null);
    for _ in 0..300 {
        received = kannel.received_from("+15550001111");
        let (_, view) = app.call("GET", "/v1/customers/ada", None).await;
        delivery = view["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["channel"] == "sms")
            .unwrap()["delivery_status"]
            .clone();
        if !received.is_empty() && delivery == "delivered" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].0, "+14155550101", "normalised to E.164");
    assert!(
        received[0]
            .1
            .starts_with("text Acme: your cart ($42.00) is saved"),
        "{received:?}"
    );
    assert_eq!(delivery, "delivered");
}

#[tokio::test]
async fn a_delivery_report_with_a_forged_signature_is_refused() {
    let app = spawn_app(&[]).await;
    let (status, body) = app
        .raw(
            "GET",
            "/kannel/dlr?key=abc&sig=0000&status=1",
            None,
            "",
            String::new(),
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["error"].clone()),
        (401, json!("unauthorized"))
    );
    let sig = trellis::unsubscribe::sign_value(&app.service.api.unsubscribe_key, "dlr", "abc");
    let (status, _) = app
        .raw(
            "GET",
            &format!("/kannel/dlr?key=abc&sig={sig}&status=1"),
            None,
            "",
            String::new(),
        )
        .await;
    assert_eq!(
        status.as_u16(),
        404,
        "a signed report for an unknown message"
    );
}

#[tokio::test]
async fn an_interim_delivery_report_arriving_after_the_final_one_does_not_replace_it() {
    use trellis::channels::sms_kannel::dlr_status;
    use trellis::store::{MessageStatus, NewMessage, Payload};
    let (store, _dir) = trellis::store::testing::temp_store().await;
    let now = "2026-01-01T00:00:00Z".parse().unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.insert_message(
        &NewMessage {
            key: "k1".into(),
            enrollment_id: "e".into(),
            workflow_id: "w".into(),
            node: "n".into(),
            customer_id: "ada".into(),
            template: Some("t".into()),
            status: MessageStatus::Pending,
            payload: Payload::Sms {
                to: "+14155550101".into(),
                body: "hi".into(),
            },
            note: None,
            transactional: false,
            cap: None,
        },
        now,
    )
    .await
    .unwrap();
    for status in [1, 8, 4] {
        let (name, meaning) = dlr_status(status);
        assert!(
            tx.record_delivery_report("k1", name, meaning, now)
                .await
                .unwrap()
        );
    }
    let (name, meaning) = dlr_status(8);
    assert!(
        !tx.record_delivery_report("unknown-key", name, meaning, now)
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();
    let messages = store
        .messages_of(&trellis::model::CustomerId::parse("ada").unwrap())
        .await
        .unwrap();
    assert_eq!(messages[0].delivery_status.as_deref(), Some("delivered"));
}
