//! Computed value traits over the whole customer base, from `order_completed` events and
//! their `value`: RFM quintile scores and segment, value tier, lifecycle stage. Pure: the
//! store hands in per-customer order statistics and writes the result into attributes.
//!
//! Definitions (documented in the README):
//! - A quintile score is `1 + floor(5 × w / n)`, where `n` counts customers with at least one
//!   order and `w` those with a strictly worse value; equal values share a score. Recency is
//!   better when more recent; frequency (orders) and monetary (revenue) when higher.
//! - Value tier by revenue, highest first, ties broken by customer id: the first 1 % of all
//!   customers are `platinum`, the next 4 % `gold`, the next 15 % `iron`, the rest `lead`
//!   (as are customers without revenue).
//! - Lifecycle: `new` without an order or with a first order within `new_days`; otherwise
//!   `active` with an order within `active_days`, `at_risk` within `lapsed_days`, else `lapsed`.
//! - Predicted traits and VAP scores: see [`predictive`].

pub mod predict;
pub mod predictive;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

pub use predictive::ModelFit;

/// The attributes the computed traits own, in the order [`Traits::attributes`] gives them:
/// each is rewritten (or removed) by every recomputation.
pub const COMPUTED_ATTRIBUTES: [&str; 5] = ["rfm", "value_tier", "lifecycle", "predicted", "vap"];

/// One customer's orders, aggregated.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderStats {
    /// The customer.
    pub customer_id: String,
    /// Number of orders.
    pub orders: u64,
    /// Sum of the orders' `value`.
    pub revenue: f64,
    /// First order.
    pub first_order: Option<Timestamp>,
    /// Last order.
    pub last_order: Option<Timestamp>,
}

/// Lifecycle thresholds, in days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifecycle {
    /// A first order this recent makes a customer `new`.
    pub new_days: i64,
    /// An order this recent makes a customer `active`.
    pub active_days: i64,
    /// An order this recent (but not active) makes a customer `at_risk`; older is `lapsed`.
    pub lapsed_days: i64,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            new_days: 30,
            active_days: 90,
            lapsed_days: 180,
        }
    }
}

/// The traits computed for one customer.
#[derive(Debug, Clone, PartialEq)]
pub struct Traits {
    /// The customer.
    pub customer_id: String,
    /// `(recency, frequency, monetary, segment)`, for customers with an order.
    pub rfm: Option<(u8, u8, u8, &'static str)>,
    /// `platinum`, `gold`, `iron` or `lead`.
    pub value_tier: &'static str,
    /// `new`, `active`, `at_risk` or `lapsed`.
    pub lifecycle: &'static str,
    /// The `predicted` attribute, for customers the models predict.
    pub predicted: Option<Value>,
    /// The `vap` attribute, for the same customers.
    pub vap: Option<Value>,
}

impl Traits {
    /// The attributes to write, named as [`COMPUTED_ATTRIBUTES`]: `rfm`, `value_tier`,
    /// `lifecycle`, `predicted`, `vap`; null means the attribute is removed.
    pub fn attributes(&self) -> [(&'static str, Value); 5] {
        let rfm = match self.rfm {
            Some((r, f, m, segment)) => {
                json!({"recency": r, "frequency": f, "monetary": m, "segment": segment})
            }
            None => Value::Null,
        };
        let [a, b, c, d, e] = COMPUTED_ATTRIBUTES;
        [
            (a, rfm),
            (b, json!(self.value_tier)),
            (c, json!(self.lifecycle)),
            (d, self.predicted.clone().unwrap_or(Value::Null)),
            (e, self.vap.clone().unwrap_or(Value::Null)),
        ]
    }

    /// The attributes that are set (not null), as one JSON object.
    pub fn set_attributes(&self) -> serde_json::Map<String, Value> {
        self.attributes()
            .into_iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
    }
}

/// The RFM segment for recency and frequency scores; the first matching rule wins.
pub fn rfm_segment(r: u8, f: u8) -> &'static str {
    match (r, f) {
        (4.., 4..) => "champions",
        (1, 5) => "cant_lose_them",
        (..=2, 3..) => "at_risk",
        (3.., 3..) => "loyal",
        (5, 1) => "new_customers",
        (4.., _) => "potential_loyalists",
        (3, _) => "need_attention",
        _ => "hibernating",
    }
}

/// `1 + floor(5 × worse / n)` for each value, where `worse` counts strictly smaller values.
pub(crate) fn quintiles(values: &[f64]) -> Vec<u8> {
    let mut sorted: Vec<f64> = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = values.len().max(1);
    values
        .iter()
        .map(|v| {
            let worse = sorted.partition_point(|x| x.total_cmp(v).is_lt());
            u8::try_from(1 + 5 * worse / n).unwrap_or(5).min(5)
        })
        .collect()
}

/// Computes every customer's traits at `now`.
pub fn compute(stats: &[OrderStats], now: Timestamp, lifecycle: Lifecycle) -> Vec<Traits> {
    compute_with_model(stats, now, lifecycle).0
}

/// [`compute`], with the predictive models' fit.
pub fn compute_with_model(
    stats: &[OrderStats],
    now: Timestamp,
    lifecycle: Lifecycle,
) -> (Vec<Traits>, ModelFit) {
    let (model, mut predicted) = predictive::predict(stats, now);
    let buyers: Vec<&OrderStats> = stats.iter().filter(|s| s.orders > 0).collect();
    // Recency as "how recent", so that higher is better like the other two.
    let recency: Vec<f64> = buyers
        .iter()
        .map(|s| s.last_order.map_or(f64::MIN, |t| t.as_millisecond() as f64))
        .collect();
    let frequency: Vec<f64> = buyers.iter().map(|s| s.orders as f64).collect();
    let monetary: Vec<f64> = buyers.iter().map(|s| s.revenue).collect();
    let (r, f, m) = (
        quintiles(&recency),
        quintiles(&frequency),
        quintiles(&monetary),
    );
    let scores: std::collections::HashMap<&str, (u8, u8, u8)> = buyers
        .iter()
        .enumerate()
        .map(|(i, s)| (s.customer_id.as_str(), (r[i], f[i], m[i])))
        .collect();

    let mut by_revenue: Vec<&OrderStats> = stats.iter().collect();
    by_revenue.sort_by(|a, b| {
        b.revenue
            .total_cmp(&a.revenue)
            .then_with(|| a.customer_id.cmp(&b.customer_id))
    });
    let n = stats.len() as f64;
    let tiers: std::collections::HashMap<&str, &'static str> = by_revenue
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let p = i as f64;
            let tier = if s.revenue <= 0.0 {
                "lead"
            } else if p < n * 0.01 {
                "platinum"
            } else if p < n * 0.05 {
                "gold"
            } else if p < n * 0.20 {
                "iron"
            } else {
                "lead"
            };
            (s.customer_id.as_str(), tier)
        })
        .collect();

    let days_ago = |t: Timestamp| now.duration_since(t).as_secs() / 86_400;
    let traits = stats
        .iter()
        .map(|s| {
            let stage = match (s.first_order, s.last_order) {
                (None, _) | (_, None) => "new",
                (Some(first), _) if days_ago(first) < lifecycle.new_days => "new",
                (_, Some(last)) if days_ago(last) < lifecycle.active_days => "active",
                (_, Some(last)) if days_ago(last) < lifecycle.lapsed_days => "at_risk",
                _ => "lapsed",
            };
            Traits {
                customer_id: s.customer_id.clone(),
                rfm: scores
                    .get(s.customer_id.as_str())
                    .map(|&(r, f, m)| (r, f, m, rfm_segment(r, f))),
                value_tier: tiers.get(s.customer_id.as_str()).copied().unwrap_or("lead"),
                lifecycle: stage,
                predicted: predicted
                    .get(s.customer_id.as_str())
                    .map(|(p, _)| p.attribute()),
                vap: predicted
                    .remove(s.customer_id.as_str())
                    .map(|(_, vap)| vap.attribute()),
            }
        })
        .collect();
    (traits, model)
}

/// Days as a duration, for callers that store thresholds.
pub fn days(n: i64) -> SignedDuration {
    SignedDuration::from_hours(24 * n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_recency_and_frequency_pair_has_a_segment() {
        let mut seen = std::collections::BTreeSet::new();
        for r in 1..=5 {
            for f in 1..=5 {
                seen.insert(rfm_segment(r, f));
            }
        }
        assert_eq!(seen.len(), 8, "{seen:?}");
        assert_eq!(rfm_segment(5, 5), "champions");
        assert_eq!(rfm_segment(1, 1), "hibernating");
        assert_eq!(rfm_segment(1, 5), "cant_lose_them");
    }

    #[test]
    fn equal_values_share_a_quintile() {
        assert_eq!(quintiles(&[1.0, 1.0, 1.0, 1.0, 1.0]), [1, 1, 1, 1, 1]);
        assert_eq!(quintiles(&[1.0, 2.0, 3.0, 4.0, 5.0]), [1, 2, 3, 4, 5]);
        assert_eq!(quintiles(&[10.0, 10.0, 0.0, 5.0]), [3, 3, 1, 2]);
    }
}
