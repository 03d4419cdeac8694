//! Reconnect backoff: exponential with a cap and jitter. The jitter comes in as a parameter
//! (the driver's seeded RNG in tests, OS randomness in the daemon), so this stays pure.

/// Exponential backoff state for one peer.
#[derive(Clone, Debug)]
pub struct Backoff {
    base_ms: u64,
    max_ms: u64,
    attempt: u32,
}

impl Backoff {
    /// Backoff starting at `base_ms`, doubling up to `max_ms`.
    pub fn new(base_ms: u64, max_ms: u64) -> Backoff {
        Backoff { base_ms, max_ms, attempt: 0 }
    }

    /// The delay before the next attempt; `jitter` in `[0, 1)` spreads it over its upper half
    /// so that nodes cut off together do not reconnect in lockstep.
    pub fn next_delay_ms(&mut self, jitter: f64) -> u64 {
        let exponential = self.base_ms.saturating_mul(1 << self.attempt.min(20)).min(self.max_ms);
        self.attempt = self.attempt.saturating_add(1);
        let half = exponential / 2;
        half + (half as f64 * jitter.clamp(0.0, 1.0)) as u64
    }

    /// Delays drawn since the last reset (the step the next delay belongs to).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// A session was established: start from the base again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(100, 1000);
        let delays: Vec<u64> = (0..6).map(|_| backoff.next_delay_ms(1.0)).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff.next_delay_ms(0.0), 500);
        assert_eq!(backoff.attempt(), 7);
        backoff.reset();
        assert_eq!(backoff.attempt(), 0);
        assert_eq!(backoff.next_delay_ms(0.0), 50);
    }
}
