//! Predicted traits per customer, from the buy-till-you-die models of [`super::predict`]
//! fitted over the whole customer base: `predicted.*` (probability of being alive, orders in
//! the next 90 days, value in the next 365 days, the expected date of the next order, a churn
//! risk band) and the VAP scores `vap.*` (value, attrition, potential, each 1–5, and a
//! segment). Pure, as the rest of `traits`.
//!
//! Definitions (documented in the README):
//! - Times are in days. A customer's history is `x` = orders − 1, `t_x` = last − first order,
//!   `T` = now − first order; the value per order is revenue / orders.
//! - BG/NBD is fitted over every customer with an order, Gamma-Gamma over those with a
//!   repeat order and a positive value. A fit that cannot be made (fewer than 20 buyers,
//!   nobody ordered twice, no convergence) gives nobody a prediction, and says why.
//! - A customer without an order gets no prediction: the attributes are absent, never zero.
//! - `churn_risk`: `low` when `p_alive` ≥ 0.7, `medium` when ≥ 0.3, else `high`.
//! - `next_order_date`: the first day (UTC, `YYYY-MM-DD`) by which the expected number of
//!   orders from now reaches 1, if that happens within 365 days; absent otherwise.
//! - VAP scores are quintiles among predicted customers (as RFM's): `value` of revenue so
//!   far, `attrition` of 1 − `p_alive` (5 = most likely to leave), `potential` of
//!   `clv_365d` (of `orders_90d` when the value model could not be fitted).
//! - `vap.segment`, first match: `retain` (value ≥ 4 and attrition ≥ 4), `reward`
//!   (value ≥ 4), `develop` (potential ≥ 4), `reactivate` (attrition ≥ 4), else `maintain`.

use std::collections::HashMap;

use jiff::Timestamp;
use serde_json::{Value, json};

use super::OrderStats;
use super::predict::{
    self, BgNbdParams, Fit, FitError, FitOptions, GammaGammaParams, History, bgnbd, gamma_gamma,
};

/// Milliseconds in a day: the models' unit of time.
const DAY_MS: f64 = 86_400_000.0;

/// The horizon of `orders_90d`, in days.
const ORDERS_HORIZON_DAYS: f64 = 90.0;

/// The horizon of `clv_365d` and the furthest `next_order_date`, in days.
const VALUE_HORIZON_DAYS: f64 = 365.0;

/// The models fitted over the customer base, and how well: printed by `trellis traits
/// recompute` and logged by `serve` at each recomputation.
#[derive(Debug, Clone)]
pub struct ModelFit {
    /// Customers with an order, the BG/NBD fit's population.
    pub buyers: usize,
    /// The purchase model.
    pub bgnbd: Result<Fit<BgNbdParams>, FitError>,
    /// The order-value model.
    pub gamma_gamma: Result<Fit<GammaGammaParams>, FitError>,
}

impl ModelFit {
    /// The fits in a few lines: parameters with their standard errors, log-likelihood,
    /// iterations and convergence, or why a model could not be fitted.
    pub fn summary(&self) -> String {
        let bgnbd = match &self.bgnbd {
            Ok(f) => {
                let (p, e) = (&f.params, f.std_errors.as_ref());
                fit_line(
                    &format!("BG/NBD over {} customers", f.customers),
                    &[
                        ("r", p.r, e.map(|e| e.r)),
                        ("alpha", p.alpha, e.map(|e| e.alpha)),
                        ("a", p.a, e.map(|e| e.a)),
                        ("b", p.b, e.map(|e| e.b)),
                    ],
                    f,
                )
            }
            Err(e) => format!(
                "BG/NBD not fitted ({} customers with an order): {e}; no predictions",
                self.buyers
            ),
        };
        let gamma_gamma = match &self.gamma_gamma {
            Ok(f) => {
                let (p, e) = (&f.params, f.std_errors.as_ref());
                fit_line(
                    &format!("Gamma-Gamma over {} repeat customers", f.customers),
                    &[
                        ("p", p.p, e.map(|e| e.p)),
                        ("q", p.q, e.map(|e| e.q)),
                        ("v", p.v, e.map(|e| e.v)),
                    ],
                    f,
                )
            }
            Err(e) => format!("Gamma-Gamma not fitted: {e}; no clv_365d"),
        };
        format!("{bgnbd}\n{gamma_gamma}")
    }
}

/// One fit on a line: `what: name=value (±standard error) …; log-likelihood, iterations,
/// convergence`.
fn fit_line<P>(what: &str, params: &[(&str, f64, Option<f64>)], fit: &Fit<P>) -> String {
    let shown: Vec<String> = params
        .iter()
        .map(|(name, value, se)| {
            let se = se.map_or_else(|| "?".to_owned(), |v| format!("{v:.4}"));
            format!("{name}={value:.4} (±{se})")
        })
        .collect();
    format!(
        "{what}: {}; log-likelihood {:.2}, {} iterations, {}",
        shown.join(" "),
        fit.log_likelihood,
        fit.iterations,
        if fit.converged {
            "converged"
        } else {
            "not converged"
        }
    )
}

/// One customer's predicted traits.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Probability that the customer is still active.
    pub p_alive: f64,
    /// Expected orders in the next 90 days.
    pub orders_90d: f64,
    /// Expected value of the next 365 days' orders, when the value model was fitted.
    pub clv_365d: Option<f64>,
    /// The first day by which one more order is expected, within 365 days.
    pub next_order_date: Option<jiff::civil::Date>,
    /// `low`, `medium` or `high`.
    pub churn_risk: &'static str,
}

impl Prediction {
    /// The `predicted` attribute: rounded (4 decimals for probabilities, 3 for orders, 2 for
    /// money), with absent keys left out.
    pub fn attribute(&self) -> Value {
        let mut v = json!({
            "p_alive": round(self.p_alive, 4),
            "orders_90d": round(self.orders_90d, 3),
            "churn_risk": self.churn_risk,
        });
        if let Some(clv) = self.clv_365d {
            v["clv_365d"] = json!(round(clv, 2));
        }
        if let Some(date) = self.next_order_date {
            v["next_order_date"] = json!(date.to_string());
        }
        v
    }
}

/// One customer's VAP scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vap {
    /// Value so far, 1–5.
    pub value: u8,
    /// Attrition risk, 1–5 (5 = most likely to leave).
    pub attrition: u8,
    /// Potential value, 1–5.
    pub potential: u8,
}

impl Vap {
    /// The segment, first match of the rules in the module's documentation.
    pub fn segment(self) -> &'static str {
        match (self.value, self.attrition, self.potential) {
            (4.., 4.., _) => "retain",
            (4.., _, _) => "reward",
            (_, _, 4..) => "develop",
            (_, 4.., _) => "reactivate",
            _ => "maintain",
        }
    }

    /// The `vap` attribute.
    pub fn attribute(self) -> Value {
        json!({
            "value": self.value,
            "attrition": self.attrition,
            "potential": self.potential,
            "segment": self.segment(),
        })
    }
}

/// Fits the models over `stats` at `now` and predicts for every customer with an order:
/// the fit, and each predicted customer's prediction and VAP scores by id.
pub fn predict(
    stats: &[OrderStats],
    now: Timestamp,
) -> (ModelFit, HashMap<String, (Prediction, Vap)>) {
    let now_days = days(now);
    let histories: Vec<(&OrderStats, History)> = stats
        .iter()
        .filter_map(|s| {
            let h = History::from_order_stats(
                s.orders,
                s.revenue,
                s.first_order.map(days),
                s.last_order.map(days),
                now_days,
            )?;
            Some((s, h))
        })
        .collect();
    let data: Vec<History> = histories.iter().map(|(_, h)| *h).collect();
    let options = fit_options();
    let model = ModelFit {
        buyers: data.len(),
        bgnbd: bgnbd::fit(&data, &options),
        gamma_gamma: gamma_gamma::fit(&data, &options),
    };
    let Ok(bg) = &model.bgnbd else {
        return (model, HashMap::new());
    };
    let gg = model.gamma_gamma.as_ref().ok().map(|f| &f.params);
    let predictions: Vec<(&OrderStats, Prediction)> = histories
        .iter()
        .filter_map(|(s, h)| Some((*s, prediction(&bg.params, gg, h, now)?)))
        .collect();
    let value: Vec<f64> = predictions.iter().map(|(s, _)| s.revenue).collect();
    let leaving: Vec<f64> = predictions.iter().map(|(_, p)| 1.0 - p.p_alive).collect();
    let potential: Vec<f64> = predictions
        .iter()
        .map(|(_, p)| p.clv_365d.unwrap_or(p.orders_90d))
        .collect();
    let (v, a, p) = (
        super::quintiles(&value),
        super::quintiles(&leaving),
        super::quintiles(&potential),
    );
    let by_id = predictions
        .into_iter()
        .enumerate()
        .map(|(i, (s, prediction))| {
            let vap = Vap {
                value: v[i],
                attrition: a[i],
                potential: p[i],
            };
            (s.customer_id.clone(), (prediction, vap))
        })
        .collect();
    (model, by_id)
}

/// The fits' settings: the defaults, with at most [`MAX_FIT_ITERATIONS`] simplex iterations.
fn fit_options() -> FitOptions {
    FitOptions {
        optimizer: predict::optimize::NelderMeadOptions {
            max_iterations: MAX_FIT_ITERATIONS,
            ..Default::default()
        },
        ..FitOptions::default()
    }
}

/// Simplex iterations a fit may take, over all restarts. CDNOW's BG/NBD fit takes 315; a
/// population whose maximum lies on a boundary (nobody ever drops out, so `b` grows without
/// end) never converges, and each iteration reads every customer, so the search stops here
/// and the fit is reported as not converged instead of costing a sweep minutes.
const MAX_FIT_ITERATIONS: usize = 2_000;

/// One customer's prediction; `None` when a formula has no finite answer for them.
fn prediction(
    bg: &BgNbdParams,
    gg: Option<&GammaGammaParams>,
    h: &History,
    now: Timestamp,
) -> Option<Prediction> {
    let p_alive = bgnbd::p_alive(bg, h.x, h.t_x, h.t)?;
    let orders_90d = bgnbd::expected_purchases(bg, ORDERS_HORIZON_DAYS, h.x, h.t_x, h.t)?;
    let clv_365d =
        gg.and_then(|gg| predict::customer_lifetime_value(bg, gg, h, VALUE_HORIZON_DAYS));
    let next_order_date = days_to_next_order(bg, h).and_then(|d| {
        let at = now.checked_add(jiff::SignedDuration::from_secs((d * 86_400.0) as i64));
        at.ok().map(|t| t.to_zoned(jiff::tz::TimeZone::UTC).date())
    });
    let churn_risk = if p_alive >= 0.7 {
        "low"
    } else if p_alive >= 0.3 {
        "medium"
    } else {
        "high"
    };
    Some(Prediction {
        p_alive,
        orders_90d,
        clv_365d,
        next_order_date,
        churn_risk,
    })
}

/// The whole number of days from now by which the expected number of orders reaches 1,
/// within [`VALUE_HORIZON_DAYS`] (the expectation grows with the horizon, so a bisection over
/// whole days finds it).
fn days_to_next_order(bg: &BgNbdParams, h: &History) -> Option<f64> {
    let expected = |t: f64| bgnbd::expected_purchases(bg, t, h.x, h.t_x, h.t);
    if expected(VALUE_HORIZON_DAYS)? < 1.0 {
        return None;
    }
    let (mut low, mut high) = (0.0_f64, VALUE_HORIZON_DAYS);
    while high - low > 1.0 {
        let mid = ((low + high) / 2.0).floor();
        if expected(mid)? >= 1.0 {
            high = mid;
        } else {
            low = mid;
        }
    }
    Some(high)
}

/// A timestamp as days since the Unix epoch.
fn days(t: Timestamp) -> f64 {
    t.as_millisecond() as f64 / DAY_MS
}

/// `v` rounded to `places` decimals.
fn round(v: f64, places: i32) -> f64 {
    let scale = 10_f64.powi(places);
    (v * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A customer with `orders` orders, the first `first` days and the last `last` days
    /// before `now`; customers' mean order values differ, and each order varies around its
    /// customer's mean (values without that noise leave the value model no maximum).
    fn stats(id: &str, orders: u64, first: i64, last: i64, now: Timestamp) -> OrderStats {
        let spread = id.bytes().map(u64::from).sum::<u64>() % 17;
        let ago = |d: i64| {
            now.checked_sub(jiff::SignedDuration::from_hours(24 * d))
                .unwrap()
        };
        OrderStats {
            customer_id: id.into(),
            orders,
            // Each order worth between half and one and a half times the customer's own mean.
            revenue: (0..orders)
                .map(|k| {
                    let noise = ((k * 7919 + spread * 31) % 100) as f64 / 100.0;
                    5.0 * 1.2_f64.powi(spread as i32) * (0.5 + noise)
                })
                .sum(),
            first_order: (orders > 0).then(|| ago(first)),
            last_order: (orders > 0).then(|| ago(last)),
        }
    }

    fn now() -> Timestamp {
        "2026-06-01T00:00:00Z".parse().unwrap()
    }

    /// 60 customers: regulars ordering monthly until lately, some who stopped long ago,
    /// one-time buyers, and customers without an order.
    fn population() -> Vec<OrderStats> {
        let now = now();
        let mut all = Vec::new();
        for i in 0..20 {
            all.push(stats(
                &format!("regular{i:02}"),
                10 + i % 3,
                300,
                3 + i as i64 % 5,
                now,
            ));
            all.push(stats(
                &format!("gone{i:02}"),
                4 + i % 2,
                360,
                250 + i as i64,
                now,
            ));
            all.push(stats(
                &format!("once{i:02}"),
                1,
                100 + i as i64,
                100 + i as i64,
                now,
            ));
        }
        all.push(stats("never", 0, 0, 0, now));
        all
    }

    #[test]
    fn regular_buyers_are_alive_lapsed_ones_are_not_and_nobody_without_an_order_is_predicted() {
        let (model, by_id) = predict(&population(), now());
        assert!(model.bgnbd.is_ok(), "{}", model.summary());
        assert!(model.gamma_gamma.is_ok(), "{}", model.summary());
        assert_eq!(model.buyers, 60);
        assert!(!by_id.contains_key("never"), "absent, not zero");
        let (regular, regular_vap) = &by_id["regular00"];
        let (gone, gone_vap) = &by_id["gone00"];
        assert!(regular.p_alive > 0.9, "{regular:?}");
        assert!(gone.p_alive < 0.3, "{gone:?}");
        assert_eq!((regular.churn_risk, gone.churn_risk), ("low", "high"));
        assert!(regular.orders_90d > 1.0 && gone.orders_90d < 0.5);
        assert!(regular.clv_365d.unwrap() > gone.clv_365d.unwrap());
        // A monthly buyer's next order is expected within weeks, a lapsed one's not this year.
        let next = regular
            .next_order_date
            .expect("a regular orders again soon");
        assert!(next <= jiff::civil::date(2026, 7, 15), "{next}");
        assert_eq!(gone.next_order_date, None);
        assert!(regular_vap.attrition < gone_vap.attrition);
        // Potential weighs value too, so it is compared group by group.
        let mean = |prefix: &str, score: fn(&Vap) -> u8| {
            let group: Vec<f64> = by_id
                .iter()
                .filter(|(id, _)| id.starts_with(prefix))
                .map(|(_, (_, vap))| f64::from(score(vap)))
                .collect();
            group.iter().sum::<f64>() / group.len() as f64
        };
        assert!(mean("regular", |v| v.potential) > mean("gone", |v| v.potential) + 1.0);
        assert!(mean("gone", |v| v.attrition) > mean("regular", |v| v.attrition) + 1.0);
        for (_, vap) in by_id.values() {
            for score in [vap.value, vap.attrition, vap.potential] {
                assert!((1..=5).contains(&score), "{vap:?}");
            }
        }
    }

    #[test]
    fn too_few_buyers_give_nobody_a_prediction_and_say_why() {
        let now = now();
        let few: Vec<OrderStats> = (0..5)
            .map(|i| stats(&format!("c{i}"), 3, 100, 10, now))
            .collect();
        let (model, by_id) = predict(&few, now);
        assert!(by_id.is_empty());
        let summary = model.summary();
        assert!(
            summary.contains("BG/NBD not fitted") && summary.contains("too few"),
            "{summary}"
        );
    }

    #[test]
    fn the_attributes_round_and_leave_out_what_is_absent() {
        let p = Prediction {
            p_alive: 0.123_456,
            orders_90d: 1.234_56,
            clv_365d: None,
            next_order_date: None,
            churn_risk: "high",
        };
        assert_eq!(
            p.attribute(),
            json!({"p_alive": 0.1235, "orders_90d": 1.235, "churn_risk": "high"})
        );
        let vap = Vap {
            value: 5,
            attrition: 4,
            potential: 1,
        };
        assert_eq!(vap.segment(), "retain");
        assert_eq!(
            Vap {
                value: 2,
                attrition: 5,
                potential: 2
            }
            .segment(),
            "reactivate"
        );
        assert_eq!(
            Vap {
                value: 2,
                attrition: 5,
                potential: 4
            }
            .segment(),
            "develop"
        );
        assert_eq!(vap.attribute()["segment"], "retain");
    }
}
