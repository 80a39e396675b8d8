//! The table of tensors handed out to plugins: a handle is an id into it.
//!
//! Ids are never reused, so a stale handle is an error, never another tensor.

use std::{
    collections::HashMap,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use candle_core::Tensor;
use patchwork_plugin_api::abi::TensorId;

static TABLE: Mutex<Option<HashMap<u64, Tensor>>> = Mutex::new(None);
static NEXT: AtomicU64 = AtomicU64::new(1);

fn table() -> MutexGuard<'static, Option<HashMap<u64, Tensor>>> {
    // A panic while holding this lock cannot leave the map inconsistent (each
    // operation is a single insert/remove/get), so a poisoned lock is still usable.
    TABLE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Registers a tensor and returns its new handle.
pub fn insert(t: Tensor) -> TensorId {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    table().get_or_insert_with(HashMap::new).insert(id, t);
    TensorId(id)
}

/// The tensor behind a handle (a cheap clone).
pub fn get(id: TensorId) -> Option<Tensor> {
    table().as_ref().and_then(|m| m.get(&id.0).cloned())
}

/// Releases a handle.
pub fn remove(id: TensorId) -> Option<Tensor> {
    table().as_mut().and_then(|m| m.remove(&id.0))
}

/// How many handles are live (leak checks in tests).
pub fn live() -> usize {
    table().as_ref().map_or(0, HashMap::len)
}
