//! Anti-replay window over 64-bit message counters (RFC 6479), sized like
//! WireGuard's.
//!
//! The window is a ring of 64-bit words; bit `n % 64` of word
//! `(n / 64) % WORDS` records whether counter `n` was seen. Moving the
//! window forward clears whole words instead of shifting bits, so a
//! counter far ahead costs at most `WORDS` word writes and one in order
//! costs none. One word of the ring is kept in reserve: it is the word
//! being cleared while its bits may still belong to the oldest counters,
//! so the window guaranteed is `(WORDS - 1) * 64` counters, not `WORDS * 64`.
//!
//! Receivers call [`ReplayWindow::check`] before spending an AEAD open on a
//! datagram, and [`ReplayWindow::accept`] only once it authenticated, so
//! forged counters can never move the window.

use thiserror::Error;

/// Words in the ring: 8,192 bits, WireGuard's `COUNTER_BITS_TOTAL`.
pub const WORDS: usize = 128;
const WORD_BITS: u64 = u64::BITS as u64;
/// Counters below the highest accepted one that are still tracked: 8,128.
pub const WINDOW: u64 = (WORDS as u64 - 1) * WORD_BITS;
/// First counter a session refuses (WireGuard's `REJECT_AFTER_MESSAGES`,
/// 2^64 - 2^13 - 1): a sender that got this far must rekey rather than
/// let its nonce wrap.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ReplayError {
    #[error("counter {counter} is older than the replay window (highest {highest})")]
    TooOld { counter: u64, highest: u64 },
    #[error("counter {0} was already received")]
    Duplicate(u64),
    #[error("counter {0} is at or beyond the session's message limit")]
    Exhausted(u64),
}

/// Which counters of one receiving session have been seen.
#[derive(Clone)]
pub struct ReplayWindow {
    /// One more than the highest counter accepted; 0 before the first.
    /// Never overflows: accepted counters stay below the message limit.
    next: u64,
    bits: [u64; WORDS],
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    pub fn new() -> Self {
        ReplayWindow {
            next: 0,
            bits: [0; WORDS],
        }
    }

    /// The highest counter accepted so far.
    pub fn highest(&self) -> Option<u64> {
        self.next.checked_sub(1)
    }

    /// Whether `counter` would be accepted now. Changes nothing.
    pub fn check(&self, counter: u64) -> Result<(), ReplayError> {
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(ReplayError::Exhausted(counter));
        }
        let Some(highest) = self.highest() else {
            return Ok(());
        };
        if counter > highest {
            return Ok(());
        }
        if highest - counter >= WINDOW {
            return Err(ReplayError::TooOld { counter, highest });
        }
        let (word, bit) = position(counter);
        if self.bits[word] & bit != 0 {
            return Err(ReplayError::Duplicate(counter));
        }
        Ok(())
    }

    /// Checks `counter` and, if it passes, records it so it never passes
    /// again. Call only for a datagram that authenticated.
    pub fn accept(&mut self, counter: u64) -> Result<(), ReplayError> {
        self.check(counter)?;
        if counter >= self.next {
            self.advance_to(counter);
        }
        let (word, bit) = position(counter);
        self.bits[word] |= bit;
        Ok(())
    }

    /// Makes `counter` the highest, forgetting the words that leave the
    /// window. Words between the old highest word and the new one hold
    /// bits of counters a whole ring ago, so they are cleared too.
    fn advance_to(&mut self, counter: u64) {
        if let Some(highest) = self.highest() {
            let (old_word, new_word) = (highest / WORD_BITS, counter / WORD_BITS);
            let stale = (new_word - old_word).min(WORDS as u64);
            for i in 1..=stale {
                self.bits[((old_word + i) % WORDS as u64) as usize] = 0;
            }
        }
        self.next = counter + 1;
    }
}

fn position(counter: u64) -> (usize, u64) {
    let word = ((counter / WORD_BITS) % WORDS as u64) as usize;
    (word, 1 << (counter % WORD_BITS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept_all(w: &mut ReplayWindow, counters: impl IntoIterator<Item = u64>) {
        for n in counters {
            assert_eq!(w.accept(n), Ok(()), "counter {n}");
        }
    }

    #[test]
    fn window_is_wireguards() {
        assert_eq!(WINDOW, 8128);
        assert_eq!(
            u128::from(REJECT_AFTER_MESSAGES),
            (1u128 << 64) - (1 << 13) - 1
        );
    }

    #[test]
    fn in_order_counters_are_accepted_once() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.highest(), None);
        accept_all(&mut w, 0..1000);
        assert_eq!(w.highest(), Some(999));
        for n in [0, 1, 500, 999] {
            assert_eq!(w.accept(n), Err(ReplayError::Duplicate(n)));
        }
    }

    #[test]
    fn out_of_order_inside_the_window_is_accepted() {
        let mut w = ReplayWindow::new();
        w.accept(10_000).unwrap();
        // Everything from highest - (WINDOW - 1) up, in descending order.
        accept_all(&mut w, (10_000 - (WINDOW - 1)..10_000).rev());
        // Then the gaps above fill in any order.
        accept_all(&mut w, [10_005, 10_001, 10_003]);
        assert_eq!(w.highest(), Some(10_005));
        assert_eq!(w.accept(10_001), Err(ReplayError::Duplicate(10_001)));
        assert_eq!(w.check(10_002), Ok(()));
    }

    #[test]
    fn check_does_not_record() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.check(7), Ok(()));
        assert_eq!(w.check(7), Ok(()));
        assert_eq!(w.highest(), None);
        w.accept(7).unwrap();
        assert_eq!(w.check(7), Err(ReplayError::Duplicate(7)));
    }

    #[test]
    fn counters_older_than_the_window_are_refused() {
        let mut w = ReplayWindow::new();
        w.accept(20_000).unwrap();
        let oldest = 20_000 - (WINDOW - 1);
        assert_eq!(w.check(oldest), Ok(()));
        assert_eq!(
            w.accept(oldest - 1),
            Err(ReplayError::TooOld {
                counter: oldest - 1,
                highest: 20_000
            })
        );
        assert!(matches!(w.accept(0), Err(ReplayError::TooOld { .. })));
    }

    #[test]
    fn duplicates_are_refused_wherever_they_fall() {
        let mut w = ReplayWindow::new();
        // Both sides of word boundaries, all inside one window.
        let seen = [130, 191, 192, 255, 256, 8191, 8192];
        accept_all(&mut w, seen);
        for n in seen {
            assert_eq!(w.accept(n), Err(ReplayError::Duplicate(n)));
        }
    }

    #[test]
    fn sliding_over_many_words_forgets_only_what_left_the_window() {
        let mut w = ReplayWindow::new();
        // Every third counter across more than three turns of the ring.
        let seen: Vec<u64> = (0..30_000).step_by(3).collect();
        accept_all(&mut w, seen.iter().copied());
        let highest = *seen.last().unwrap();
        for n in highest - (WINDOW - 1)..=highest {
            let expected = if n % 3 == 0 {
                Err(ReplayError::Duplicate(n))
            } else {
                Ok(())
            };
            assert_eq!(w.check(n), expected, "counter {n}");
        }
        // A jump of exactly one word, then of more than a whole ring: the
        // old bits must not survive in the reused words.
        w.accept(highest + 64).unwrap();
        assert_eq!(w.check(highest + 1), Ok(()));
        let far = highest + 64 + 3 * WORDS as u64 * 64 + 5;
        w.accept(far).unwrap();
        for n in far - (WINDOW - 1)..far {
            assert_eq!(w.check(n), Ok(()), "counter {n} after the jump");
        }
    }

    #[test]
    fn counters_at_the_message_limit_are_refused() {
        let mut w = ReplayWindow::new();
        let last = REJECT_AFTER_MESSAGES - 1;
        w.accept(last).unwrap();
        assert_eq!(w.highest(), Some(last));
        for n in [REJECT_AFTER_MESSAGES, REJECT_AFTER_MESSAGES + 1, u64::MAX] {
            assert_eq!(w.accept(n), Err(ReplayError::Exhausted(n)));
        }
        assert_eq!(w.accept(last), Err(ReplayError::Duplicate(last)));
        assert_eq!(w.accept(last - 1), Ok(()));
    }
}
