//! Test support: a deterministic PRNG, the samplers needed to simulate
//! BG/NBD and Gamma-Gamma populations, and loaders for the CDNOW sample.

use super::{BgNbdParams, GammaGammaParams, History};
use std::path::{Path, PathBuf};

/// SplitMix64 (Steele, Lea & Flood 2014): tiny, fast, and good enough for
/// simulation tests; fully deterministic from its seed.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform on the open interval (0, 1), so `ln` of it is finite.
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal by the Box–Muller transform.
    pub fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Exponential with the given rate.
    pub fn exponential(&mut self, rate: f64) -> f64 {
        -self.uniform().ln() / rate
    }

    /// Gamma(shape, rate) by Marsaglia & Tsang (2000); for shape < 1 uses
    /// `Gamma(shape) = Gamma(shape + 1) · U^(1/shape)`.
    pub fn gamma(&mut self, shape: f64, rate: f64) -> f64 {
        if shape < 1.0 {
            let boost = self.uniform().powf(1.0 / shape);
            return self.gamma(shape + 1.0, rate) * boost;
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let z = self.normal();
            let v = (1.0 + c * z).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = self.uniform();
            if u.ln() < 0.5 * z * z + d - d * v + d * v.ln() {
                return d * v / rate;
            }
        }
    }

    /// Beta(a, b) as `X / (X + Y)` with `X ~ Gamma(a)`, `Y ~ Gamma(b)`.
    pub fn beta(&mut self, a: f64, b: f64) -> f64 {
        let x = self.gamma(a, 1.0);
        let y = self.gamma(b, 1.0);
        x / (x + y)
    }
}

/// Simulates `n` BG/NBD customers. Customers are acquired uniformly over the
/// first three quarters of a window of length `horizon`, so their ages `T`
/// are uniform on `[horizon/4, horizon]`. Each draws `λ ~ Gamma(r, α)` and
/// `p ~ Beta(a, b)`, buys with exponential gaps while active, and drops out
/// with probability `p` after each repeat purchase. `monetary` is left 0.
pub fn simulate_bgnbd(params: &BgNbdParams, n: usize, horizon: f64, seed: u64) -> Vec<History> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let age = horizon * (0.25 + 0.75 * rng.uniform());
            let lambda = rng.gamma(params.r, params.alpha);
            let p = rng.beta(params.a, params.b);
            let (mut x, mut t_x, mut now) = (0.0, 0.0, 0.0);
            loop {
                now += rng.exponential(lambda);
                if now > age {
                    break;
                }
                x += 1.0;
                t_x = now;
                if rng.uniform() < p {
                    break;
                }
            }
            History::new(x, t_x, age, 0.0).expect("simulated history is valid")
        })
        .collect()
}

/// Fills `monetary` with the mean of `max(x, 1)` Gamma-Gamma transaction
/// values: per customer `ν ~ Gamma(q, v)`, each value `~ Gamma(p, ν)`.
pub fn simulate_spend(params: &GammaGammaParams, data: &mut [History], seed: u64) {
    let mut rng = SplitMix64::new(seed);
    for h in data.iter_mut() {
        let nu = rng.gamma(params.q, params.v);
        let count = h.x.max(1.0) as usize;
        let total: f64 = (0..count).map(|_| rng.gamma(params.p, nu)).sum();
        h.monetary = total / count as f64;
    }
}

/// Environment variable naming `cdnow_customers_summary.csv`.
pub const CDNOW_ENV: &str = "TRELLIS_CDNOW_SUMMARY";

/// Path of the CDNOW summary; panics with instructions if unset.
fn cdnow_path() -> PathBuf {
    match std::env::var_os(CDNOW_ENV) {
        Some(path) => PathBuf::from(path),
        None => panic!(
            "{CDNOW_ENV} is not set. The CDNOW tests need the data shipped with the \
             `lifetimes` Python package: run ./test.sh, which fetches it, or `tests/support/fetch_cdnow.sh DIR` and set \
             {CDNOW_ENV}=DIR/cdnow_customers_summary.csv \
             (cdnow_customers_summary_with_transactions.csv must sit beside it)"
        ),
    }
}

/// Reads a CSV with a header and returns the named numeric columns.
fn read_columns(path: &Path, columns: &[&str]) -> Vec<Vec<f64>> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("CSV header").split(',').collect();
    let index: Vec<usize> = columns
        .iter()
        .map(|c| {
            header
                .iter()
                .position(|h| h.trim() == *c)
                .unwrap_or_else(|| panic!("column {c} missing in {}", path.display()))
        })
        .collect();
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            index
                .iter()
                .map(|&i| fields[i].trim().parse().expect("numeric field"))
                .collect()
        })
        .collect()
}

/// The 2,357-customer CDNOW summary (`frequency, recency, T` in weeks).
pub fn cdnow_summary() -> Vec<History> {
    read_columns(&cdnow_path(), &["frequency", "recency", "T"])
        .into_iter()
        .map(|r| History::new(r[0], r[1], r[2], 0.0).expect("valid CDNOW row"))
        .collect()
}

/// The CDNOW summary with mean repeat-transaction value (`zbar`), read from
/// `cdnow_customers_summary_with_transactions.csv` beside the summary.
pub fn cdnow_with_monetary() -> Vec<History> {
    let path = cdnow_path().with_file_name("cdnow_customers_summary_with_transactions.csv");
    read_columns(&path, &["x", "t_x", "T", "zbar"])
        .into_iter()
        .map(|r| History::new(r[0], r[1], r[2], r[3]).expect("valid CDNOW row"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gamma_and_beta_samplers_have_the_right_moments() {
        let mut rng = SplitMix64::new(42);
        let n = 200_000;
        for &(shape, rate) in &[(0.25, 4.0), (3.7, 15.0)] {
            let draws: Vec<f64> = (0..n).map(|_| rng.gamma(shape, rate)).collect();
            let mean = draws.iter().sum::<f64>() / n as f64;
            let var = draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / n as f64;
            let (want_mean, want_var) = (shape / rate, shape / (rate * rate));
            assert!(
                (mean / want_mean - 1.0).abs() < 0.02,
                "{shape}: mean {mean}"
            );
            assert!((var / want_var - 1.0).abs() < 0.05, "{shape}: var {var}");
        }
        let draws: Vec<f64> = (0..n).map(|_| rng.beta(0.8, 2.5)).collect();
        let mean = draws.iter().sum::<f64>() / n as f64;
        assert!((mean - 0.8 / 3.3).abs() < 0.005, "beta mean {mean}");
    }

    #[test]
    fn splitmix_is_deterministic_and_uniform_is_open() {
        let a: Vec<u64> = (0..3)
            .scan(SplitMix64::new(7), |r, _| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..3)
            .scan(SplitMix64::new(7), |r, _| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
        let mut rng = SplitMix64::new(1);
        assert!(
            (0..10_000)
                .map(|_| rng.uniform())
                .all(|u| u > 0.0 && u < 1.0)
        );
    }
}
