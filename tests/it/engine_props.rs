//! Property tests: on generated workflows and event scripts the engine never panics, is
//! deterministic, ends every step in a wait or an exit within the node bound, and never
//! emits the same idempotency key twice.

use std::collections::BTreeSet;

use indexmap::IndexMap;
use proptest::prelude::*;
use serde_json::json;
use trellis::engine::{Effect, Enrollment, Facts, Input, MAX_NODES_PER_STEP, Status, Step, step};
use trellis::model::{Channel, Customer, CustomerId, Event, NodeId, WorkflowId};
use trellis::workflow::{
    Arm, Branch, Case, Comparison, Condition, Duration, EventTrigger, Located, Node, SendEmail,
    SendSms, Split, Trigger, Update, Wait, WaitForEvent, Workflow,
};

const EVENT_NAMES: [&str; 3] = ["signup", "order_completed", "cart_updated"];

fn id(i: usize) -> NodeId {
    NodeId::parse(format!("n{i}")).unwrap()
}

/// A node of a random kind whose edges point at nodes `0..n`, or (rarely) at a missing one.
fn node(n: usize) -> impl Strategy<Value = Node> {
    // n itself does not exist
    let target = (0..n + 1).prop_map(|i| Located::unlocated(id(i)));
    let minutes = 0i64..3000;
    prop_oneof![
        (minutes.clone(), target.clone()).prop_map(|(m, next)| Node::Wait(Wait {
            duration: Some(Duration::from_secs(m * 60)),
            until: None,
            weekdays: None,
            until_attribute: None,
            offset: None,
            at: None,
            next,
        })),
        (1i64..3000, 0..3usize, target.clone(), target.clone()).prop_map(
            |(m, e, on_event, on_timeout)| {
                Node::WaitForEvent(WaitForEvent {
                    event: EVENT_NAMES[e].into(),
                    filter: vec![],
                    timeout: Duration::from_secs(m * 60),
                    on_event,
                    on_timeout,
                })
            }
        ),
        (target.clone(), target.clone(), any::<bool>()).prop_map(|(yes, no, tagged)| Node::Branch(
            Branch {
                cases: vec![Case {
                    when: if tagged {
                        Condition::HasTag("t".into())
                    } else {
                        Condition::Attribute(Comparison {
                            name: "plan".into(),
                            eq: Some(json!("pro")),
                            ne: None,
                            gt: None,
                            gte: None,
                            lt: None,
                            lte: None,
                            one_of: None,
                            contains: None,
                            exists: None,
                        })
                    },
                    next: yes,
                }],
                otherwise: no,
            }
        )),
        (target.clone(), target.clone(), 0u32..50).prop_map(|(a, b, holdout)| Node::Split(Split {
            arms: vec![
                Arm {
                    name: "a".into(),
                    weight: 50,
                    next: a
                },
                Arm {
                    name: "b".into(),
                    weight: 50 - holdout,
                    next: b
                },
            ],
            holdout,
        })),
        target.clone().prop_map(|next| Node::SendEmail(SendEmail {
            template: "t".into(),
            from: None,
            reply_to: None,
            next
        })),
        target.clone().prop_map(|next| Node::SendSms(SendSms {
            template: "t".into(),
            next
        })),
        (target.clone(), any::<bool>()).prop_map(|(next, add)| Node::Update(Update {
            set: serde_json::Map::new(),
            unset: vec![],
            add_tags: if add { vec!["t".into()] } else { vec![] },
            remove_tags: if add { vec![] } else { vec!["t".into()] },
            next,
        })),
        Just(Node::Exit),
    ]
}

fn workflow() -> impl Strategy<Value = Workflow> {
    (1usize..9).prop_flat_map(|n| {
        (proptest::collection::vec(node(n), n), any::<bool>()).prop_map(
            move |(nodes, with_goal)| Workflow {
                id: WorkflowId::parse("generated").unwrap(),
                name: "generated".into(),
                description: None,
                category: Default::default(),
                trigger: Located::unlocated(Trigger::Event(EventTrigger {
                    name: "signup".into(),
                    filter: vec![],
                })),
                entry: Default::default(),
                quiet_hours: None,
                goal: with_goal.then(|| {
                    Located::unlocated(trellis::workflow::Goal {
                        event: "order_completed".into(),
                        filter: vec![],
                        value: Some("value".into()),
                    })
                }),
                start: Located::unlocated(id(0)),
                nodes: nodes
                    .into_iter()
                    .enumerate()
                    .map(|(i, node)| (id(i), Located::unlocated(node)))
                    .collect::<IndexMap<_, _>>(),
                source: Default::default(),
            },
        )
    })
}

/// (minutes after start, event name index)
fn script() -> impl Strategy<Value = Vec<(i64, usize)>> {
    proptest::collection::vec((0i64..20_000, 0..3usize), 0..12)
}

fn run(wf: &Workflow, script: &[(i64, usize)], customer: &Customer) -> Vec<Step> {
    let start: jiff::Timestamp = "2026-01-05T00:00:00Z".parse().unwrap();
    let mins = |m: i64| {
        start
            .checked_add(jiff::SignedDuration::from_mins(m))
            .unwrap()
    };
    let mut events: Vec<Event> = script
        .iter()
        .map(|(m, e)| Event {
            id: None,
            name: EVENT_NAMES[*e].into(),
            timestamp: mins(*m),
            properties: json!({"value": 10}).as_object().unwrap().clone(),
        })
        .collect();
    events.sort_by_key(|e| e.timestamp);
    let segments = BTreeSet::new();
    let mut current = customer.clone();
    let mut enrollment = Enrollment::new("e", wf, customer.id.clone(), None, start);
    let mut steps = Vec::new();
    let mut input = Input::Enter;
    let mut now = start;
    let mut pending = events.into_iter().peekable();
    for _ in 0..200 {
        let policy = trellis::engine::policy::SendPolicy::default();
        let facts = Facts {
            customer: &current,
            segments: &segments,
            history: &[],
            policy: &policy,
            recent_sends: &[],
        };
        let result = step(wf, &enrollment, &facts, &input, now);
        for effect in &result.effects {
            if let Effect::UpdateProfile { update, .. } = effect {
                trellis::engine::apply_update(update, &mut current);
            }
        }
        enrollment = result.enrollment.clone();
        steps.push(result);
        let wake = enrollment.next_wake();
        let next_event = pending.peek().map(|e| e.timestamp);
        match (wake, next_event) {
            (None, None) => break,
            (Some(w), Some(e)) if e <= w => {
                now = e;
                input = Input::Event(pending.next().unwrap());
            }
            (None, Some(e)) => {
                now = e;
                input = Input::Event(pending.next().unwrap());
            }
            (Some(w), _) => {
                now = w.max(now);
                input = Input::Wake;
            }
        }
        if !enrollment.is_active() {
            break;
        }
    }
    steps
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    #[test]
    fn the_engine_is_total_deterministic_bounded_and_never_repeats_a_key(wf in workflow(), script in script(), consent in any::<bool>()) {
        let customer = Customer {
            consent: trellis::model::Consent { email: consent, sms: true },
            email: Some("a@example.com".into()),
            phone: Some("+15550100".into()),
            ..Customer::minimal(CustomerId::parse("c1").unwrap())
        };
        let first = run(&wf, &script, &customer);
        let second = run(&wf, &script, &customer);
        prop_assert_eq!(&first, &second);

        let mut keys = BTreeSet::new();
        for (i, s) in first.iter().enumerate() {
            prop_assert!(s.path.len() <= MAX_NODES_PER_STEP);
            // After the first step nothing is New: every step ends waiting or exited.
            prop_assert!(i > 0 || !matches!(s.enrollment.status, Status::New));
            if let Status::Waiting { node, .. } = &s.enrollment.status {
                // A wait node: one that waits, or a zero wait, which parks for one round on
                // purpose (it ends the step) though loops do not count it as a wait.
                prop_assert!(
                    wf.node(node)
                        .is_some_and(|n| n.waits() || matches!(n, Node::Wait(_))),
                    "step {} waits at {}, which does not wait: {:?}",
                    i,
                    node,
                    s.enrollment.status
                );
            }
            for effect in &s.effects {
                let key = match effect {
                    Effect::Send(m) => Some(m.key.clone()),
                    Effect::Suppressed { key, .. } => Some(key.clone()),
                    _ => None,
                };
                if let Some(key) = key {
                    prop_assert!(keys.insert(key.clone()), "key {} emitted twice", key);
                }
                if let Effect::Send(m) = effect {
                    prop_assert!(m.channel != Channel::Email || consent);
                }
            }
        }
    }
}
