//! Figures, their medians, and the table or JSON they are printed as.

use serde::Serialize;

/// One printed row: a measured figure, and how it compares with its limit and target.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What was measured.
    pub figure: String,
    /// The median over `runs`.
    pub value: f64,
    /// Such as `steps/s`.
    pub unit: &'static str,
    /// Runs the median is over.
    pub runs: usize,
    /// The limit this figure is compared with, and its value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<(String, f64)>,
    /// `value / limit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// The target, in words, such as `ratio >= 0.50`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Whether the target holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub met: Option<bool>,
}

impl Row {
    /// A figure with no limit or target.
    pub fn plain(figure: impl Into<String>, samples: &[f64], unit: &'static str) -> Self {
        Self {
            figure: figure.into(),
            value: median(samples),
            unit,
            runs: samples.len(),
            limit: None,
            ratio: None,
            target: None,
            met: None,
        }
    }

    /// Compares with a limit: the target is `value >= min_ratio * limit`.
    pub fn against(mut self, limit_name: impl Into<String>, limit: f64, min_ratio: f64) -> Self {
        let ratio = if limit > 0.0 { self.value / limit } else { 0.0 };
        self.limit = Some((limit_name.into(), limit));
        self.ratio = Some(ratio);
        self.target = Some(format!("ratio >= {min_ratio:.2}"));
        self.met = Some(ratio >= min_ratio);
        self
    }

    /// An absolute ceiling: the target is `value < max`.
    pub fn below(mut self, max: f64) -> Self {
        self.target = Some(format!("< {} {}", human(max), self.unit));
        self.met = Some(self.value < max);
        self
    }
}

/// The median; the mean of the middle two for an even count; 0 for none.
pub fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => f64::midpoint(sorted[n / 2 - 1], sorted[n / 2]),
    }
}

/// The `q`-quantile (0..=1) by nearest rank; 0 for none.
pub fn quantile(samples: &[f64], q: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return 0.0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// A number with thousands separators, or three significant decimals below 10.
pub fn human(v: f64) -> String {
    if v.abs() < 10.0 {
        return format!("{v:.3}");
    }
    #[allow(clippy::cast_possible_truncation)]
    let whole = v.round() as i64;
    let digits = whole.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if whole < 0 { format!("-{out}") } else { out }
}

/// The rows as an aligned table.
pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<46} {:>14} {:<10} {:>4}  {:<34} {:>6}  {}\n",
        "figure", "median", "unit", "runs", "limit", "ratio", "target"
    );
    for row in rows {
        let limit = row
            .limit
            .as_ref()
            .map(|(name, v)| format!("{name} {}", human(*v)))
            .unwrap_or_default();
        let ratio = row.ratio.map(|r| format!("{r:.2}")).unwrap_or_default();
        let target = match (&row.target, row.met) {
            (Some(t), Some(true)) => format!("{t}: met"),
            (Some(t), Some(false)) => format!("{t}: MISSED"),
            _ => String::new(),
        };
        out.push_str(&format!(
            "{:<46} {:>14} {:<10} {:>4}  {:<34} {:>6}  {}\n",
            row.figure,
            human(row.value),
            row.unit,
            row.runs,
            limit,
            ratio,
            target
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_quantiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&hundred, 0.5), 50.0);
        assert_eq!(quantile(&hundred, 0.99), 99.0);
        assert_eq!(quantile(&hundred, 1.0), 100.0);
    }

    #[test]
    fn targets_compare_with_limits() {
        let row = Row::plain("x", &[40.0], "steps/s").against("limit", 100.0, 0.5);
        assert_eq!(row.met, Some(false));
        let row = Row::plain("x", &[60.0], "steps/s").against("limit", 100.0, 0.5);
        assert_eq!(row.met, Some(true));
        assert_eq!(Row::plain("p99", &[0.4], "s").below(1.0).met, Some(true));
        assert_eq!(human(1_234_567.4), "1,234,567");
    }
}
