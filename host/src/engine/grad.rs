//! Evaluation without a graph, as PyTorch's `no_grad`: inside [`no_grad`] the op
//! table hands plugins' ops their inputs detached, so nothing they compute records
//! the ops that made it. Intermediate activations are freed as soon as the plugin
//! drops them instead of living until the output does, and the fused ops skip what
//! they would otherwise keep for a backward pass (the linear layer's pre-activation).

use std::cell::Cell;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(true) };
}

/// Whether this thread's host ops record the graph a backward pass needs (true
/// unless inside [`no_grad`]).
pub fn tracking() -> bool {
    TRACKING.with(Cell::get)
}

/// Sets whether this thread's host ops record the graph; returns the previous
/// setting (the op table's `grad_tracking`, for plugins' `Host::no_grad`).
pub fn set_tracking(on: bool) -> bool {
    TRACKING.with(|t| t.replace(on))
}

/// Runs `f` with gradient tracking off on this thread, and restores the previous
/// state afterwards, also when `f` panics.
pub fn no_grad<T>(f: impl FnOnce() -> T) -> T {
    /// Puts the previous state back when dropped.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            set_tracking(self.0);
        }
    }
    let _restore = Restore(set_tracking(false));
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_grad_nests_and_restores_after_a_panic() {
        assert!(tracking());
        no_grad(|| {
            assert!(!tracking());
            no_grad(|| assert!(!tracking()));
            assert!(!tracking());
        });
        assert!(tracking());
        let caught = std::panic::catch_unwind(|| no_grad(|| panic!("inside")));
        assert!(caught.is_err());
        assert!(tracking());
    }
}
