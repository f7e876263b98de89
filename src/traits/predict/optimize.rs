//! Small derivative-free optimiser and numerical-curvature helpers.
//!
//! The models are fitted by minimising a negative log-likelihood over
//! log-transformed parameters with [`nelder_mead`]; standard errors come
//! from [`hessian`] and [`invert_spd`]. Nelder–Mead was chosen over a
//! gradient method because the likelihoods are cheap, low-dimensional (3–4
//! parameters) and smooth, and it needs no derivative code to keep in sync
//! with the likelihood.

/// Settings for [`nelder_mead`].
#[derive(Debug, Clone, PartialEq)]
pub struct NelderMeadOptions {
    /// Maximum simplex iterations summed over all restarts.
    pub max_iterations: usize,
    /// How many times the search is restarted from its best point with a
    /// fresh simplex (guards against a collapsed simplex stopping early).
    pub max_restarts: usize,
    /// Convergence: spread of function values over the simplex below
    /// `f_tolerance · (1 + |f_best|)`.
    pub f_tolerance: f64,
    /// Convergence: largest distance from the best vertex to any other,
    /// in each coordinate, below `x_tolerance`.
    pub x_tolerance: f64,
    /// Edge length of the initial simplex along every coordinate.
    pub initial_step: f64,
}

impl Default for NelderMeadOptions {
    fn default() -> Self {
        Self {
            max_iterations: 20_000,
            max_restarts: 10,
            f_tolerance: 1e-12,
            x_tolerance: 1e-8,
            initial_step: 0.5,
        }
    }
}

/// Result of [`nelder_mead`].
#[derive(Debug, Clone, PartialEq)]
pub struct Minimum {
    /// Best point found.
    pub x: Vec<f64>,
    /// Function value at [`Minimum::x`].
    pub f: f64,
    /// Simplex iterations performed, over all restarts.
    pub iterations: usize,
    /// Function evaluations performed, over all restarts.
    pub evaluations: usize,
    /// Whether a run met both tolerances and a restart from its best point
    /// could not improve `f` by more than the tolerance.
    pub converged: bool,
}

// Standard Nelder–Mead coefficients: reflection, expansion, contraction, shrink.
const REFLECT: f64 = 1.0;
const EXPAND: f64 = 2.0;
const CONTRACT: f64 = 0.5;
const SHRINK: f64 = 0.5;

/// Minimises `f` from `x0` with the Nelder–Mead simplex method, restarting
/// from the best point until a restart no longer improves the value.
///
/// Non-finite function values are treated as `+∞`, so the objective may
/// return `NaN`/`∞` for points outside its domain. An empty `x0` yields a
/// converged minimum at the empty point.
pub fn nelder_mead<F>(mut f: F, x0: &[f64], options: &NelderMeadOptions) -> Minimum
where
    F: FnMut(&[f64]) -> f64,
{
    let mut objective = |x: &[f64]| {
        let value = f(x);
        if value.is_finite() {
            value
        } else {
            f64::INFINITY
        }
    };
    let mut best = Minimum {
        x: x0.to_vec(),
        f: objective(x0),
        iterations: 0,
        evaluations: 1,
        converged: false,
    };
    if x0.is_empty() {
        best.converged = true;
        return best;
    }
    for restart in 0..=options.max_restarts {
        let budget = options.max_iterations.saturating_sub(best.iterations);
        if budget == 0 {
            break;
        }
        let run = single_run(&mut objective, &best.x, options, budget);
        best.iterations += run.iterations;
        best.evaluations += run.evaluations;
        let improvement = best.f - run.f;
        let improved = improvement > options.f_tolerance * (1.0 + run.f.abs());
        if run.f < best.f {
            best.x = run.x;
            best.f = run.f;
        }
        // A restart (not the first run) that cannot improve confirms convergence.
        if run.converged && restart > 0 && !improved {
            best.converged = true;
            break;
        }
    }
    best
}

/// One Nelder–Mead run from a fresh axis-aligned simplex around `start`.
fn single_run<F>(f: &mut F, start: &[f64], options: &NelderMeadOptions, budget: usize) -> Minimum
where
    F: FnMut(&[f64]) -> f64,
{
    let n = start.len();
    let mut simplex: Vec<(Vec<f64>, f64)> = Vec::with_capacity(n + 1);
    simplex.push((start.to_vec(), f(start)));
    for i in 0..n {
        let mut vertex = start.to_vec();
        vertex[i] += options.initial_step;
        let value = f(&vertex);
        simplex.push((vertex, value));
    }
    let mut evaluations = n + 1;
    let mut iterations = 0;
    let mut converged = false;
    while iterations < budget {
        simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
        if has_converged(&simplex, options) {
            converged = true;
            break;
        }
        iterations += 1;
        evaluations += step(f, &mut simplex);
    }
    simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
    let (x, value) = simplex.swap_remove(0);
    Minimum {
        x,
        f: value,
        iterations,
        evaluations,
        converged,
    }
}

/// Both tolerances met on a simplex sorted best-first.
fn has_converged(simplex: &[(Vec<f64>, f64)], options: &NelderMeadOptions) -> bool {
    let best = &simplex[0];
    let worst = &simplex[simplex.len() - 1];
    if !best.1.is_finite() || !worst.1.is_finite() {
        return false;
    }
    let f_spread = worst.1 - best.1;
    let x_spread = simplex[1..]
        .iter()
        .flat_map(|(v, _)| v.iter().zip(&best.0).map(|(a, b)| (a - b).abs()))
        .fold(0.0, f64::max);
    f_spread <= options.f_tolerance * (1.0 + best.1.abs()) && x_spread <= options.x_tolerance
}

/// One Nelder–Mead iteration on a simplex sorted best-first; returns the
/// number of function evaluations used.
fn step<F>(f: &mut F, simplex: &mut [(Vec<f64>, f64)]) -> usize
where
    F: FnMut(&[f64]) -> f64,
{
    let n = simplex.len() - 1;
    let centroid: Vec<f64> = (0..n)
        .map(|j| simplex[..n].iter().map(|(v, _)| v[j]).sum::<f64>() / n as f64)
        .collect();
    let worst = simplex[n].clone();
    // Point on the line from the worst vertex through the centroid.
    let along = |coef: f64| -> Vec<f64> {
        centroid
            .iter()
            .zip(&worst.0)
            .map(|(c, w)| c + coef * (c - w))
            .collect()
    };
    let reflected = along(REFLECT);
    let f_reflected = f(&reflected);
    let second_worst = simplex[n - 1].1;
    if f_reflected < simplex[0].1 {
        let expanded = along(EXPAND);
        let f_expanded = f(&expanded);
        simplex[n] = if f_expanded < f_reflected {
            (expanded, f_expanded)
        } else {
            (reflected, f_reflected)
        };
        return 2;
    }
    if f_reflected < second_worst {
        simplex[n] = (reflected, f_reflected);
        return 1;
    }
    // Contract: outside if the reflection beat the worst vertex, else inside.
    let (contracted, f_contracted) = if f_reflected < worst.1 {
        let point = along(REFLECT * CONTRACT);
        let value = f(&point);
        (point, value)
    } else {
        let point = along(-CONTRACT);
        let value = f(&point);
        (point, value)
    };
    if f_contracted < worst.1.min(f_reflected) {
        simplex[n] = (contracted, f_contracted);
        return 2;
    }
    // Shrink every vertex towards the best one.
    let best = simplex[0].0.clone();
    for (vertex, value) in simplex[1..].iter_mut() {
        for (v, b) in vertex.iter_mut().zip(&best) {
            *v = b + SHRINK * (*v - b);
        }
        *value = f(vertex);
    }
    2 + n
}

/// Numerical Hessian of `f` at `x` by central finite differences with step
/// `h` in every coordinate:
///
/// `H_ii ≈ (f(x + h e_i) − 2 f(x) + f(x − h e_i)) / h²` and
/// `H_ij ≈ (f(++) − f(+−) − f(−+) + f(−−)) / (4h²)`.
///
/// The truncation error is `O(h²)`; with `h ≈ 1e-4` and an objective of
/// magnitude `F`, rounding contributes about `ε F / h²`.
// Index loops mirror the matrix formulas more clearly than iterators.
#[allow(clippy::needless_range_loop)]
pub fn hessian<F>(mut f: F, x: &[f64], h: f64) -> Vec<Vec<f64>>
where
    F: FnMut(&[f64]) -> f64,
{
    let n = x.len();
    let f0 = f(x);
    let mut eval = |offsets: &[(usize, f64)]| {
        let mut point = x.to_vec();
        for &(i, d) in offsets {
            point[i] += d;
        }
        f(&point)
    };
    let mut hess = vec![vec![0.0; n]; n];
    for i in 0..n {
        let plus = eval(&[(i, h)]);
        let minus = eval(&[(i, -h)]);
        hess[i][i] = (plus - 2.0 * f0 + minus) / (h * h);
        for j in 0..i {
            let pp = eval(&[(i, h), (j, h)]);
            let pm = eval(&[(i, h), (j, -h)]);
            let mp = eval(&[(i, -h), (j, h)]);
            let mm = eval(&[(i, -h), (j, -h)]);
            let value = (pp - pm - mp + mm) / (4.0 * h * h);
            hess[i][j] = value;
            hess[j][i] = value;
        }
    }
    hess
}

/// Inverse of a symmetric positive-definite matrix via its Cholesky
/// factorisation; `None` if the matrix is not square, not finite or not
/// positive definite (e.g. a Hessian at a saddle point or on a flat ridge).
// Index loops mirror the matrix formulas more clearly than iterators.
#[allow(clippy::needless_range_loop)]
pub fn invert_spd(matrix: &[Vec<f64>]) -> Option<Vec<Vec<f64>>> {
    let n = matrix.len();
    if matrix.iter().any(|row| row.len() != n) {
        return None;
    }
    let l = cholesky(matrix)?;
    // Solve L Lᵀ X = I column by column.
    let mut inverse = vec![vec![0.0; n]; n];
    for col in 0..n {
        let mut y = vec![0.0; n];
        for i in 0..n {
            let rhs = if i == col { 1.0 } else { 0.0 };
            let dot: f64 = (0..i).map(|k| l[i][k] * y[k]).sum();
            y[i] = (rhs - dot) / l[i][i];
        }
        for i in (0..n).rev() {
            let dot: f64 = (i + 1..n).map(|k| l[k][i] * inverse[k][col]).sum();
            inverse[i][col] = (y[i] - dot) / l[i][i];
        }
    }
    Some(inverse)
}

/// Lower-triangular Cholesky factor `L` with `L Lᵀ = matrix`.
fn cholesky(matrix: &[Vec<f64>]) -> Option<Vec<Vec<f64>>> {
    let n = matrix.len();
    let mut l = vec![vec![0.0; n]; n];
    for i in 0..n {
        for j in 0..=i {
            let dot: f64 = (0..j).map(|k| l[i][k] * l[j][k]).sum();
            let value = matrix[i][j] - dot;
            if i == j {
                if !(value.is_finite() && value > 0.0) {
                    return None;
                }
                l[i][i] = value.sqrt();
            } else {
                l[i][j] = value / l[j][j];
            }
        }
    }
    Some(l)
}

/// Standard errors of `p = exp(θ)` from the Hessian of a negative
/// log-likelihood in `θ = ln p` at its minimum, by the delta method:
/// `Cov(θ) ≈ H⁻¹` and `SE(pᵢ) = pᵢ · √(H⁻¹)ᵢᵢ`.
///
/// At the optimum this equals inverting the Hessian taken directly in `p`
/// (the gradient term of the chain rule vanishes there). `None` when the
/// Hessian is not positive definite.
pub fn log_space_standard_errors(log_params: &[f64], hess: &[Vec<f64>]) -> Option<Vec<f64>> {
    let cov = invert_spd(hess)?;
    log_params
        .iter()
        .enumerate()
        .map(|(i, theta)| {
            let var = cov[i][i];
            (var.is_finite() && var >= 0.0).then(|| theta.exp() * var.sqrt())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rosenbrock(x: &[f64]) -> f64 {
        (1.0 - x[0]).powi(2) + 100.0 * (x[1] - x[0] * x[0]).powi(2)
    }

    #[test]
    fn nelder_mead_finds_rosenbrock_minimum() {
        let result = nelder_mead(rosenbrock, &[-1.2, 1.0], &NelderMeadOptions::default());
        assert!(result.converged, "{result:?}");
        assert!((result.x[0] - 1.0).abs() < 1e-6, "{result:?}");
        assert!((result.x[1] - 1.0).abs() < 1e-6, "{result:?}");
        assert!(result.f < 1e-12, "{result:?}");
    }

    #[test]
    fn nelder_mead_minimises_a_shifted_quadratic_in_four_dimensions() {
        let centre = [0.3, -2.0, 5.0, 1.5];
        let quad = |x: &[f64]| -> f64 {
            x.iter()
                .zip(&centre)
                .enumerate()
                .map(|(i, (a, c))| (i as f64 + 1.0) * (a - c).powi(2))
                .sum()
        };
        let result = nelder_mead(quad, &[0.0; 4], &NelderMeadOptions::default());
        assert!(result.converged);
        for (x, c) in result.x.iter().zip(&centre) {
            assert!((x - c).abs() < 1e-6, "{result:?}");
        }
    }

    #[test]
    fn nelder_mead_treats_non_finite_values_as_infinite() {
        // ln is NaN for x < 0: the search must stay in the domain and find x = 1.
        let f = |x: &[f64]| x[0] - x[0].ln();
        let result = nelder_mead(f, &[3.0], &NelderMeadOptions::default());
        assert!(result.converged);
        assert!((result.x[0] - 1.0).abs() < 1e-6, "{result:?}");
    }

    #[test]
    fn nelder_mead_reports_non_convergence_when_out_of_iterations() {
        let options = NelderMeadOptions {
            max_iterations: 5,
            ..NelderMeadOptions::default()
        };
        let result = nelder_mead(rosenbrock, &[-1.2, 1.0], &options);
        assert!(!result.converged);
        assert!(result.iterations <= 5);
    }

    #[test]
    fn hessian_of_a_quadratic_is_exact() {
        // f = x² + 3xy + 5y² → H = [[2, 3], [3, 10]].
        let f = |v: &[f64]| v[0] * v[0] + 3.0 * v[0] * v[1] + 5.0 * v[1] * v[1];
        let h = hessian(f, &[0.7, -0.2], 1e-4);
        let expected = [[2.0, 3.0], [3.0, 10.0]];
        for i in 0..2 {
            for j in 0..2 {
                assert!((h[i][j] - expected[i][j]).abs() < 1e-5, "{h:?}");
            }
        }
    }

    #[test]
    fn invert_spd_inverts_and_rejects_indefinite_matrices() {
        let m = vec![vec![4.0, 2.0], vec![2.0, 3.0]];
        let inv = invert_spd(&m).expect("positive definite");
        // Inverse of [[4,2],[2,3]] is [[3,-2],[-2,4]] / 8.
        let expected = [[0.375, -0.25], [-0.25, 0.5]];
        for i in 0..2 {
            for j in 0..2 {
                assert!((inv[i][j] - expected[i][j]).abs() < 1e-14);
            }
        }
        assert!(invert_spd(&[vec![1.0, 2.0], vec![2.0, 1.0]]).is_none());
        assert!(invert_spd(&[vec![1.0, 0.0]]).is_none());
    }

    #[test]
    fn log_space_standard_errors_apply_the_delta_method() {
        // H = diag(4, 100) in θ → var θ = (0.25, 0.01); p = (e, 1).
        let hess = vec![vec![4.0, 0.0], vec![0.0, 100.0]];
        let se = log_space_standard_errors(&[1.0, 0.0], &hess).expect("spd");
        assert!((se[0] - std::f64::consts::E * 0.5).abs() < 1e-12);
        assert!((se[1] - 0.1).abs() < 1e-12);
    }
}
