//! How another thread steers a running session: stop (checkpointing first), pause and
//! resume. The session polls it between optimizer steps, never inside one.

use std::sync::{
    Condvar, Mutex, MutexGuard,
    atomic::{AtomicBool, Ordering},
};

use super::reload::ReloadOffer;

/// Stop and pause requests for one session (shared with the signal handler or the UI).
#[derive(Debug, Default)]
pub struct SessionControl {
    stop: AtomicBool,
    paused: Mutex<bool>,
    wake: Condvar,
    offers: Mutex<Vec<ReloadOffer>>,
}

impl SessionControl {
    /// A control with nothing requested.
    pub fn new() -> Self {
        Self::default()
    }

    fn paused_lock(&self) -> MutexGuard<'_, bool> {
        // The flag is a plain bool: a panic elsewhere cannot leave it half-written.
        self.paused.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the session to stop after its current step, writing a checkpoint first.
    /// Also wakes a paused session so that it can stop.
    pub fn request_stop(&self) {
        self.swap_stop();
    }

    /// Whether a stop was asked for; returns the previous value and sets it (the
    /// signal handler uses this to tell a first interrupt from a second).
    pub fn swap_stop(&self) -> bool {
        let was = self.stop.swap(true, Ordering::SeqCst);
        let _paused = self.paused_lock();
        self.wake.notify_all();
        was
    }

    /// Whether a stop was asked for.
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Asks the session to wait after its current step until [`resume`](Self::resume).
    pub fn pause(&self) {
        *self.paused_lock() = true;
    }

    /// Lets a paused session go on.
    pub fn resume(&self) {
        *self.paused_lock() = false;
        self.wake.notify_all();
    }

    /// Whether a pause is asked for.
    pub fn pause_requested(&self) -> bool {
        *self.paused_lock()
    }

    /// Hands a changed plugin library (loaded or not) to the session, which looks at
    /// it at its next step boundary.
    pub fn offer(&self, offer: ReloadOffer) {
        self.offers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(offer);
    }

    /// The offers made since the last call.
    pub fn take_offers(&self) -> Vec<ReloadOffer> {
        std::mem::take(&mut *self.offers.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Called by the session between steps: when a pause is asked for, calls
    /// `changed(true)`, blocks until resumed or stopped, then calls `changed(false)`.
    /// Returns whether it paused.
    pub fn hold(&self, mut changed: impl FnMut(bool)) -> bool {
        if !self.pause_requested() || self.stop_requested() {
            return false;
        }
        changed(true);
        let mut paused = self.paused_lock();
        while *paused && !self.stop_requested() {
            paused = self.wake.wait(paused).unwrap_or_else(|e| e.into_inner());
        }
        drop(paused);
        changed(false);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, mpsc};

    use super::*;

    #[test]
    fn hold_returns_at_once_without_a_pause() {
        let c = SessionControl::new();
        assert!(!c.hold(|_| panic!("not paused")));
    }

    #[test]
    fn hold_blocks_until_resumed() {
        let c = Arc::new(SessionControl::new());
        c.pause();
        let (tx, rx) = mpsc::channel();
        let worker = {
            let c = Arc::clone(&c);
            std::thread::spawn(move || {
                c.hold(|paused| tx.send(if paused { "paused" } else { "resumed" }).unwrap())
            })
        };
        assert_eq!(rx.recv().unwrap(), "paused");
        c.resume();
        assert_eq!(rx.recv().unwrap(), "resumed");
        assert!(worker.join().unwrap());
    }

    #[test]
    fn stop_wakes_a_paused_session() {
        let c = Arc::new(SessionControl::new());
        c.pause();
        let (tx, rx) = mpsc::channel();
        let worker = {
            let c = Arc::clone(&c);
            std::thread::spawn(move || c.hold(|_| tx.send(()).unwrap_or(())))
        };
        rx.recv().unwrap();
        c.request_stop();
        assert!(worker.join().unwrap());
        assert!(c.stop_requested());
        assert!(c.swap_stop(), "a second stop sees the first");
    }
}
