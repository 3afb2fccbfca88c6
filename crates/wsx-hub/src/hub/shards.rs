//! What the sharded maps of the hub share: the shard count, which shard a channel
//! belongs to, and locking that survives a panicked holder.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Mutex, MutexGuard};

/// Shards of each per-channel map (broker, backplane, listen locks).
pub(crate) const SHARDS: usize = 32;

/// The shard of `channel`.
pub(crate) fn of(channel: &str) -> usize {
    let mut h = DefaultHasher::new();
    channel.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

/// Lock `m`; a panic elsewhere while it was held does not poison the hub.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
