//! Wall time per named span, summed while profiling is on (`patchwork bench train
//! --profile`): the step's phases (forward, backward, optimizer) and the host's fused
//! kernels inside them. Off, a span costs one relaxed atomic load.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

static ENABLED: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<BTreeMap<&'static str, (Duration, u64)>> = Mutex::new(BTreeMap::new());

/// Turns profiling on or off and clears the totals.
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
    TOTALS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
}

/// Times the rest of the enclosing scope as `name`.
pub fn span(name: &'static str) -> Span {
    Span {
        name,
        start: ENABLED.load(Ordering::Relaxed).then(Instant::now),
    }
}

/// A running span; its time is added when it is dropped.
pub struct Span {
    name: &'static str,
    start: Option<Instant>,
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(start) = self.start {
            let mut totals = TOTALS.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = totals.entry(self.name).or_default();
            entry.0 += start.elapsed();
            entry.1 += 1;
        }
    }
}

/// The totals so far, longest first: name, time, calls.
pub fn totals() -> Vec<(&'static str, Duration, u64)> {
    let totals = TOTALS.lock().unwrap_or_else(PoisonError::into_inner);
    let mut v: Vec<_> = totals.iter().map(|(n, (d, c))| (*n, *d, *c)).collect();
    v.sort_by_key(|t| std::cmp::Reverse(t.1));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_add_up_only_while_enabled() {
        enable(false);
        drop(span("test.off"));
        assert!(totals().iter().all(|t| t.0 != "test.off"));
        enable(true);
        for _ in 0..3 {
            let _s = span("test.on");
            std::thread::sleep(Duration::from_millis(1));
        }
        let on = totals().into_iter().find(|t| t.0 == "test.on");
        enable(false);
        let (_, time, calls) = on.expect("recorded");
        assert_eq!(calls, 3);
        assert!(time >= Duration::from_millis(3));
    }
}
