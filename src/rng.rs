//! The one seeded random source of the sans-IO layers (`route` and the
//! control node). Callers seed it at construction, so a simulation replays
//! exactly; production seeds it from the OS.

use std::time::Duration;

/// SplitMix64: tiny, seedable and stable across crate versions, which a
/// reproducible simulation needs more than statistical quality. It has no
/// security role: nothing secret is derived from it.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, from the top 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Fills `out` with the next outputs, big-endian.
    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let word = self.next_u64().to_be_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }

    /// A whole-ms offset in `1..=max`, used to spread first probes the way
    /// Candy's random per-peer tick counter does.
    pub fn spread(&mut self, max: Duration) -> Duration {
        let ms = max.as_millis().clamp(1, u128::from(u64::MAX)) as u64;
        Duration::from_millis(1 + self.next_u64() % ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let (mut a, mut b) = (SplitMix64::new(7), SplitMix64::new(7));
        for _ in 0..100 {
            let d = a.spread(Duration::from_secs(60));
            assert_eq!(d, b.spread(Duration::from_secs(60)));
            assert!(d >= Duration::from_millis(1) && d <= Duration::from_secs(60));
        }
        let (mut x, mut y) = ([0u8; 12], [0u8; 12]);
        a.fill(&mut x);
        b.fill(&mut y);
        assert_eq!(x, y);
        assert_ne!(x, [0u8; 12]);
        assert_ne!(SplitMix64::new(8).next_u64(), SplitMix64::new(7).next_u64());
    }
}
