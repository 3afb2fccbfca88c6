//! Settings that can change while a server runs (a reload): readers take the current
//! value, cheaply and without holding a lock across their work; a reload replaces the
//! value whole, so a reader never sees half of an old one and half of a new one.

use std::sync::{Arc, RwLock};

/// A value that a reload may replace. Clones share it.
#[derive(Debug, Default)]
pub struct Live<T>(Arc<RwLock<Arc<T>>>);

impl<T> Clone for Live<T> {
    fn clone(&self) -> Self {
        Live(self.0.clone())
    }
}

impl<T> Live<T> {
    /// A live value, `value` for now.
    pub fn new(value: T) -> Live<T> {
        Live(Arc::new(RwLock::new(Arc::new(value))))
    }

    /// The current value (what was set before stays valid for whoever holds it).
    pub fn get(&self) -> Arc<T> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replace the value: readers from now on get `value`.
    pub fn set(&self, value: T) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_keeps_what_it_took_and_later_readers_see_the_new_value() {
        let live = Live::new(1);
        let other = live.clone();
        let before = live.get();
        other.set(2);
        assert_eq!((*before, *live.get()), (1, 2));
    }
}
