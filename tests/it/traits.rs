//! Computed traits on a generated base of 10,000 customers, checked against an independent
//! computation written here.

use std::collections::{BTreeMap, HashMap};

use jiff::{SignedDuration, Timestamp};
use trellis::model::{Customer, CustomerId, Event};

const N: usize = 10_000;

/// A small deterministic generator, so the data set is the same every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

#[derive(Debug, Clone)]
struct Orders {
    id: String,
    times: Vec<Timestamp>,
    values: Vec<f64>,
}

/// 1 + floor(5 × worse / n), counted with a map from value to how many have it.
fn independent_scores(values: &[(String, f64)]) -> HashMap<String, u8> {
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for (_, v) in values {
        *counts.entry((v * 1000.0).round() as i64).or_default() += 1;
    }
    let n = values.len();
    values
        .iter()
        .map(|(id, v)| {
            let key = (v * 1000.0).round() as i64;
            let worse: usize = counts.range(..key).map(|(_, c)| c).sum();
            (id.clone(), (1 + 5 * worse / n) as u8)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfm_value_tier_and_lifecycle_match_an_independent_computation_on_10000_customers() {
    let (store, _dir) = trellis::store::testing::temp_store().await;
    let now: Timestamp = "2026-06-01T00:00:00Z".parse().unwrap();
    let mut rng = Lcg(42);
    let mut all = Vec::with_capacity(N);
    let mut tx = store.begin().await.unwrap();
    for i in 0..N {
        let id = format!("c{i:05}");
        let customer_id = CustomerId::parse(&id).unwrap();
        tx.put_customer(&Customer::minimal(customer_id.clone()), now)
            .await
            .unwrap();
        let n_orders = [0, 0, 1, 1, 1, 2, 2, 3, 4, 6, 9][rng.next(11) as usize];
        let mut orders = Orders {
            id: id.clone(),
            times: vec![],
            values: vec![],
        };
        for _ in 0..n_orders {
            let at = now
                .checked_sub(SignedDuration::from_mins(
                    rng.next(400 * 24 * 60) as i64 + 1,
                ))
                .unwrap();
            let value = (rng.next(50_000) as f64) / 100.0;
            let mut properties = serde_json::Map::new();
            properties.insert("value".into(), serde_json::json!(value));
            tx.insert_event(
                &customer_id,
                &Event {
                    id: None,
                    name: "order_completed".into(),
                    timestamp: at,
                    properties,
                },
                now,
            )
            .await
            .unwrap();
            orders.times.push(at);
            orders.values.push(value);
        }
        all.push(orders);
    }
    tx.commit().await.unwrap();

    let scored =
        trellis::scheduler::recompute_traits(&store, trellis::traits::Lifecycle::default(), now)
            .await
            .unwrap();
    assert_eq!(scored, N);

    // The independent computation.
    let buyers: Vec<&Orders> = all.iter().filter(|o| !o.times.is_empty()).collect();
    let recency = independent_scores(
        &buyers
            .iter()
            .map(|o| {
                (
                    o.id.clone(),
                    o.times.iter().max().unwrap().as_millisecond() as f64 / 1000.0,
                )
            })
            .collect::<Vec<_>>(),
    );
    let frequency = independent_scores(
        &buyers
            .iter()
            .map(|o| (o.id.clone(), o.times.len() as f64))
            .collect::<Vec<_>>(),
    );
    let revenue = |o: &Orders| o.values.iter().sum::<f64>();
    let monetary = independent_scores(
        &buyers
            .iter()
            .map(|o| (o.id.clone(), revenue(o)))
            .collect::<Vec<_>>(),
    );
    let mut ranked: Vec<&Orders> = all.iter().collect();
    ranked.sort_by(|a, b| {
        revenue(b)
            .partial_cmp(&revenue(a))
            .unwrap()
            .then(a.id.cmp(&b.id))
    });
    let (platinum, gold, iron) = (N / 100, N * 5 / 100, N * 20 / 100);
    let tier: HashMap<&str, &str> = ranked
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let t = if revenue(o) == 0.0 {
                "lead"
            } else if i < platinum {
                "platinum"
            } else if i < gold {
                "gold"
            } else if i < iron {
                "iron"
            } else {
                "lead"
            };
            (o.id.as_str(), t)
        })
        .collect();

    let mut tiers_seen: BTreeMap<String, usize> = BTreeMap::new();
    for o in &all {
        let c = store
            .customer(&CustomerId::parse(&o.id).unwrap())
            .await
            .unwrap()
            .unwrap();
        let attr = |path: &str| c.field(path);
        assert_eq!(attr("value_tier").unwrap(), tier[o.id.as_str()], "{}", o.id);
        *tiers_seen
            .entry(tier[o.id.as_str()].to_owned())
            .or_default() += 1;
        let day = 86_400_000;
        let expected_stage = if o.times.is_empty()
            || (now.as_millisecond() - o.times.iter().min().unwrap().as_millisecond()) / day < 30
        {
            "new"
        } else {
            let since_last =
                (now.as_millisecond() - o.times.iter().max().unwrap().as_millisecond()) / day;
            if since_last < 90 {
                "active"
            } else if since_last < 180 {
                "at_risk"
            } else {
                "lapsed"
            }
        };
        assert_eq!(attr("lifecycle").unwrap(), expected_stage, "{}", o.id);
        if o.times.is_empty() {
            assert!(attr("rfm").is_none(), "{} has no orders", o.id);
            continue;
        }
        let (r, f, m) = (recency[&o.id], frequency[&o.id], monetary[&o.id]);
        assert_eq!(attr("rfm.recency").unwrap(), r, "{}", o.id);
        assert_eq!(attr("rfm.frequency").unwrap(), f, "{}", o.id);
        assert_eq!(attr("rfm.monetary").unwrap(), m, "{}", o.id);
        assert_eq!(
            attr("rfm.segment").unwrap(),
            trellis::traits::rfm_segment(r, f),
            "{}",
            o.id
        );
    }
    assert_eq!(
        (
            tiers_seen["platinum"],
            tiers_seen["gold"],
            tiers_seen["iron"]
        ),
        (100, 400, 1500),
        "{tiers_seen:?}"
    );
}
