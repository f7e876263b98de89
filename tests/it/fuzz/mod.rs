//! Fuzzing hostile input on stable Rust, in the normal test suite: event JSON, NDJSON
//! batches, CSV imports, workflow and segment files, and templates.
//!
//! Each target feeds [`cases`] inputs (`TRELLIS_FUZZ_CASES`, default 100 000) to a pure
//! entry point: mutations of the real example files (byte flips, truncations, splices,
//! dictionary tokens, long runs, deep nesting), structure-aware generators, and raw bytes.
//! The property: no input panics, each is handled within [`LIMIT`] (wall time, or for an
//! input over it, the CPU time of its best of four more runs, since the cores are shared),
//! and a refusal is an `Err` that says something. A failing input is saved under the Cargo
//! target's temporary folder (`fuzz-failures/`) and named in the failure; the generator is
//! seeded (`TRELLIS_FUZZ_SEED`), so a run is repeatable. On success each target prints one line for the soak script:
//! `RELIABILITY fuzz <target>: <N> inputs, 0 panics, slowest <ms> ms`.

mod csv;
mod events;
// Workflow and segment files; named so that the longest target starts among the first.
mod files;
mod mutate;
mod templates;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::Duration;

/// The most time one input may take, in the debug test profile too.
pub const LIMIT: Duration = Duration::from_millis(100);

/// How many inputs each target runs: `TRELLIS_FUZZ_CASES` (digits, `_` allowed), default
/// 100 000.
pub fn cases() -> usize {
    number("TRELLIS_FUZZ_CASES").map_or(100_000, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// A whole number from the environment, if set; a value that is not one stops the run
/// rather than falling back to a default silently.
fn number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let digits = value.trim().replace('_', "");
    Some(
        digits
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a whole number")),
    )
}

/// The generator's seed: `TRELLIS_FUZZ_SEED`, or a fixed default so CI is repeatable.
fn seed() -> u64 {
    number("TRELLIS_FUZZ_SEED").unwrap_or(0x7e11_15f0_22ed)
}

/// A small, fast, seedable generator (SplitMix64): cheap enough for 10^5 inputs in debug.
pub struct Rng(u64);

impl Rng {
    /// A generator for one target, so that targets do not share a stream.
    fn for_target(target: &str) -> Self {
        let mut state = seed();
        for b in target.bytes() {
            state = (state ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Self(state)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    /// True once in `n` times.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    /// One of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A size in `1..=max`: log-uniform up to 1 024 mostly, and up to `max` one time in
    /// eight, so that large inputs are tried without making every input slow to handle.
    pub fn size(&mut self, max: usize) -> usize {
        let max = if self.one_in(8) { max } else { max.min(1024) };
        let bits = usize::BITS - max.leading_zeros();
        let cap = 1usize << self.below(bits as usize + 1);
        1 + self.below(cap.min(max))
    }
}

/// Runs `f` and measures it.
// Allowed here: the product reads time only through `clock::Clock` (clippy.toml), but this
// test measures how long each hostile input takes, which needs the real monotonic clock.
#[allow(clippy::disallowed_methods)]
fn timed(f: impl FnOnce()) -> (std::thread::Result<()>, Duration) {
    let start = std::time::Instant::now();
    let result = catch_unwind(AssertUnwindSafe(f));
    (result, start.elapsed())
}

/// The CPU time this thread has used, from Linux's `/proc/thread-self/schedstat` (in ns);
/// `None` elsewhere, where wall time is all there is.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

/// One input that broke the property.
struct Failure {
    case: usize,
    what: String,
    saved: PathBuf,
    input: Vec<u8>,
}

/// Saves an input as `fuzz-failures/<target>-<name>.bin` under the Cargo target's temporary
/// folder, to be replayed by a regression test, and returns where.
fn save(target: &str, name: &str, input: &[u8]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    let file = dir.join(format!("{target}-{name}.bin"));
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(&file, input);
    file
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Feeds [`cases`] inputs from `generate` to `check`, which must return without panicking
/// within [`LIMIT`]; `check` asserts whatever else the target promises (a clear error).
/// Prints the RELIABILITY line on success, and panics naming the failing inputs otherwise.
pub fn run(target: &str, mut generate: impl FnMut(&mut Rng) -> Vec<u8>, check: impl Fn(&[u8])) {
    let n = cases();
    let mut rng = Rng::for_target(target);
    let mut slowest = Duration::ZERO;
    let mut slowest_input = Vec::new();
    let mut failures: Vec<Failure> = Vec::new();
    let mut panics = 0usize;
    // A stack overflow aborts the process before the input can be reported: with
    // `TRELLIS_FUZZ_TRACE` set, each input is saved before it runs, to be found there.
    let trace = std::env::var_os("TRELLIS_FUZZ_TRACE").is_some();
    for case in 0..n {
        let input = generate(&mut rng);
        if trace {
            save(target, "current", &input);
        }
        let (mut result, mut elapsed) = timed(|| check(&input));
        // The cores are shared: an input over the limit is run again, timed by the CPU time
        // its thread used (other processes' turns excluded), the least of four runs.
        for _ in 0..4 {
            if result.is_err() || elapsed <= LIMIT {
                break;
            }
            let before = cpu_time();
            let (again, time) = timed(|| check(&input));
            let used = cpu_time()
                .zip(before)
                .map_or(time, |(after, before)| after.saturating_sub(before));
            result = again;
            elapsed = elapsed.min(used);
        }
        if elapsed > slowest {
            slowest = elapsed;
            slowest_input.clone_from(&input);
        }
        let what = match result {
            Err(payload) => {
                panics += 1;
                Some(format!("panicked: {}", panic_message(payload.as_ref())))
            }
            Ok(()) if elapsed > LIMIT => Some(format!("took {elapsed:?}, over {LIMIT:?}")),
            Ok(()) => None,
        };
        if let Some(what) = what
            && failures.len() < 10
        {
            let saved = save(target, &case.to_string(), &input);
            failures.push(Failure {
                case,
                what,
                saved,
                input,
            });
        }
    }
    // The slowest input is kept for a look at what takes time, as `<target>-slowest.bin`.
    save(target, "slowest", &slowest_input);
    if !failures.is_empty() {
        let shown: Vec<String> = failures
            .iter()
            .map(|f| {
                let text = String::from_utf8_lossy(&f.input);
                let head: String = text.chars().take(300).collect();
                format!(
                    "  case {} {} (saved in {}): {head:?}",
                    f.case,
                    f.what,
                    f.saved.display()
                )
            })
            .collect();
        panic!(
            "fuzz {target}: {panics} of {n} inputs panicked; failures (seed {}):\n{}",
            seed(),
            shown.join("\n")
        );
    }
    println!(
        "RELIABILITY fuzz {target}: {n} inputs, 0 panics, slowest {:.1} ms",
        slowest.as_secs_f64() * 1000.0
    );
}
