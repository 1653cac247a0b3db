//! Latency samples and throughput arithmetic.

use std::time::Duration;

/// Latency samples of one run.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    samples: Vec<Duration>,
}

impl Latencies {
    pub fn from_samples(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        Self { samples }
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The nearest-rank percentile (`fraction` in 0..=1); `None` without samples.
    pub fn percentile(&self, fraction: f64) -> Option<Duration> {
        if self.samples.is_empty() {
            return None;
        }
        let rank = (fraction * self.samples.len() as f64).ceil() as usize;
        let index = rank.clamp(1, self.samples.len()) - 1;
        self.samples.get(index).copied()
    }

    pub fn p50(&self) -> Option<Duration> {
        self.percentile(0.50)
    }

    pub fn p99(&self) -> Option<Duration> {
        self.percentile(0.99)
    }
}

/// Items per second; zero when no time passed.
pub fn per_second(count: usize, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds <= 0.0 {
        return 0.0;
    }
    count as f64 / seconds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples = (1..=100).map(Duration::from_millis).collect();
        let latencies = Latencies::from_samples(samples);
        assert_eq!(latencies.p50(), Some(Duration::from_millis(50)));
        assert_eq!(latencies.p99(), Some(Duration::from_millis(99)));
        assert_eq!(latencies.percentile(1.0), Some(Duration::from_millis(100)));
        assert_eq!(Latencies::default().p50(), None);
    }

    #[test]
    fn rate_of_nothing_is_zero() {
        assert_eq!(per_second(10, Duration::ZERO), 0.0);
        assert_eq!(per_second(10, Duration::from_millis(500)), 20.0);
    }
}
