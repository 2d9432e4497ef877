//! The fleet's one source of wall-clock time, so that token expiry,
//! reservations and staleness are tested by moving a clock, not by sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unix time in milliseconds: the system's, or one a test sets and moves.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    #[default]
    System,
    /// Stands still until [`Clock::advance`]; shared by every clone.
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// A manual clock that starts at the system's time now.
    pub fn manual() -> Clock {
        Clock::Manual(Arc::new(AtomicU64::new(system_now_ms())))
    }

    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::System => system_now_ms(),
            Clock::Manual(ms) => ms.load(Ordering::SeqCst),
        }
    }

    /// Moves a manual clock forward; the system clock moves by itself.
    pub fn advance(&self, by: Duration) {
        match self {
            Clock::System => {}
            Clock::Manual(ms) => {
                ms.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
            }
        }
    }
}

fn system_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced_and_clones_share_it() {
        let clock = Clock::manual();
        let other = clock.clone();
        let start = clock.now_ms();
        assert_eq!(other.now_ms(), start);
        other.advance(Duration::from_millis(1200));
        assert_eq!(clock.now_ms(), start + 1200);
    }
}
