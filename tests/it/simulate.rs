//! The shipped examples, run through the simulator, give exactly these timelines.

use trellis::simulate::Options;

use crate::helpers::{at, customer, events, example, inline, lines, timeline};

const ADA: &str = r#"{"id": "ada", "email": "ada@example.com", "phone": "+14155550101",
    "timezone": "America/New_York", "attributes": {"first_name": "Ada", "plan": "free"},
    "consent": {"email": true, "sms": true}}"#;

fn no_options() -> Options {
    Options::default()
}

#[test]
fn welcome_series_nudges_a_free_customer_with_a_phone_by_sms_after_two_days() {
    let t = timeline(
        &example("welcome_series"),
        customer(ADA),
        events("2026-03-02T15:00:00Z signup"),
        no_options(),
    );
    insta::assert_snapshot!(t, @r#"
    2026-03-02T15:00:00Z  enter      welcome
    2026-03-02T15:00:00Z  send       welcome          email welcome to ada@example.com: "Welcome to Acme, Ada"
    2026-03-02T15:00:00Z  enter      wait_two_days
    2026-03-02T15:00:00Z  wait       wait_two_days    until 2026-03-04T15:00:00Z (2026-03-04 10:00 EST)
    2026-03-04T15:00:00Z  enter      engaged
    2026-03-04T15:00:00Z  enter      nudge
    2026-03-04T15:00:00Z  send       nudge            sms nudge to +14155550101
    2026-03-04T15:00:00Z  enter      done
    2026-03-04T15:00:00Z  exit       done             completed
    "#);
}

#[test]
fn welcome_series_sends_tips_to_a_pro_customer() {
    let pro = ADA.replace(r#""plan": "free""#, r#""plan": "pro""#);
    let t = timeline(
        &example("welcome_series"),
        customer(&pro),
        events("2026-03-02T15:00:00Z signup"),
        no_options(),
    );
    insta::assert_snapshot!(t, @r#"
    2026-03-02T15:00:00Z  enter      welcome
    2026-03-02T15:00:00Z  send       welcome          email welcome to ada@example.com: "Welcome to Acme, Ada"
    2026-03-02T15:00:00Z  enter      wait_two_days
    2026-03-02T15:00:00Z  wait       wait_two_days    until 2026-03-04T15:00:00Z (2026-03-04 10:00 EST)
    2026-03-04T15:00:00Z  enter      engaged
    2026-03-04T15:00:00Z  enter      tips
    2026-03-04T15:00:00Z  send       tips             email tips to ada@example.com: "Three tips to get more from Acme"
    2026-03-04T15:00:00Z  enter      done
    2026-03-04T15:00:00Z  exit       done             completed
    "#);
}

#[test]
fn welcome_series_sends_tips_to_a_customer_who_ordered_meanwhile() {
    let t = timeline(
        &example("welcome_series"),
        customer(ADA),
        events("2026-03-02T15:00:00Z signup\n2026-03-03T09:00:00Z order_completed value=20"),
        no_options(),
    );
    assert!(t.contains("send       tips"), "{t}");
    assert!(!t.contains("nudge"), "{t}");
}

#[test]
fn welcome_series_exits_quietly_for_a_customer_without_sms_consent() {
    let no_sms = ADA.replace(r#""sms": true"#, r#""sms": false"#);
    let t = timeline(
        &example("welcome_series"),
        customer(&no_sms),
        events("2026-03-02T15:00:00Z signup"),
        no_options(),
    );
    insta::assert_snapshot!(t, @r#"
    2026-03-02T15:00:00Z  enter      welcome
    2026-03-02T15:00:00Z  send       welcome          email welcome to ada@example.com: "Welcome to Acme, Ada"
    2026-03-02T15:00:00Z  enter      wait_two_days
    2026-03-02T15:00:00Z  wait       wait_two_days    until 2026-03-04T15:00:00Z (2026-03-04 10:00 EST)
    2026-03-04T15:00:00Z  enter      engaged
    2026-03-04T15:00:00Z  enter      done
    2026-03-04T15:00:00Z  exit       done             completed
    "#);
}

#[test]
fn cart_abandonment_reminds_by_email_after_an_hour_and_by_sms_a_day_later() {
    let t = timeline(
        &example("cart_abandonment"),
        customer(ADA),
        events(
            r#"2026-04-14T10:00:00Z cart_updated total=114 items=[{"name":"Trail_shoes","quantity":1,"price":89},{"name":"Socks","quantity":2,"price":12.5}]"#,
        ),
        no_options(),
    );
    insta::assert_snapshot!(t, @r#"
    2026-04-14T10:00:00Z  enter      wait_for_order
    2026-04-14T10:00:00Z  wait       wait_for_order   until 2026-04-14T11:00:00Z (2026-04-14 07:00 EDT)
    2026-04-14T11:00:00Z  enter      reminder
    2026-04-14T11:00:00Z  send       reminder         email cart_reminder to ada@example.com: "You left something in your cart"
    2026-04-14T11:00:00Z  enter      wait_a_day
    2026-04-14T11:00:00Z  wait       wait_a_day       until 2026-04-15T10:00:00Z (2026-04-15 06:00 EDT)
    2026-04-15T10:00:00Z  enter      last_call
    2026-04-15T10:00:00Z  send       last_call        sms cart_sms to +14155550101
    2026-04-15T10:00:00Z  enter      done
    2026-04-15T10:00:00Z  exit       done             completed
    "#);
}

#[test]
fn cart_reminder_lists_the_cart_items_with_prices_escaping_html_only_in_html() {
    let cart = events(r#"2026-04-14T10:00:00Z cart_updated total=114 items=[{"name":"Shoes_<b>","quantity":1,"price":89},{"name":"Socks","quantity":2,"price":12.5}]"#).remove(0);
    let context = trellis::template::render_context(
        &customer(ADA),
        Some(&cart),
        ("cart_abandonment", "Cart"),
        "https://x.invalid/u",
    );
    let email = crate::helpers::templates()
        .render_email("cart_reminder", &context)
        .unwrap();
    assert_eq!(email.subject, "You left something in your cart");
    insta::assert_snapshot!(email.text, @"
    Hi Ada,
    Your cart is still waiting:
    - Shoes_<b> x 1: $89.00
    - Socks x 2: $12.50
    Total: $114.00

    Complete your order: https://acme.example/cart

    --
    You receive this because you have an account with Acme.
    Unsubscribe: https://x.invalid/u
    ");
    assert!(
        email.html.contains("Shoes_&lt;b&gt; &times; 1"),
        "{}",
        email.html
    );
    assert!(
        email
            .html
            .contains(r#"<a href="https://x.invalid/u">Unsubscribe</a>"#),
        "{}",
        email.html
    );
}

#[test]
fn cart_reminder_is_skipped_when_the_order_arrives_within_the_hour() {
    let t = timeline(
        &example("cart_abandonment"),
        customer(ADA),
        events(
            "2026-04-14T10:00:00Z cart_updated total=59 items=[]\n2026-04-14T10:40:00Z order_completed value=59",
        ),
        no_options(),
    );
    insta::assert_snapshot!(t, @"
    2026-04-14T10:00:00Z  enter      wait_for_order
    2026-04-14T10:00:00Z  wait       wait_for_order   until 2026-04-14T11:00:00Z (2026-04-14 07:00 EDT)
    2026-04-14T10:40:00Z  goal       wait_for_order   order_completed reached, value 59.00
    2026-04-14T10:40:00Z  exit       wait_for_order   goal reached
    ");
}

#[test]
fn an_order_after_the_reminder_ends_the_journey_before_the_sms() {
    let t = timeline(
        &example("cart_abandonment"),
        customer(ADA),
        events(
            "2026-04-14T10:00:00Z cart_updated total=59 items=[]\n2026-04-14T18:00:00Z order_completed value=61.5",
        ),
        no_options(),
    );
    assert!(t.contains("send       reminder"), "{t}");
    assert!(
        t.contains("goal       wait_a_day       order_completed reached, value 61.50"),
        "{t}"
    );
    assert!(!t.contains("last_call"), "{t}");
}

#[test]
fn winback_waits_from_a_saturday_to_monday_10_00_in_the_customers_zone() {
    let berlin = r#"{"id": "grace", "email": "grace@example.com", "timezone": "Europe/Berlin",
        "consent": {"email": true}}"#;
    let t = timeline(
        &example("winback"),
        customer(berlin),
        events("2026-06-06T16:00:00Z $segment_entered segment=at_risk"),
        no_options(),
    );
    insta::assert_snapshot!(t, @r#"
    2026-06-06T16:00:00Z  enter      next_weekday_morning
    2026-06-06T16:00:00Z  wait       next_weekday_morning until 2026-06-08T08:00:00Z (2026-06-08 10:00 CEST)
    2026-06-08T08:00:00Z  enter      offer
    2026-06-08T08:00:00Z  send       offer            email winback_offer to grace@example.com: "We miss you, friend: 20% off this week"
    2026-06-08T08:00:00Z  enter      done
    2026-06-08T08:00:00Z  exit       done             completed
    "#);
}

#[test]
fn winback_sends_the_same_weekday_when_the_customer_enters_before_10_00() {
    let t = timeline(
        &example("winback"),
        customer(ADA),
        // Tuesday 08:00 in New York.
        events(
            "2026-06-09T12:00:00Z $segment_entered segment=at_risk\n2026-06-09T12:30:00Z $segment_entered segment=vip",
        ),
        no_options(),
    );
    assert!(t.contains("2026-06-09T14:00:00Z  send       offer"), "{t}");
}

#[test]
fn birthday_greeting_goes_out_at_09_00_new_york_on_the_daylight_saving_start_day() {
    let with_birthday = ADA.replace(
        r#""plan": "free""#,
        r#""plan": "free", "birthday": "1990-03-08", "coupon_code": "BDAY-15", "coupon_expires": "2026-03-31""#,
    );
    let t = timeline(
        &example("birthday"),
        customer(&with_birthday),
        vec![],
        Options {
            start: Some(at("2026-03-01T00:00:00Z")),
            until: Some(at("2027-03-09T00:00:00Z")),
            ..Options::default()
        },
    );
    // 2026-03-08 is the day New York moves to EDT (UTC-4), so 09:00 local is 13:00 UTC.
    // In 2027 daylight saving starts on 03-14, so 2027-03-08 09:00 is still EST: 14:00 UTC.
    insta::assert_snapshot!(t, @r#"
    2026-03-08T13:00:00Z  enter      greeting
    2026-03-08T13:00:00Z  send       greeting         email birthday to ada@example.com: "Happy birthday, Ada!"
    2026-03-08T13:00:00Z  enter      done
    2026-03-08T13:00:00Z  exit       done             completed
    2027-03-08T14:00:00Z  enter      greeting
    2027-03-08T14:00:00Z  send       greeting         email birthday to ada@example.com: "Happy birthday, Ada!"
    2027-03-08T14:00:00Z  enter      done
    2027-03-08T14:00:00Z  exit       done             completed
    "#);
}

#[test]
fn a_09_00_wait_on_the_daylight_saving_start_day_sends_at_13_00_utc() {
    let wf = inline(
        r#"
id: morning
name: Next morning
trigger: { event: { name: signup } }
start: morning
nodes:
  morning: { wait: { until: "09:00", next: hello } }
  hello: { send_email: { template: welcome, next: done } }
  done: exit
"#,
    );
    let t = timeline(
        &wf,
        customer(ADA),
        events("2026-03-07T20:00:00Z signup"),
        no_options(),
    );
    assert!(t.contains("2026-03-08T13:00:00Z  send       hello"), "{t}");
    assert!(
        t.contains("until 2026-03-08T13:00:00Z (2026-03-08 09:00 EDT)"),
        "{t}"
    );
}

#[test]
fn weekly_newsletter_reaches_tokyo_and_los_angeles_each_at_local_09_00_monday() {
    let wf = example("weekly_newsletter");
    let window = Options {
        start: Some(at("2026-06-01T00:00:00Z")),
        until: Some(at("2026-06-09T00:00:00Z")),
        ..Options::default()
    };
    let tokyo = r#"{"id": "kenji", "email": "kenji@example.jp", "timezone": "Asia/Tokyo", "consent": {"email": true}}"#;
    let la = r#"{"id": "lucy", "email": "lucy@example.com", "timezone": "America/Los_Angeles", "consent": {"email": true}}"#;
    let sends = |c: &str| -> Vec<String> {
        lines(&wf, customer(c), vec![], window.clone())
            .into_iter()
            .filter(|l| l.kind == "send")
            .map(|l| l.at.to_string())
            .collect()
    };
    // Monday 2026-06-01 09:00 JST is 00:00 UTC, but the window starts at that instant, so
    // the first Tokyo send is the next Monday; 09:00 PDT is 16:00 UTC.
    assert_eq!(sends(tokyo), ["2026-06-08T00:00:00Z"]);
    assert_eq!(sends(la), ["2026-06-01T16:00:00Z", "2026-06-08T16:00:00Z"]);
}

#[test]
fn weekly_newsletter_skips_customers_without_email_consent() {
    let t = timeline(
        &example("weekly_newsletter"),
        customer(r#"{"id": "x", "email": "x@example.com"}"#),
        vec![],
        Options {
            start: Some(at("2026-06-01T00:00:00Z")),
            until: Some(at("2026-06-02T00:00:00Z")),
            ..Options::default()
        },
    );
    insta::assert_snapshot!(t, @"2026-06-01T09:00:00Z  skip       -                not in the audience");
}

#[test]
fn a_resent_event_with_the_same_id_enrolls_once() {
    let wf = inline(
        r#"
id: every
name: Every order
trigger: { event: { name: order_completed } }
entry: every_time
start: thanks
nodes:
  thanks: { send_email: { template: welcome, next: done } }
  done: exit
"#,
    );
    let script = "2026-01-01T10:00:00Z order_completed id=o1\n2026-01-01T10:05:00Z order_completed id=o1\n2026-01-01T11:00:00Z order_completed id=o2";
    let sends = lines(&wf, customer(ADA), events(script), no_options())
        .into_iter()
        .filter(|l| l.kind == "send")
        .count();
    assert_eq!(sends, 2);
}

#[test]
fn a_missing_template_variable_shows_as_an_error_not_an_empty_string() {
    let wf = example("birthday");
    // Ada has a birthday but no coupon_code: strict rendering refuses.
    let with_birthday = ADA.replace(r#""plan": "free""#, r#""birthday": "1990-03-08""#);
    let t = timeline(
        &wf,
        customer(&with_birthday),
        vec![],
        Options {
            start: Some(at("2026-03-01T00:00:00Z")),
            until: Some(at("2026-03-10T00:00:00Z")),
            ..Options::default()
        },
    );
    // The error names the file, line and column, and the variable.
    assert!(
        t.contains("error      greeting         rendering ")
            && t.contains(
                "templates/birthday/html.hbs:3:46: variable customer.attributes.coupon_code is missing"
            ),
        "{t}"
    );
}

#[test]
fn a_matched_event_feeds_later_branches_webhooks_and_updates_and_date_waits_use_attributes() {
    let wf = inline(
        r#"
id: renewal
name: Renewal
category: transactional
trigger: { event: { name: subscribed } }
start: await_payment
nodes:
  await_payment:
    wait_for_event: { event: payment, where: [{ name: amount, gt: 0 }], timeout: 2d, on_event: big, on_timeout: done }
  big:
    branch:
      cases: [{ when: { event: { name: amount, gte: 100 } }, next: notify }]
      else: done
  notify:
    webhook:
      url: "https://crm.example/customers/{{customer.id}}/payments/{{event.properties.payment_id}}"
      body: { amount: "{{event.properties.amount}}" }
      next: mark
  mark:
    update: { set: { tier: big_spender }, add_tags: [paid], next: before_renewal }
  before_renewal:
    wait: { until_attribute: renews_on, offset: -7d, at: "10:00", next: remind }
  remind:
    send_email: { template: welcome, next: done }
  done: exit
"#,
    );
    let renewing = ADA.replace(
        r#""plan": "free""#,
        r#""plan": "free", "renews_on": "2026-09-15""#,
    );
    let script = "2026-06-01T12:00:00Z subscribed\n2026-06-01T13:00:00Z payment amount=0\n2026-06-01T14:00:00Z payment amount=120 payment_id=p_9";
    let t = timeline(
        &wf,
        customer(&renewing),
        events(script),
        no_options_until("2026-12-01T00:00:00Z"),
    );
    insta::assert_snapshot!(t, @r#"
    2026-06-01T12:00:00Z  enter      await_payment
    2026-06-01T12:00:00Z  wait       await_payment    until 2026-06-03T12:00:00Z (2026-06-03 08:00 EDT)
    2026-06-01T14:00:00Z  enter      big
    2026-06-01T14:00:00Z  enter      notify
    2026-06-01T14:00:00Z  webhook    notify           POST https://crm.example/customers/ada/payments/p_9
    2026-06-01T14:00:00Z  enter      mark
    2026-06-01T14:00:00Z  update     mark             {"add_tags":["paid"],"set":{"tier":"big_spender"}}
    2026-06-01T14:00:00Z  enter      before_renewal
    2026-06-01T14:00:00Z  wait       before_renewal   until 2026-09-08T14:00:00Z (2026-09-08 10:00 EDT)
    2026-09-08T14:00:00Z  enter      remind
    2026-09-08T14:00:00Z  send       remind           email welcome to ada@example.com: "Welcome to Acme, Ada"
    2026-09-08T14:00:00Z  enter      done
    2026-09-08T14:00:00Z  exit       done             completed
    "#);
}

fn no_options_until(until: &str) -> Options {
    Options {
        start: None,
        until: Some(at(until)),
        ..Options::default()
    }
}

#[test]
fn a_zone_less_birthday_fires_at_09_00_in_the_default_zone_as_the_runtime_does() {
    let zoneless = ADA
        .replace(r#""timezone": "America/New_York", "#, "")
        .replace(
            r#""plan": "free""#,
            r#""plan": "free", "birthday": "1990-06-08", "coupon_code": "BDAY-15", "coupon_expires": "2026-06-30""#,
        );
    let policy = trellis::engine::policy::SendPolicy {
        default_timezone: Some(jiff::tz::TimeZone::get("Asia/Tokyo").unwrap()),
        ..Default::default()
    };
    let sends: Vec<String> = lines(
        &example("birthday"),
        customer(&zoneless),
        vec![],
        Options {
            start: Some(at("2026-06-01T00:00:00Z")),
            until: Some(at("2026-06-09T00:00:00Z")),
            policy,
            ..Options::default()
        },
    )
    .iter()
    .filter(|l| l.kind == "send")
    .map(|l| l.at.to_string())
    .collect();
    // 09:00 in Tokyo (UTC+9) is 00:00 UTC.
    assert_eq!(sends, ["2026-06-08T00:00:00Z"]);
}

/// The segments defined beside the shipped workflows.
fn shipped_segments() -> Vec<trellis::workflow::SegmentDef> {
    let (segments, problems) =
        trellis::workflow::load_segments(&crate::helpers::root().join("workflows"));
    assert!(problems.is_empty(), "{problems:?}");
    segments
}

#[test]
fn winback_starts_when_the_sweep_finds_the_customer_at_risk_computed_from_segments_yaml() {
    // One order, then nothing: `at_risk` (a buyer with no order in 60 days) becomes true with
    // time alone, so the daily sweep finds it, as `serve`'s would; no scripted segment event.
    let berlin = r#"{"id": "grace", "email": "grace@example.com", "timezone": "Europe/Berlin",
        "consent": {"email": true}}"#;
    let t = timeline(
        &example("winback"),
        customer(berlin),
        events("2026-04-01T12:00:00Z order_completed value=40"),
        Options {
            until: Some(at("2026-06-10T00:00:00Z")),
            segments: shipped_segments(),
            segment_refresh: Some(std::time::Duration::from_secs(86_400)),
            ..Options::default()
        },
    );
    // The sweep of 1 June 12:00 UTC is the first with the order more than 60 days back.
    insta::assert_snapshot!(t, @r#"
    2026-06-01T12:00:00Z  enter      next_weekday_morning
    2026-06-01T12:00:00Z  wait       next_weekday_morning until 2026-06-02T08:00:00Z (2026-06-02 10:00 CEST)
    2026-06-02T08:00:00Z  enter      offer
    2026-06-02T08:00:00Z  send       offer            email winback_offer to grace@example.com: "We miss you, friend: 20% off this week"
    2026-06-02T08:00:00Z  enter      done
    2026-06-02T08:00:00Z  exit       done             completed
    "#);
}

#[test]
fn a_scripted_event_for_a_defined_segment_is_shown_as_skipped_not_applied() {
    let t = timeline(
        &example("winback"),
        customer(ADA),
        events("2026-06-06T16:00:00Z $segment_entered segment=at_risk"),
        Options {
            segments: shipped_segments(),
            ..Options::default()
        },
    );
    assert!(
        t.contains("skip") && t.contains("segment at_risk is defined"),
        "{t}"
    );
    assert!(!t.contains("send"), "{t}");
}

/// A segment over a computed trait, and a journey it starts.
const LAPSING: &str =
    "segments:\n  lapsing:\n    when: { attribute: { name: lifecycle, eq: at_risk } }\n";
const CHECK_IN: &str = "id: check_in\nname: Check-in\ntrigger: { segment_entered: lapsing }\nentry: once\nstart: mail\nnodes:\n  mail: { send_email: { template: welcome, next: done } }\n  done: exit\n";

#[test]
fn the_sweep_computes_the_lifecycle_trait_and_a_segment_over_it_starts_a_journey() {
    // One order on 1 March. The lifecycle trait (active within 90 days, at risk within 180)
    // is recomputed by each daily sweep, as in `serve`; the sweep that first finds Ada at
    // risk enters her in `lapsing`, and the journey starts. Nothing is scripted.
    let (segments, problems) =
        trellis::workflow::parse_segments(std::path::Path::new("segments.yaml"), LAPSING);
    assert!(problems.is_empty(), "{problems:?}");
    let t = timeline(
        &inline(CHECK_IN),
        customer(ADA),
        events("2026-03-01T12:00:00Z order_completed value=40"),
        Options {
            until: Some(at("2026-06-10T00:00:00Z")),
            segments,
            segment_refresh: Some(std::time::Duration::from_secs(86_400)),
            ..Options::default()
        },
    );
    insta::assert_snapshot!(t, @r#"
    2026-05-30T12:00:00Z  enter      mail
    2026-05-30T12:00:00Z  send       mail             email welcome to ada@example.com: "Welcome to Acme, Ada"
    2026-05-30T12:00:00Z  enter      done
    2026-05-30T12:00:00Z  exit       done             completed
    "#);
}

#[test]
fn a_zone_less_customers_dates_are_shown_in_the_default_zone_they_are_sent_in() {
    // 20:00 UTC on 30 June is already 1 July in Tokyo, the default zone the greeting is sent
    // at 09:00 of: the coupon's last day must read as Tokyo's, not UTC's.
    let zoneless = ADA
        .replace(r#""timezone": "America/New_York", "#, "")
        .replace(
            r#""plan": "free""#,
            r#""plan": "free", "birthday": "1990-06-08", "coupon_code": "BDAY-15", "coupon_expires": "2026-06-30T20:00:00Z""#,
        );
    let policy = trellis::engine::policy::SendPolicy {
        default_timezone: Some(jiff::tz::TimeZone::get("Asia/Tokyo").unwrap()),
        ..Default::default()
    };
    let send = lines(
        &example("birthday"),
        customer(&zoneless),
        vec![],
        Options {
            start: Some(at("2026-06-01T00:00:00Z")),
            until: Some(at("2026-06-09T00:00:00Z")),
            policy,
            ..Options::default()
        },
    )
    .into_iter()
    .find(|l| l.kind == "send")
    .expect("the greeting is sent");
    let body = send.fields["body"].as_str().unwrap_or_default().to_owned();
    assert!(body.contains("until July 1, 2026."), "{body}");
}
