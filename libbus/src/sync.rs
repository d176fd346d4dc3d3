//! Locking helpers shared by the connection's modules.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`. A poisoned lock only means another thread panicked mid-update
/// of plain data; the data is still usable.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
