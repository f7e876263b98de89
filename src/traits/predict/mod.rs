//! Predictive customer traits from "buy till you die" models.
//!
//! * [`bgnbd`] — the BG/NBD model of repeat-purchase counts and dropout
//!   (Fader, Hardie & Lee 2005, "Counting Your Customers the Easy Way"):
//!   probability a customer is still active and expected future purchases.
//! * [`gamma_gamma`] — the Gamma-Gamma model of spend per transaction
//!   (Fader, Hardie & Lee 2005, "RFM and CLV: Using Iso-Value Curves for
//!   Customer Base Analysis"; Fader & Hardie 2013 note "The Gamma-Gamma
//!   Model of Monetary Value"): expected average order value.
//! * [`customer_lifetime_value`] — the two combined over a horizon.
//!
//! Both models are fitted by maximum likelihood over the whole customer
//! population with the Nelder–Mead search in [`optimize`], in log-parameter
//! space so every parameter stays positive. [`special`] has the log-gamma
//! and hypergeometric functions they need.
//!
//! Times are plain `f64` in one unit of the caller's choice (days or weeks);
//! a fitted model's `alpha` is in that unit, and horizons passed to the
//! predictions must use it too. The models are invariant to the unit apart
//! from that scale.

pub mod bgnbd;
pub mod gamma_gamma;
pub mod optimize;
pub mod special;

#[cfg(test)]
mod testkit;

use std::fmt;

pub use bgnbd::BgNbdParams;
pub use gamma_gamma::GammaGammaParams;

/// One customer's purchase history in the form the models use.
///
/// Times are in one unit (days, or weeks) measured from the customer's
/// first purchase, which itself is not counted as a repeat purchase.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct History {
    /// Number of repeat purchases (orders after the first), `x`.
    pub x: f64,
    /// Time of the last purchase since the first, `t_x` (`0` when `x = 0`).
    pub t_x: f64,
    /// Age of the customer: time from first purchase to the end of the
    /// observation window ("now"), `T`.
    pub t: f64,
    /// Mean value per transaction, `m̄` (see [`History::from_order_stats`]
    /// for what Trellis's stats allow). Used by Gamma-Gamma only.
    pub monetary: f64,
}

impl History {
    /// A validated history: all values finite, `x` a whole number `≥ 0`,
    /// `0 ≤ t_x ≤ t`.
    /// Returns `None` otherwise.
    pub fn new(x: f64, t_x: f64, t: f64, monetary: f64) -> Option<Self> {
        let history = Self {
            x,
            t_x,
            t,
            monetary,
        };
        history.validate().is_ok().then_some(history)
    }

    /// Builds a history from Trellis's per-customer order stats
    /// (`traits::OrderStats`): `orders` placed in total, total `revenue`,
    /// times of the `first` and `last` order and the current time `now`,
    /// all in one unit (e.g. days since the Unix epoch; divide by 7 for
    /// weeks).
    ///
    /// * `x = orders − 1`, `t_x = last − first`, `t = now − first`.
    /// * `monetary = revenue / orders`: the stats hold only total revenue,
    ///   so this is the mean over *all* orders, whereas the Gamma-Gamma papers
    ///   (and `lifetimes`) average the repeat purchases only. It is the best
    ///   available estimate and is ignored for one-time buyers anyway.
    ///
    /// Returns `None` — never a zero-filled history — when there is nothing
    /// to model: no orders, a missing first/last order time, `last` before
    /// `first`, `now` before `last`, or non-finite values.
    pub fn from_order_stats(
        orders: u64,
        revenue: f64,
        first: Option<f64>,
        last: Option<f64>,
        now: f64,
    ) -> Option<Self> {
        if orders == 0 {
            return None;
        }
        let (first, last) = (first?, last?);
        let x = (orders - 1) as f64;
        let monetary = revenue / orders as f64;
        Self::new(x, last - first, now - first, monetary)
    }

    /// Checks the invariants documented on [`History::new`].
    fn validate(&self) -> Result<(), &'static str> {
        let all_finite = [self.x, self.t_x, self.t, self.monetary]
            .iter()
            .all(|v| v.is_finite());
        if !all_finite {
            return Err("non-finite value");
        }
        if self.x < 0.0 || self.x.fract() != 0.0 {
            return Err("repeat-purchase count is not a whole number >= 0");
        }
        if self.t_x < 0.0 {
            return Err("last purchase before first");
        }
        if self.t_x > self.t {
            return Err("last purchase after end of observation");
        }
        Ok(())
    }
}

/// Why a model could not be fitted.
#[derive(Debug, Clone, PartialEq)]
pub enum FitError {
    /// Fewer usable customers than [`FitOptions::min_customers`].
    TooFewCustomers {
        /// Minimum required.
        needed: usize,
        /// Usable customers supplied.
        got: usize,
    },
    /// A history violates the invariants of [`History::new`].
    InvalidHistory {
        /// Position of the offending history in the input slice.
        index: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Nobody made a repeat purchase, so purchase rates and dropout cannot
    /// be told apart (the likelihood has no interior maximum).
    NoRepeatPurchases,
    /// The log-likelihood is not finite at the starting point.
    NonFiniteLikelihood,
    /// The optimiser ran out of iterations before meeting its tolerances
    /// (only when [`FitOptions::require_convergence`] is set).
    NotConverged {
        /// Iterations performed.
        iterations: usize,
        /// Best log-likelihood reached.
        log_likelihood: f64,
    },
}

impl fmt::Display for FitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooFewCustomers { needed, got } => {
                write!(f, "too few customers to fit: need {needed}, got {got}")
            }
            Self::InvalidHistory { index, reason } => {
                write!(f, "invalid customer history at index {index}: {reason}")
            }
            Self::NoRepeatPurchases => write!(f, "no customer made a repeat purchase"),
            Self::NonFiniteLikelihood => {
                write!(f, "log-likelihood is not finite at the starting point")
            }
            Self::NotConverged {
                iterations,
                log_likelihood,
            } => write!(
                f,
                "optimiser did not converge after {iterations} iterations \
                 (best log-likelihood {log_likelihood})"
            ),
        }
    }
}

impl std::error::Error for FitError {}

/// Settings shared by the model fits.
#[derive(Debug, Clone, PartialEq)]
pub struct FitOptions {
    /// Fewest usable customers accepted (default 20).
    pub min_customers: usize,
    /// Optimiser settings.
    pub optimizer: optimize::NelderMeadOptions,
    /// Return [`FitError::NotConverged`] instead of a [`Fit`] with
    /// `converged == false` (default `true`).
    pub require_convergence: bool,
    /// Finite-difference step, in log-parameter space, for the Hessian
    /// behind [`Fit::std_errors`] (default `1e-4`).
    pub hessian_step: f64,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            min_customers: 20,
            optimizer: optimize::NelderMeadOptions::default(),
            require_convergence: true,
            hessian_step: 1e-4,
        }
    }
}

/// A fitted model and the quality of the fit.
#[derive(Debug, Clone, PartialEq)]
pub struct Fit<P> {
    /// Maximum-likelihood parameters.
    pub params: P,
    /// Asymptotic standard errors of [`Fit::params`]: the inverse numerical
    /// Hessian of the negative log-likelihood in log-parameter space,
    /// mapped to parameter space by the delta method
    /// ([`optimize::log_space_standard_errors`]). `None` when that Hessian
    /// is not positive definite.
    pub std_errors: Option<P>,
    /// Total log-likelihood at [`Fit::params`].
    pub log_likelihood: f64,
    /// Optimiser iterations.
    pub iterations: usize,
    /// Likelihood evaluations by the optimiser (excluding the Hessian's).
    pub evaluations: usize,
    /// Whether the optimiser met its convergence criteria.
    pub converged: bool,
    /// Customers that entered the likelihood.
    pub customers: usize,
}

/// Fits a model with `k` positive parameters by minimising `neg_ll` over
/// their logarithms from `start`, and packages the result.
fn fit_log_params<P, F>(
    neg_ll: F,
    start: &[f64],
    customers: usize,
    options: &FitOptions,
    build: impl Fn(&[f64]) -> P,
) -> Result<Fit<P>, FitError>
where
    F: Fn(&[f64]) -> f64,
{
    let log_start: Vec<f64> = start.iter().map(|p| p.ln()).collect();
    if !neg_ll(&log_start).is_finite() {
        return Err(FitError::NonFiniteLikelihood);
    }
    let minimum = optimize::nelder_mead(&neg_ll, &log_start, &options.optimizer);
    if !minimum.converged && options.require_convergence {
        return Err(FitError::NotConverged {
            iterations: minimum.iterations,
            log_likelihood: -minimum.f,
        });
    }
    let hess = optimize::hessian(&neg_ll, &minimum.x, options.hessian_step);
    let std_errors = optimize::log_space_standard_errors(&minimum.x, &hess);
    let params: Vec<f64> = minimum.x.iter().map(|t| t.exp()).collect();
    Ok(Fit {
        params: build(&params),
        std_errors: std_errors.map(|se| build(&se)),
        log_likelihood: -minimum.f,
        iterations: minimum.iterations,
        evaluations: minimum.evaluations,
        converged: minimum.converged,
        customers,
    })
}

/// Checks every history, reporting the first invalid one.
fn validate_all(data: &[History]) -> Result<(), FitError> {
    for (index, history) in data.iter().enumerate() {
        history
            .validate()
            .map_err(|reason| FitError::InvalidHistory { index, reason })?;
    }
    Ok(())
}

/// Expected value a customer brings over the next `horizon` time units:
/// the BG/NBD expected number of purchases in `(T, T + horizon]`
/// ([`bgnbd::expected_purchases`]) times the Gamma-Gamma expected value
/// per purchase ([`gamma_gamma::conditional_expected_average_profit`]).
///
/// Undiscounted and without margin: multiply by a margin to get profit,
/// and keep `horizon` short (e.g. a year) where discounting would matter.
/// Multiplying the two expectations treats purchase count and spend per
/// purchase as independent, which is the Gamma-Gamma model's assumption.
/// `None` when either factor is undefined (invalid history or horizon, or
/// `p x + q ≤ 1`).
pub fn customer_lifetime_value(
    bg: &BgNbdParams,
    gg: &GammaGammaParams,
    history: &History,
    horizon: f64,
) -> Option<f64> {
    let purchases = bgnbd::expected_purchases(bg, horizon, history.x, history.t_x, history.t)?;
    let value = gamma_gamma::conditional_expected_average_profit(gg, history.x, history.monetary)?;
    Some(purchases * value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_order_stats_maps_orders_to_repeat_purchases() {
        let h = History::from_order_stats(3, 90.0, Some(100.0), Some(130.0), 150.0)
            .expect("valid stats");
        assert_eq!(h.x, 2.0);
        assert_eq!(h.t_x, 30.0);
        assert_eq!(h.t, 50.0);
        assert_eq!(h.monetary, 30.0);
    }

    #[test]
    fn one_time_buyer_has_zero_repeat_purchases() {
        let h =
            History::from_order_stats(1, 25.0, Some(10.0), Some(10.0), 40.0).expect("valid stats");
        assert_eq!((h.x, h.t_x, h.t), (0.0, 0.0, 30.0));
    }

    #[test]
    fn from_order_stats_rejects_too_little_history() {
        assert_eq!(History::from_order_stats(0, 0.0, None, None, 10.0), None);
        assert_eq!(
            History::from_order_stats(0, 0.0, Some(1.0), Some(1.0), 10.0),
            None
        );
        assert_eq!(
            History::from_order_stats(2, 5.0, None, Some(3.0), 10.0),
            None
        );
        assert_eq!(
            History::from_order_stats(2, 5.0, Some(3.0), None, 10.0),
            None
        );
        // last before first, and now before last
        assert_eq!(
            History::from_order_stats(2, 5.0, Some(5.0), Some(3.0), 10.0),
            None
        );
        assert_eq!(
            History::from_order_stats(2, 5.0, Some(1.0), Some(3.0), 2.0),
            None
        );
        assert_eq!(
            History::from_order_stats(2, f64::NAN, Some(1.0), Some(3.0), 4.0),
            None
        );
    }

    #[test]
    fn fit_error_messages_name_the_problem() {
        let e = FitError::TooFewCustomers { needed: 20, got: 3 };
        assert_eq!(e.to_string(), "too few customers to fit: need 20, got 3");
        let e = FitError::InvalidHistory {
            index: 7,
            reason: "non-finite value",
        };
        assert_eq!(
            e.to_string(),
            "invalid customer history at index 7: non-finite value"
        );
    }

    #[test]
    fn clv_multiplies_expected_purchases_and_value() {
        let bg = BgNbdParams::new(0.243, 4.414, 0.793, 2.426).expect("valid");
        let gg = GammaGammaParams::new(6.25, 3.74, 15.44).expect("valid");
        let h = History::new(2.0, 30.43, 38.86, 22.35).expect("valid");
        let n = bgnbd::expected_purchases(&bg, 39.0, h.x, h.t_x, h.t).expect("defined");
        let v = gamma_gamma::conditional_expected_average_profit(&gg, h.x, h.monetary)
            .expect("defined");
        let clv = customer_lifetime_value(&bg, &gg, &h, 39.0).expect("defined");
        assert!((clv - n * v).abs() < 1e-12);
        assert!(clv > 0.0);
        // q ≤ 1 leaves the population mean spend undefined, so a one-time
        // buyer's CLV is too.
        let gg_bad = GammaGammaParams::new(6.25, 0.9, 15.44).expect("valid");
        let new_customer = History::new(0.0, 0.0, 10.0, 22.35).expect("valid");
        assert_eq!(
            customer_lifetime_value(&bg, &gg_bad, &new_customer, 39.0),
            None
        );
        assert_eq!(customer_lifetime_value(&bg, &gg, &h, -1.0), None);
    }
}
