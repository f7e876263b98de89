//! The Gamma-Gamma model of spend per transaction: Fader, Hardie & Lee
//! (2005), "RFM and CLV: Using Iso-Value Curves for Customer Base
//! Analysis", *Journal of Marketing Research* 42(4), and Fader & Hardie
//! (2013), "The Gamma-Gamma Model of Monetary Value" (note), whose equation
//! numbers are cited below.
//!
//! A customer's transaction values are i.i.d. `Gamma(p, ν)` (shape `p`,
//! rate `ν`), so their mean is `p/ν`; across customers `ν ~ Gamma(q, v)`.
//! Spend is assumed independent of the purchase process, which is what
//! lets [`super::customer_lifetime_value`] multiply the two models.

use super::special::ln_gamma;
use super::{Fit, FitError, FitOptions, History, validate_all};

/// Gamma-Gamma parameters; all strictly positive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GammaGammaParams {
    /// Shape of the per-transaction spend distribution.
    pub p: f64,
    /// Shape of the gamma distribution of customers' rate `ν`.
    pub q: f64,
    /// Rate of the gamma distribution of `ν` (in currency units).
    pub v: f64,
}

impl GammaGammaParams {
    /// Parameters if all are finite and strictly positive, else `None`.
    pub fn new(p: f64, q: f64, v: f64) -> Option<Self> {
        let params = Self { p, q, v };
        params.is_valid().then_some(params)
    }

    fn is_valid(&self) -> bool {
        [self.p, self.q, self.v]
            .iter()
            .all(|x| x.is_finite() && *x > 0.0)
    }

    fn from_slice(s: &[f64]) -> Self {
        Self {
            p: s[0],
            q: s[1],
            v: s[2],
        }
    }
}

/// Whether a history enters the Gamma-Gamma likelihood: at least one repeat
/// purchase and a positive mean value (the density is zero at `m̄ ≤ 0`).
fn usable(h: &History) -> bool {
    h.x > 0.0 && h.monetary > 0.0
}

/// Log-density of a customer's mean transaction value `m̄ = m` over `x`
/// transactions, with `ν` integrated out (Fader & Hardie 2013, eq. 5):
///
/// `f(m̄ | p, q, v; x) = Γ(px+q) / (Γ(px) Γ(q)) · v^q m̄^(px−1) x^(px)
///                      / (v + m̄x)^(px+q)`.
///
/// Requires `x > 0`, `m > 0`; otherwise the result is `NaN` or `±∞`.
pub fn customer_log_likelihood(params: &GammaGammaParams, x: f64, m: f64) -> f64 {
    count_term(params, x) + value_term(params, x, m)
}

/// The part of the log-density that depends on the customer through `x`
/// only: `ln Γ(px+q) − ln Γ(px) − ln Γ(q) + q ln v + px ln x`.
fn count_term(params: &GammaGammaParams, x: f64) -> f64 {
    let GammaGammaParams { p, q, v } = *params;
    let px = p * x;
    ln_gamma(px + q) - ln_gamma(px) - ln_gamma(q) + q * v.ln() + px * x.ln()
}

/// The rest: `(px−1) ln m̄ − (px+q) ln(v + m̄x)`.
fn value_term(params: &GammaGammaParams, x: f64, m: f64) -> f64 {
    let GammaGammaParams { p, q, v } = *params;
    let px = p * x;
    (px - 1.0) * m.ln() - (px + q) * (v + m * x).ln()
}

/// Repeat counts up to this value get [`count_term`] cached per evaluation.
const CACHED_COUNTS: usize = 4096;

/// Total log-likelihood over the customers that enter the model (those with
/// `x > 0` and `monetary > 0`; others are skipped).
pub fn log_likelihood(params: &GammaGammaParams, data: &[History]) -> f64 {
    if !params.is_valid() {
        return f64::NAN;
    }
    // Repeat counts are small whole numbers shared by many customers, so the
    // three ln Γ calls are made once per distinct count.
    let max_x = data.iter().fold(0.0_f64, |m, h| m.max(h.x));
    let len = (max_x.min(CACHED_COUNTS as f64) as usize) + 1;
    let cache: Vec<f64> = (0..len).map(|x| count_term(params, x as f64)).collect();
    data.iter()
        .filter(|h| usable(h))
        .map(|h| {
            let counted = match cache.get(h.x as usize) {
                Some(&cached) if h.x.fract() == 0.0 => cached,
                _ => count_term(params, h.x),
            };
            counted + value_term(params, h.x, h.monetary)
        })
        .sum()
}

/// Maximum-likelihood Gamma-Gamma fit.
///
/// Uses only customers with at least one repeat purchase (`x > 0`) and a
/// positive `monetary` value — one-time buyers carry no information on
/// repeat spend; [`Fit::customers`] says how many were used. Minimises the
/// negative log-likelihood over `(ln p, ln q, ln v)` from `p = 1`, `q = 2`,
/// `v = mean(m̄)` (so the starting population mean `pv/(q−1)` is the
/// observed mean).
///
/// Errors: [`FitError::InvalidHistory`], [`FitError::TooFewCustomers`]
/// (counting usable customers only), [`FitError::NonFiniteLikelihood`] and
/// [`FitError::NotConverged`] (when [`FitOptions::require_convergence`]).
pub fn fit(data: &[History], options: &FitOptions) -> Result<Fit<GammaGammaParams>, FitError> {
    validate_all(data)?;
    let used: Vec<History> = data.iter().copied().filter(usable).collect();
    if used.len() < options.min_customers {
        return Err(FitError::TooFewCustomers {
            needed: options.min_customers,
            got: used.len(),
        });
    }
    let mean_m = used.iter().map(|h| h.monetary).sum::<f64>() / used.len() as f64;
    let neg_ll = |theta: &[f64]| {
        let p: Vec<f64> = theta.iter().map(|t| t.exp()).collect();
        -log_likelihood(&GammaGammaParams::from_slice(&p), &used)
    };
    super::fit_log_params(
        neg_ll,
        &[1.0, 2.0, mean_m],
        used.len(),
        options,
        GammaGammaParams::from_slice,
    )
}

/// Expected mean transaction value of a customer with `x` repeat purchases
/// of mean value `m` (Fader & Hardie 2013, eq. 6):
///
/// `E[M | p, q, v; m̄, x] = p (v + x m̄) / (p x + q − 1)
///   = (1 − w) · p v/(q − 1) + w · m̄`, with `w = p x / (p x + q − 1)`,
///
/// a weighted average of the population mean and the customer's own mean.
/// For `x = 0` it is the population mean `p v / (q − 1)` and `m` is ignored.
///
/// `None` when undefined: invalid parameters, `x` not a whole number `≥ 0`,
/// `m` non-finite or negative with `x > 0`, or `p x + q ≤ 1` (the posterior
/// mean of `1/ν` does not exist — for `x = 0`, `q ≤ 1`).
pub fn conditional_expected_average_profit(
    params: &GammaGammaParams,
    x: f64,
    m: f64,
) -> Option<f64> {
    let GammaGammaParams { p, q, v } = *params;
    let x_ok = x.is_finite() && x >= 0.0 && x.fract() == 0.0;
    let m_ok = x == 0.0 || (m.is_finite() && m >= 0.0);
    let denominator = p * x + q - 1.0;
    if !(params.is_valid() && x_ok && m_ok && denominator > 0.0) {
        return None;
    }
    let m = if x == 0.0 { 0.0 } else { m };
    Some(p * (v + x * m) / denominator)
}

#[cfg(test)]
mod tests {
    use super::super::testkit;
    use super::*;

    /// `GammaGammaFitter().fit(x, zbar)` with `lifetimes` 0.11.3 on the 946
    /// customers with `x > 0` in `cdnow_customers_summary_with_transactions.csv`
    /// (see `bgnbd` tests for the environment), its standard errors and
    /// total log-likelihood.
    const LIFETIMES_FIT: GammaGammaParams = GammaGammaParams {
        p: 6.248802496074264,
        q: 3.744588460923312,
        v: 15.447748064932831,
    };
    const LIFETIMES_SE: [f64; 3] = [1.189687, 0.290166, 4.159994];
    const LIFETIMES_LL: f64 = -4055.9232435028653;

    /// `(x, m̄, E[M])` from `lifetimes`
    /// `conditional_expected_average_profit` at [`LIFETIMES_FIT`].
    const LIFETIMES_EXPECTED: [(f64, f64, f64); 4] = [
        (1.0, 11.77, 18.911479869930286),
        (2.0, 22.35, 24.658616189236923),
        (10.0, 40.0, 39.79682537499484),
        (0.0, 0.0, 35.171002152506624),
    ];

    fn relative_error(got: f64, want: f64) -> f64 {
        ((got - want) / want).abs()
    }

    fn as_array(p: &GammaGammaParams) -> [f64; 3] {
        [p.p, p.q, p.v]
    }

    #[test]
    fn expected_average_profit_matches_lifetimes() {
        for (x, m, want) in LIFETIMES_EXPECTED {
            let got = conditional_expected_average_profit(&LIFETIMES_FIT, x, m).expect("defined");
            assert!(relative_error(got, want) < 1e-12, "x={x}: {got} vs {want}");
        }
    }

    #[test]
    fn expected_average_profit_shrinks_towards_the_population_mean() {
        let p = LIFETIMES_FIT;
        let population = conditional_expected_average_profit(&p, 0.0, 999.0).expect("defined");
        let one = conditional_expected_average_profit(&p, 1.0, 100.0).expect("defined");
        let many = conditional_expected_average_profit(&p, 50.0, 100.0).expect("defined");
        assert!(population < one && one < many && many < 100.0);
        assert_eq!(conditional_expected_average_profit(&p, 1.5, 10.0), None);
        assert_eq!(conditional_expected_average_profit(&p, 2.0, f64::NAN), None);
        let heavy_tail = GammaGammaParams::new(2.0, 0.5, 10.0).expect("valid");
        assert_eq!(
            conditional_expected_average_profit(&heavy_tail, 0.0, 0.0),
            None
        );
        assert!(conditional_expected_average_profit(&heavy_tail, 1.0, 5.0).is_some());
    }

    #[test]
    fn density_integrates_to_one() {
        // ∫ f(m̄) dm̄ = ∫ f(eˢ) eˢ ds by the trapezoid rule over s ∈ [−15, 15]
        // (m̄ up to 3·10⁶: the tail decays like m̄^−(q+1)), for x = 3 at the
        // CDNOW estimates.
        let n = 300_000;
        let (lo, hi) = (-15.0_f64, 15.0_f64);
        let h = (hi - lo) / n as f64;
        let integrand = |s: f64| (customer_log_likelihood(&LIFETIMES_FIT, 3.0, s.exp()) + s).exp();
        let inner: f64 = (1..n).map(|i| integrand(lo + i as f64 * h)).sum();
        let total = h * (inner + 0.5 * (integrand(lo) + integrand(hi)));
        assert!((total - 1.0).abs() < 1e-8, "{total}");
    }

    #[test]
    fn population_log_likelihood_sums_usable_customers_only() {
        let data = [
            History::new(3.0, 5.0, 9.0, 20.0).expect("valid"),
            History::new(0.0, 0.0, 9.0, 20.0).expect("valid"),
            History::new(2.0, 5.0, 9.0, 0.0).expect("valid"),
            History::new(5000.0, 5.0, 9.0, 12.0).expect("valid"),
        ];
        let p = LIFETIMES_FIT;
        let want =
            customer_log_likelihood(&p, 3.0, 20.0) + customer_log_likelihood(&p, 5000.0, 12.0);
        let got = log_likelihood(&p, &data);
        assert!((got - want).abs() < 1e-9 * want.abs(), "{got} vs {want}");
    }

    #[test]
    fn fit_skips_one_time_buyers_and_requires_enough_repeaters() {
        let mut data = vec![History::new(0.0, 0.0, 5.0, 10.0).expect("valid"); 100];
        data.extend(vec![History::new(2.0, 1.0, 5.0, 10.0).expect("valid"); 5]);
        assert_eq!(
            fit(&data, &FitOptions::default()).unwrap_err(),
            FitError::TooFewCustomers { needed: 20, got: 5 }
        );
    }

    #[test]
    fn cdnow_fit_reproduces_published_estimates() {
        let data = testkit::cdnow_with_monetary();
        let result = fit(&data, &FitOptions::default()).expect("CDNOW fit");
        eprintln!("CDNOW Gamma-Gamma fit: {result:?}");
        assert_eq!(result.customers, 946, "customers with x > 0");
        assert!(result.converged);
        for (got, want) in as_array(&result.params).iter().zip([6.25, 3.74, 15.44]) {
            assert!(
                relative_error(*got, want) < 0.01,
                "{got} vs published {want}"
            );
        }
        for (got, want) in as_array(&result.params)
            .iter()
            .zip(as_array(&LIFETIMES_FIT))
        {
            assert!(
                relative_error(*got, want) < 1e-3,
                "{got} vs lifetimes {want}"
            );
        }
        assert!((result.log_likelihood - LIFETIMES_LL).abs() < 1e-4);
        let se = as_array(&result.std_errors.expect("positive-definite Hessian"));
        for (got, want) in se.iter().zip(LIFETIMES_SE) {
            assert!(
                relative_error(*got, want) < 0.02,
                "SE {got} vs lifetimes {want}"
            );
        }
    }

    #[test]
    fn recovers_simulated_parameters_within_three_standard_errors() {
        let truth = GammaGammaParams::new(6.0, 3.5, 15.0).expect("valid");
        let bg = super::super::BgNbdParams::new(0.25, 4.0, 0.8, 2.5).expect("valid");
        let mut data = testkit::simulate_bgnbd(&bg, 5_000, 52.0, 99);
        testkit::simulate_spend(&truth, &mut data, 1_234);
        let result = fit(&data, &FitOptions::default()).expect("fit");
        eprintln!("simulated fit: {result:?}");
        assert!(result.converged);
        let se = as_array(&result.std_errors.expect("positive-definite Hessian"));
        for ((got, want), se) in as_array(&result.params)
            .iter()
            .zip(as_array(&truth))
            .zip(se)
        {
            assert!(
                se > 0.0 && se < 0.5 * want,
                "implausible SE {se} for {want}"
            );
            assert!(
                (got - want).abs() < 3.0 * se,
                "{got} vs truth {want} (SE {se})"
            );
        }
    }
}
