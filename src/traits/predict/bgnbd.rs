//! The BG/NBD ("beta-geometric / negative binomial distribution") model of
//! Fader, Hardie & Lee (2005), "Counting Your Customers the Easy Way: An
//! Alternative to the Pareto/NBD Model", *Marketing Science* 24(2).
//!
//! While active, a customer buys as a Poisson process with rate `λ`; after
//! every purchase they drop out for good with probability `p`. Across
//! customers `λ ~ Gamma(r, α)` (shape `r`, rate `α`) and `p ~ Beta(a, b)`.
//! Equation numbers below refer to that paper.

use super::special::{ln_gamma, sum_hypergeometric};
use super::{Fit, FitError, FitOptions, History, validate_all};

/// BG/NBD parameters; all strictly positive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BgNbdParams {
    /// Shape of the gamma distribution of purchase rates.
    pub r: f64,
    /// Rate (inverse scale) of the gamma distribution of purchase rates, in
    /// the data's time unit.
    pub alpha: f64,
    /// First shape parameter of the beta distribution of dropout
    /// probabilities.
    pub a: f64,
    /// Second shape parameter of the beta distribution of dropout
    /// probabilities.
    pub b: f64,
}

impl BgNbdParams {
    /// Parameters if all are finite and strictly positive, else `None`.
    pub fn new(r: f64, alpha: f64, a: f64, b: f64) -> Option<Self> {
        let params = Self { r, alpha, a, b };
        params.is_valid().then_some(params)
    }

    /// All parameters finite and strictly positive.
    fn is_valid(&self) -> bool {
        [self.r, self.alpha, self.a, self.b]
            .iter()
            .all(|v| v.is_finite() && *v > 0.0)
    }

    /// From `[r, alpha, a, b]`.
    fn from_slice(v: &[f64]) -> Self {
        Self {
            r: v[0],
            alpha: v[1],
            a: v[2],
            b: v[3],
        }
    }
}

/// Log-likelihood of one customer's `(x, t_x, T)` — the log of equation (6):
///
/// `L = B(a, b+x)/B(a, b) · Γ(r+x) α^r / (Γ(r) (α+T)^(r+x))
///    + δ(x>0) · B(a+1, b+x−1)/B(a, b) · Γ(r+x) α^r / (Γ(r) (α+t_x)^(r+x))`.
///
/// Computed as `A₁ + A₂ + ln(e^A₃ + δ(x>0) e^A₄)` with log-sum-exp, as in the
/// `lifetimes` package, using `B(a+1, b+x−1)/B(a, b+x) = a/(b+x−1)`:
///
/// * `A₁ = ln Γ(r+x) − ln Γ(r) + r ln α`
/// * `A₂ = ln Γ(a+b) + ln Γ(b+x) − ln Γ(b) − ln Γ(a+b+x)`
/// * `A₃ = −(r+x) ln(α+T)`
/// * `A₄ = ln a − ln(b+x−1) − (r+x) ln(α+t_x)`
///
/// Inputs are not validated here (see [`log_likelihood`]); invalid ones give
/// `NaN` or `±∞`.
pub fn customer_log_likelihood(params: &BgNbdParams, x: f64, t_x: f64, age: f64) -> f64 {
    PopulationTerms::new(params).customer(x, t_x, age)
}

/// Repeat counts up to this value get their `x`-only terms cached per
/// likelihood evaluation (see [`PopulationTerms::with_cache`]).
const CACHED_COUNTS: usize = 4096;

/// Per-evaluation constants of the likelihood, shared by all customers.
struct PopulationTerms {
    params: BgNbdParams,
    ln_gamma_r: f64,
    r_ln_alpha: f64,
    ln_gamma_a_plus_b: f64,
    ln_gamma_b: f64,
    ln_a: f64,
    /// `(A₁ + A₂, ln a − ln(b+x−1))` for `x = 0, 1, …`: the parts of the
    /// likelihood that depend on the customer through `x` alone.
    by_count: Vec<(f64, f64)>,
}

impl PopulationTerms {
    fn new(params: &BgNbdParams) -> Self {
        let BgNbdParams { r, alpha, a, b } = *params;
        Self {
            params: *params,
            ln_gamma_r: ln_gamma(r),
            r_ln_alpha: r * alpha.ln(),
            ln_gamma_a_plus_b: ln_gamma(a + b),
            ln_gamma_b: ln_gamma(b),
            ln_a: a.ln(),
            by_count: Vec::new(),
        }
    }

    /// Also caches the `x`-only terms for `x = 0..=min(max_x, CACHED_COUNTS)`.
    /// Repeat counts are small whole numbers shared by many customers, so
    /// this replaces three `ln Γ` calls per customer with a lookup.
    fn with_cache(params: &BgNbdParams, max_x: f64) -> Self {
        let mut terms = Self::new(params);
        let len = (max_x.min(CACHED_COUNTS as f64) as usize) + 1;
        terms.by_count = (0..len).map(|x| terms.count_terms(x as f64)).collect();
        terms
    }

    /// `(A₁ + A₂, ln a − ln(b+x−1))` computed directly.
    fn count_terms(&self, x: f64) -> (f64, f64) {
        let BgNbdParams { r, a, b, .. } = self.params;
        let a1 = ln_gamma(r + x) - self.ln_gamma_r + self.r_ln_alpha;
        let a2 = self.ln_gamma_a_plus_b + ln_gamma(b + x) - self.ln_gamma_b - ln_gamma(a + b + x);
        (a1 + a2, self.ln_a - (b + x - 1.0).ln())
    }

    /// One customer's log-likelihood (see [`customer_log_likelihood`]).
    fn customer(&self, x: f64, t_x: f64, age: f64) -> f64 {
        let BgNbdParams { r, alpha, .. } = self.params;
        let (a12, a4_const) = match self.by_count.get(x as usize) {
            Some(&cached) if x >= 0.0 && x.fract() == 0.0 => cached,
            _ => self.count_terms(x),
        };
        let a3 = -(r + x) * (alpha + age).ln();
        if x == 0.0 {
            return a12 + a3;
        }
        let a4 = a4_const - (r + x) * (alpha + t_x).ln();
        a12 + log_add_exp(a3, a4)
    }
}

/// `ln(e^u + e^v)` without overflow.
fn log_add_exp(u: f64, v: f64) -> f64 {
    let max = u.max(v);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + ((u - max).exp() + (v - max).exp()).ln()
}

/// Total log-likelihood of a population (sum of equation (6) logs).
///
/// Invalid histories or parameters yield `NaN`; [`fit`] validates first.
pub fn log_likelihood(params: &BgNbdParams, data: &[History]) -> f64 {
    if !params.is_valid() {
        return f64::NAN;
    }
    let max_x = data.iter().fold(0.0_f64, |m, h| m.max(h.x));
    let terms = PopulationTerms::with_cache(params, max_x);
    data.iter().map(|h| terms.customer(h.x, h.t_x, h.t)).sum()
}

/// Maximum-likelihood BG/NBD fit over a population.
///
/// Minimises the negative total log-likelihood over `(ln r, ln α, ln a, ln b)`
/// with Nelder–Mead (restarted until no further improvement), starting from
/// `r = a = b = 1` and `α = Σt / Σx` (so the starting mean rate `r/α` matches
/// the observed repeat rate). Standard errors: see [`Fit::std_errors`].
///
/// Errors: [`FitError::InvalidHistory`], [`FitError::TooFewCustomers`]
/// (fewer than [`FitOptions::min_customers`]), [`FitError::NoRepeatPurchases`],
/// [`FitError::NonFiniteLikelihood`], and [`FitError::NotConverged`] when
/// [`FitOptions::require_convergence`] is set.
pub fn fit(data: &[History], options: &FitOptions) -> Result<Fit<BgNbdParams>, FitError> {
    validate_all(data)?;
    if data.len() < options.min_customers {
        return Err(FitError::TooFewCustomers {
            needed: options.min_customers,
            got: data.len(),
        });
    }
    let total_x: f64 = data.iter().map(|h| h.x).sum();
    if total_x == 0.0 {
        return Err(FitError::NoRepeatPurchases);
    }
    let total_t: f64 = data.iter().map(|h| h.t).sum();
    let alpha0 = (total_t / total_x).max(f64::MIN_POSITIVE);
    let neg_ll = |theta: &[f64]| {
        let p: Vec<f64> = theta.iter().map(|t| t.exp()).collect();
        -log_likelihood(&BgNbdParams::from_slice(&p), data)
    };
    super::fit_log_params(
        neg_ll,
        &[1.0, alpha0, 1.0, 1.0],
        data.len(),
        options,
        BgNbdParams::from_slice,
    )
}

/// `ln` of the odds `P(dead) / P(alive)` for a customer with `x > 0`:
/// `ln[a/(b+x−1)] + (r+x) ln[(α+T)/(α+t_x)]` (equation (13)).
fn log_dead_odds(params: &BgNbdParams, x: f64, t_x: f64, age: f64) -> f64 {
    let BgNbdParams { r, alpha, a, b } = *params;
    a.ln() - (b + x - 1.0).ln() + (r + x) * ((alpha + age).ln() - (alpha + t_x).ln())
}

/// Probability that a customer with history `(x, t_x, T = age)` is still
/// active at `T` (equation (13)):
///
/// `P(alive) = 1 / (1 + δ(x>0) · a/(b+x−1) · ((α+T)/(α+t_x))^(r+x))`.
///
/// A customer with no repeat purchase is alive with probability 1 (in
/// BG/NBD dropout can only happen right after a purchase). `None` for
/// invalid parameters or history (see [`History::new`]).
pub fn p_alive(params: &BgNbdParams, x: f64, t_x: f64, age: f64) -> Option<f64> {
    check(params, x, t_x, age)?;
    if x == 0.0 {
        return Some(1.0);
    }
    // 1 / (1 + e^d), written to avoid overflow for large d.
    let d = log_dead_odds(params, x, t_x, age);
    Some(if d > 0.0 {
        (-d).exp() / (1.0 + (-d).exp())
    } else {
        1.0 / (1.0 + d.exp())
    })
}

/// Valid parameters and history, else `None`.
fn check(params: &BgNbdParams, x: f64, t_x: f64, age: f64) -> Option<()> {
    (params.is_valid() && History::new(x, t_x, age, 0.0).is_some()).then_some(())
}

/// Expected number of purchases in `(T, T + t]` for a customer with history
/// `(x, t_x, T = age)` (equation (10)):
///
/// `E[Y(t) | x, t_x, T] = (a+b+x−1)/(a−1)
///     · [1 − ((α+T)/(α+T+t))^(r+x) ₂F₁(r+x, b+x; a+b+x−1; z)] · P(alive)`,
/// with `z = t/(α+T+t)`.
///
/// `lifetimes` evaluates the ₂F₁ directly. Here Euler's transformation
/// `₂F₁(A, B; C; z) = (1−z)^(C−A−B) ₂F₁(C−A, C−B; C; z)` is applied first:
/// with `C − B = a − 1 =: ε` and `(ε)_k = ε (ε+1)_{k−1}` the bracket becomes
///
/// `[...]/(a−1) = −expm1(ε ln(1−z))/ε − (1−z)^ε · G`,
/// `G = Σ_{k≥1} (C−A)_k (ε+1)_{k−1} / ((C)_k k!) · z^k`, `C − A = a+b−1−r`,
///
/// which (i) removes the `0/0` at `a = 1`, (ii) has series terms decaying
/// like `k^(a−r−2) z^k` instead of `k^(r+x−a) z^k`, so heavy buyers need no
/// more terms than light ones, and (iii) never forms the huge ₂F₁ values
/// that make the direct form overflow. `C · G` is summed rather than `G` so
/// that `C = a+b+x−1 = 0` is harmless.
///
/// `t = 0` gives `0`. `None` for invalid parameters, history or `t`
/// (negative or non-finite), or if the series fails to converge (only for
/// `z` extremely close to 1, i.e. `t` vastly larger than `α + T`).
pub fn expected_purchases(params: &BgNbdParams, t: f64, x: f64, t_x: f64, age: f64) -> Option<f64> {
    check(params, x, t_x, age)?;
    if !(t.is_finite() && t >= 0.0) {
        return None;
    }
    if t == 0.0 {
        return Some(0.0);
    }
    let BgNbdParams { r, alpha, a, b } = *params;
    let z = t / (alpha + age + t);
    let ln_one_minus_z = (-z).ln_1p();
    let eps = a - 1.0;
    let c = a + b + x - 1.0;
    let c_minus_a = a + b - 1.0 - r;
    // C·G: first term (C−A) z; ratio (C−A+k)(ε+k) / ((C+k)(k+1)) · z for k ≥ 1.
    let c_times_g = sum_hypergeometric(
        c_minus_a * z,
        [c_minus_a + 1.0, eps + 1.0],
        [c + 1.0, 2.0],
        z,
    )?;
    // −expm1(ε L)/ε → −L as ε → 0.
    let power_term = if eps == 0.0 {
        -ln_one_minus_z
    } else {
        -(eps * ln_one_minus_z).exp_m1() / eps
    };
    let bracket = c * power_term - (eps * ln_one_minus_z).exp() * c_times_g;
    let expected = bracket * p_alive(params, x, t_x, age)?;
    expected.is_finite().then_some(expected)
}

#[cfg(test)]
mod tests {
    use super::super::special::hyp2f1;
    use super::super::testkit;
    use super::*;

    /// The published CDNOW estimates (Fader, Hardie & Lee 2005, Table 1 /
    /// section 5), used as fixed parameters for the reference values below.
    const PAPER: BgNbdParams = BgNbdParams {
        r: 0.243,
        alpha: 4.414,
        a: 0.793,
        b: 2.426,
    };

    /// `(x, t_x, T, t, E[Y(t)])` at [`PAPER`] parameters, from `lifetimes`
    /// 0.11.3 (numpy 1.26.4, scipy 1.11.4, pandas 1.5.3) in a venv:
    /// `BetaGeoFitter()` with `params_ = pd.Series(dict(r=0.243,
    /// alpha=4.414, a=0.793, b=2.426))`, then
    /// `conditional_expected_number_of_purchases_up_to_time(t, x, t_x, T)`.
    const LIFETIMES_EXPECTED: [(f64, f64, f64, f64, f64); 12] = [
        (2.0, 30.43, 38.86, 10.0, 0.3569733602656501),
        (2.0, 30.43, 38.86, 39.0, 1.2260281747671318),
        (2.0, 30.43, 38.86, 52.0, 1.5587208064320972),
        (0.0, 0.0, 38.86, 10.0, 0.05429984838044943),
        (0.0, 0.0, 38.86, 39.0, 0.19509805201125396),
        (1.0, 1.71, 38.86, 39.0, 0.2031869870797511),
        (6.0, 30.0, 32.0, 10.0, 1.3755765795345634),
        (6.0, 30.0, 32.0, 52.0, 5.628664301492891),
        (20.0, 35.0, 38.0, 10.0, 3.7910130034315364),
        (20.0, 35.0, 38.0, 52.0, 15.484638405287859),
        (3.0, 5.0, 38.86, 10.0, 0.02696369925656129),
        (3.0, 5.0, 38.86, 52.0, 0.11604929530197254),
    ];

    /// `(x, t_x, T, P(alive))` at [`PAPER`] parameters, from the same
    /// `lifetimes` setup: `conditional_probability_alive(x, t_x, T)`.
    const LIFETIMES_P_ALIVE: [(f64, f64, f64, f64); 6] = [
        (2.0, 30.43, 38.86, 0.726578570080673),
        (0.0, 0.0, 38.86, 1.0),
        (1.0, 1.71, 38.86, 0.2121009853773791),
        (6.0, 30.0, 32.0, 0.8680988979666288),
        (20.0, 35.0, 38.0, 0.8595506803078978),
        (3.0, 5.0, 38.86, 0.03815138968982288),
    ];

    /// `BetaGeoFitter().fit(frequency, recency, T)` on
    /// `cdnow_customers_summary.csv` with `lifetimes` 0.11.3 (BFGS with
    /// autograd gradients): parameters, standard errors and total
    /// log-likelihood (`-_negative_log_likelihood(...) * 2357`).
    const LIFETIMES_FIT: BgNbdParams = BgNbdParams {
        r: 0.2425929282798216,
        alpha: 4.413532265271803,
        a: 0.7928859664405851,
        b: 2.42575238262545,
    };
    const LIFETIMES_SE: [f64; 4] = [0.012557, 0.378221, 0.185719, 0.705345];
    const LIFETIMES_LL: f64 = -9582.425560567366;

    fn relative_error(got: f64, want: f64) -> f64 {
        ((got - want) / want).abs()
    }

    fn as_array(p: &BgNbdParams) -> [f64; 4] {
        [p.r, p.alpha, p.a, p.b]
    }

    #[test]
    fn p_alive_matches_lifetimes() {
        for (x, t_x, age, want) in LIFETIMES_P_ALIVE {
            let got = p_alive(&PAPER, x, t_x, age).expect("defined");
            assert!((got - want).abs() < 1e-12, "x={x}: {got} vs {want}");
        }
    }

    #[test]
    fn expected_purchases_matches_lifetimes() {
        for (x, t_x, age, t, want) in LIFETIMES_EXPECTED {
            let got = expected_purchases(&PAPER, t, x, t_x, age).expect("defined");
            assert!(
                relative_error(got, want) < 1e-10,
                "x={x} t={t}: {got} vs {want}"
            );
        }
    }

    /// Equation (10) evaluated literally with [`hyp2f1`], as `lifetimes` does.
    fn expected_purchases_direct(p: &BgNbdParams, t: f64, x: f64, t_x: f64, age: f64) -> f64 {
        let z = t / (p.alpha + age + t);
        let hyp = hyp2f1(p.r + x, p.b + x, p.a + p.b + x - 1.0, z).expect("converges");
        let first = (p.a + p.b + x - 1.0) / (p.a - 1.0);
        let second = 1.0 - ((p.alpha + age) / (p.alpha + age + t)).powf(p.r + x) * hyp;
        first * second * p_alive(p, x, t_x, age).expect("defined")
    }

    #[test]
    fn euler_transformed_expectation_equals_the_direct_formula() {
        let params = [
            PAPER,
            BgNbdParams::new(1.3, 12.0, 2.5, 0.7).expect("valid"),
            BgNbdParams::new(0.5, 2.0, 0.2, 5.0).expect("valid"),
        ];
        for p in &params {
            for &(x, t_x, age) in &[(0.0, 0.0, 20.0), (4.0, 15.0, 20.0), (12.0, 3.0, 50.0)] {
                for &t in &[1.0, 26.0, 104.0] {
                    let got = expected_purchases(p, t, x, t_x, age).expect("defined");
                    let want = expected_purchases_direct(p, t, x, t_x, age);
                    assert!(
                        relative_error(got, want) < 1e-9,
                        "{p:?} {x} {t}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn expected_purchases_is_continuous_through_a_equal_one() {
        // The direct form is 0/0 at a = 1; the transformed one must be smooth.
        let at = |a: f64| {
            let p = BgNbdParams::new(0.4, 5.0, a, 2.0).expect("valid");
            expected_purchases(&p, 30.0, 3.0, 20.0, 40.0).expect("defined")
        };
        let (below, exact, above) = (at(1.0 - 1e-7), at(1.0), at(1.0 + 1e-7));
        assert!(exact > 0.0 && exact.is_finite());
        assert!((below - exact).abs() < 1e-6 && (above - exact).abs() < 1e-6);
    }

    #[test]
    fn expected_purchases_handles_edges_and_rejects_bad_input() {
        assert_eq!(expected_purchases(&PAPER, 0.0, 2.0, 30.0, 38.0), Some(0.0));
        assert_eq!(expected_purchases(&PAPER, -1.0, 2.0, 30.0, 38.0), None);
        assert_eq!(expected_purchases(&PAPER, 10.0, 2.0, 40.0, 38.0), None);
        assert_eq!(expected_purchases(&PAPER, 10.0, 1.5, 30.0, 38.0), None);
        assert_eq!(p_alive(&PAPER, 2.0, -1.0, 38.0), None);
        let bad = BgNbdParams { r: -1.0, ..PAPER };
        assert_eq!(p_alive(&bad, 2.0, 30.0, 38.0), None);
        // Very heavy buyer: direct ₂F₁ would be astronomically large.
        let heavy = expected_purchases(&PAPER, 52.0, 500.0, 38.0, 38.0).expect("defined");
        assert!(heavy.is_finite() && heavy > 100.0, "{heavy}");
        // P(alive) underflows gracefully for a long-silent heavy buyer.
        let silent = p_alive(&PAPER, 500.0, 1.0, 38.0).expect("defined");
        assert!((0.0..1e-100).contains(&silent), "{silent}");
    }

    #[test]
    fn customer_log_likelihood_matches_equation_six_in_linear_space() {
        let p = PAPER;
        let (x, t_x, age): (f64, f64, f64) = (3.0, 20.0, 35.0);
        let beta = |u: f64, v: f64| (ln_gamma(u) + ln_gamma(v) - ln_gamma(u + v)).exp();
        let common = (ln_gamma(p.r + x) - ln_gamma(p.r)).exp() * p.alpha.powf(p.r);
        let first = beta(p.a, p.b + x) / beta(p.a, p.b) * common / (p.alpha + age).powf(p.r + x);
        let second = beta(p.a + 1.0, p.b + x - 1.0) / beta(p.a, p.b) * common
            / (p.alpha + t_x).powf(p.r + x);
        let want = (first + second).ln();
        let got = customer_log_likelihood(&p, x, t_x, age);
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }

    #[test]
    fn population_log_likelihood_is_the_sum_over_customers() {
        // Exercises the per-count cache, including counts beyond its size.
        let mut data = testkit::simulate_bgnbd(&PAPER, 300, 52.0, 3);
        data.push(History::new(CACHED_COUNTS as f64 + 10.0, 50.0, 52.0, 0.0).expect("valid"));
        let total = log_likelihood(&PAPER, &data);
        let direct: f64 = data
            .iter()
            .map(|h| customer_log_likelihood(&PAPER, h.x, h.t_x, h.t))
            .sum();
        assert!(total.is_finite());
        assert!(
            (total - direct).abs() < 1e-9 * direct.abs(),
            "{total} vs {direct}"
        );
        assert!(log_likelihood(&BgNbdParams { a: 0.0, ..PAPER }, &data).is_nan());
    }

    #[test]
    fn fit_rejects_unusable_input() {
        let options = FitOptions::default();
        let few = vec![History::new(1.0, 1.0, 2.0, 1.0).expect("valid"); 5];
        assert_eq!(
            fit(&few, &options).unwrap_err(),
            FitError::TooFewCustomers { needed: 20, got: 5 }
        );
        let none = vec![History::new(0.0, 0.0, 2.0, 1.0).expect("valid"); 50];
        assert_eq!(
            fit(&none, &options).unwrap_err(),
            FitError::NoRepeatPurchases
        );
        let mut bad = vec![History::new(1.0, 1.0, 2.0, 1.0).expect("valid"); 50];
        bad[3].t_x = 5.0;
        assert!(matches!(
            fit(&bad, &options).unwrap_err(),
            FitError::InvalidHistory { index: 3, .. }
        ));
    }

    #[test]
    fn fit_reports_non_convergence_when_out_of_iterations() {
        let data = testkit::simulate_bgnbd(&PAPER, 500, 52.0, 7);
        let mut options = FitOptions::default();
        options.optimizer.max_iterations = 10;
        assert!(matches!(
            fit(&data, &options).unwrap_err(),
            FitError::NotConverged { iterations: 10, .. }
        ));
        options.require_convergence = false;
        let result = fit(&data, &options).expect("a fit, flagged");
        assert!(!result.converged);
    }

    #[test]
    fn cdnow_fit_reproduces_published_estimates() {
        let data = testkit::cdnow_summary();
        assert_eq!(data.len(), 2357, "CDNOW sample has 2,357 customers");
        let result = fit(&data, &FitOptions::default()).expect("CDNOW fit");
        eprintln!("CDNOW BG/NBD fit: {result:?}");
        assert!(result.converged);
        let published = [0.243, 4.414, 0.793, 2.426];
        for (got, want) in as_array(&result.params).iter().zip(published) {
            assert!(
                relative_error(*got, want) < 0.01,
                "{got} vs published {want}"
            );
        }
        assert!(
            (result.log_likelihood - (-9582.4)).abs() < 1.0,
            "LL {}",
            result.log_likelihood
        );
        // Tighter: the same optimum as lifetimes' BFGS.
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
        let truth = BgNbdParams::new(0.25, 4.0, 0.8, 2.5).expect("valid");
        let data = testkit::simulate_bgnbd(&truth, 5_000, 52.0, 20_240_601);
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
