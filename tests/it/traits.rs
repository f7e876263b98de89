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

    let (scored, _) =
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

/// A uniform draw in (0, 1).
fn uniform(rng: &mut Lcg) -> f64 {
    (rng.next(1 << 30) as f64 + 0.5) / (1u64 << 30) as f64
}

/// A Gamma(shape, rate) draw (Marsaglia and Tsang; shape < 1 boosted by `u^(1/shape)`).
fn gamma(rng: &mut Lcg, shape: f64, rate: f64) -> f64 {
    if shape < 1.0 {
        return gamma(rng, shape + 1.0, rate) * uniform(rng).powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        // A standard normal by Box and Muller.
        let z = (-2.0 * uniform(rng).ln()).sqrt() * (std::f64::consts::TAU * uniform(rng)).cos();
        let v = (1.0 + c * z).powi(3);
        if v > 0.0 && uniform(rng).ln() < 0.5 * z * z + d - d * v + d * v.ln() {
            return d * v / rate;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traits_recompute_prints_the_fit_and_writes_predictions_that_tell_the_lapsed_from_the_active()
 {
    // 2,000 buyers drawn from the BG/NBD story itself (a purchase rate per customer from a
    // gamma, a chance to drop out after each purchase from a beta), whose truth the test
    // keeps, and 20 customers who never ordered.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let store = trellis::store::Store::open(&url, Default::default())
        .await
        .unwrap();
    let now = trellis::clock::Clock::now(&trellis::clock::SystemClock);
    let day = |d: f64| SignedDuration::from_secs((d * 86_400.0) as i64);
    let mut rng = Lcg(7);
    let mut alive = HashMap::new();
    let mut tx = store.begin().await.unwrap();
    for i in 0..2_020 {
        let id = CustomerId::parse(format!("p{i:04}")).unwrap();
        tx.put_customer(&Customer::minimal(id.clone()), now)
            .await
            .unwrap();
        if i >= 2_000 {
            continue;
        }
        let rate = gamma(&mut rng, 0.8, 25.0);
        let dropout = {
            let (x, y) = (gamma(&mut rng, 0.6, 1.0), gamma(&mut rng, 3.0, 1.0));
            x / (x + y)
        };
        let mean_value = 20.0 + rng.next(80) as f64;
        // The first order between a year and half a year ago, then orders until the
        // customer drops out or the year ends.
        let mut t = -365.0 + uniform(&mut rng) * 180.0;
        let mut active = true;
        loop {
            let value = mean_value * (0.5 + uniform(&mut rng));
            let mut properties = serde_json::Map::new();
            properties.insert(
                "value".into(),
                serde_json::json!((value * 100.0).round() / 100.0),
            );
            let at = now.checked_add(day(t)).unwrap();
            let event = Event {
                id: None,
                name: "order_completed".into(),
                timestamp: at,
                properties,
            };
            tx.insert_event(&id, &event, now).await.unwrap();
            if uniform(&mut rng) < dropout {
                active = false;
                break;
            }
            t += -uniform(&mut rng).ln() / rate;
            if t >= 0.0 {
                break;
            }
        }
        alive.insert(id.to_string(), active);
    }
    tx.commit().await.unwrap();
    drop(store);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(["traits", "recompute", "--database-url", &url])
        .output()
        .expect("the binary runs");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains("traits recomputed for 2020 customers"),
        "{printed}"
    );
    assert!(printed.contains("BG/NBD over 2000 customers"), "{printed}");
    assert!(printed.contains("Gamma-Gamma over"), "{printed}");
    assert!(
        !printed.contains("not converged") && !printed.contains("not fitted"),
        "{printed}"
    );

    let store = trellis::store::Store::open(&url, Default::default())
        .await
        .unwrap();
    let (mut on_alive, mut on_gone) = (Vec::new(), Vec::new());
    for i in 0..2_020 {
        let id = CustomerId::parse(format!("p{i:04}")).unwrap();
        let customer = store.customer(&id).await.unwrap().unwrap();
        let predicted = customer.attributes.get("predicted");
        let vap = customer.attributes.get("vap");
        let Some(&active) = alive.get(id.as_str()) else {
            assert_eq!(
                (predicted, vap),
                (None, None),
                "{id} never ordered: absent, not zero"
            );
            continue;
        };
        let predicted = predicted.unwrap_or_else(|| panic!("{id} ordered and is predicted"));
        let p_alive = predicted["p_alive"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&p_alive), "{id}: {predicted}");
        let risk = predicted["churn_risk"].as_str().unwrap();
        let expected_risk = match p_alive {
            p if p >= 0.7 => "low",
            p if p >= 0.3 => "medium",
            _ => "high",
        };
        assert_eq!(risk, expected_risk, "{id}: {predicted}");
        assert!(
            predicted["clv_365d"].as_f64().unwrap() >= 0.0,
            "{id}: {predicted}"
        );
        let vap = vap.unwrap_or_else(|| panic!("{id} has VAP scores"));
        for score in ["value", "attrition", "potential"] {
            let s = vap[score].as_u64().unwrap();
            assert!((1..=5).contains(&s), "{id}: {vap}");
        }
        if active { &mut on_alive } else { &mut on_gone }.push(p_alive);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(
        on_alive.len() > 100 && on_gone.len() > 100,
        "{} {}",
        on_alive.len(),
        on_gone.len()
    );
    // The model never sees who dropped out, only when they ordered.
    assert!(
        mean(&on_alive) > mean(&on_gone) + 0.2,
        "alive {:.3} vs gone {:.3}",
        mean(&on_alive),
        mean(&on_gone)
    );
}
