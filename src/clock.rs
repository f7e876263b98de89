//! The only code that reads the wall clock. Everything else is handed a `now`.

use std::sync::Mutex;

use jiff::Timestamp;

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current instant.
    fn now(&self) -> Timestamp;
}

/// The real wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    /// Milliseconds, the precision the store keeps: a wake-up read back from the database
    /// must not look a fraction of a millisecond later than the instant it was computed at.
    #[allow(clippy::disallowed_methods)]
    fn now(&self) -> Timestamp {
        let now = Timestamp::now();
        Timestamp::from_millisecond(now.as_millisecond()).unwrap_or(now)
    }
}

/// A clock that only moves when told to: for tests and the simulator.
#[derive(Debug)]
pub struct ManualClock(Mutex<Timestamp>);

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self(Mutex::new(start))
    }

    /// Moves the clock to `to`.
    pub fn set(&self, to: Timestamp) {
        *self
            .0
            .lock()
            .expect("the clock's lock is never held across a panic") = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self
            .0
            .lock()
            .expect("the clock's lock is never held across a panic")
    }
}
