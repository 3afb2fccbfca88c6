//! What is published: a payload (bytes plus what they are), its place in the channel's
//! stream, and the encodings front-ends make of it, each made once and shared by every
//! recipient of that front-end.

use std::any::Any;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

/// What a payload's bytes are. Front-ends translate between kinds by the rules of
/// `docs/protocol.md` ("Payloads across protocols").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadKind {
    /// One JSON value, as UTF-8 text (what native clients and the HTTP API publish).
    Json,
    /// UTF-8 text that is not (necessarily) JSON.
    Text,
    /// Arbitrary bytes.
    Binary,
}

/// A message as a client or the server published it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// What the bytes are.
    pub kind: PayloadKind,
    /// The bytes. For [`PayloadKind::Json`] and [`PayloadKind::Text`], valid UTF-8.
    pub data: Bytes,
    /// Attributes the publisher attached (a STOMP `SEND`'s custom headers, say), in
    /// order; front-ends that have a place for them pass them on, others ignore them.
    pub headers: Vec<(String, String)>,
}

impl Payload {
    /// A JSON value's text (the caller has checked it is one JSON value).
    pub fn json(data: impl Into<Bytes>) -> Payload {
        Payload::of(PayloadKind::Json, data.into())
    }

    /// UTF-8 text (the caller has checked the encoding).
    pub fn text(data: impl Into<Bytes>) -> Payload {
        Payload::of(PayloadKind::Text, data.into())
    }

    /// Bytes.
    pub fn binary(data: impl Into<Bytes>) -> Payload {
        Payload::of(PayloadKind::Binary, data.into())
    }

    fn of(kind: PayloadKind, data: Bytes) -> Payload {
        Payload {
            kind,
            data,
            headers: Vec::new(),
        }
    }
}

/// A published message as stored and delivered: shared (`Arc`) by every subscriber
/// and the channel's history.
#[derive(Debug)]
pub struct Publication {
    /// Increasing per channel, from 1.
    pub offset: u64,
    /// What the bytes are.
    pub kind: PayloadKind,
    /// The payload.
    pub data: Bytes,
    /// The publisher's attributes (see [`Payload::headers`]).
    pub headers: Vec<(String, String)>,
    /// The front-ends' encodings of this publication.
    pub encodings: Encodings,
}

impl Publication {
    /// A publication at `offset`.
    pub fn new(offset: u64, payload: Payload) -> Publication {
        Publication {
            offset,
            kind: payload.kind,
            data: payload.data,
            headers: payload.headers,
            encodings: Encodings::default(),
        }
    }
}

impl PartialEq for Publication {
    fn eq(&self, other: &Self) -> bool {
        self.offset == other.offset
            && self.kind == other.kind
            && self.data == other.data
            && self.headers == other.headers
    }
}

impl Eq for Publication {}

/// A position in a channel's stream: the last offset seen and the stream's epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPosition {
    /// The last offset seen (0: nothing yet).
    pub offset: u64,
    /// The epoch of the stream that offset belongs to.
    pub epoch: String,
}

/// How many front-end encodings an event can cache.
pub const ENCODING_SLOTS: usize = 6;

static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

/// A front-end's place in [`Encodings`], holding values of type `T`. Each front-end
/// registers the slots it needs once (in a `static LazyLock`), so the core never names
/// a front-end.
pub struct EncodingSlot<T> {
    index: usize,
    _value: PhantomData<fn() -> T>,
}

impl<T> Clone for EncodingSlot<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for EncodingSlot<T> {}

impl<T> std::fmt::Debug for EncodingSlot<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncodingSlot({})", self.index)
    }
}

impl<T: Any + Send + Sync + Clone> EncodingSlot<T> {
    /// A new slot.
    ///
    /// # Panics
    /// When more than [`ENCODING_SLOTS`] are registered in the process: a fixed set of
    /// front-ends registers them at start-up, so this is a programming error.
    pub fn register() -> EncodingSlot<T> {
        let index = NEXT_SLOT.fetch_add(1, Ordering::Relaxed);
        assert!(
            index < ENCODING_SLOTS,
            "more than {ENCODING_SLOTS} encoding slots"
        );
        EncodingSlot {
            index,
            _value: PhantomData,
        }
    }
}

/// The encodings front-ends made of one event (a publication, a join, a leave): each
/// made on first use and shared by every later recipient.
#[derive(Default)]
pub struct Encodings {
    slots: [OnceLock<Box<dyn Any + Send + Sync>>; ENCODING_SLOTS],
}

impl Encodings {
    /// The value in `slot`, made by `make` if this is the first use.
    pub fn get_or_init<T: Any + Send + Sync + Clone>(
        &self,
        slot: EncodingSlot<T>,
        make: impl FnOnce() -> T,
    ) -> T {
        let value = self.slots[slot.index].get_or_init(|| Box::new(make()));
        match value.downcast_ref::<T>() {
            Some(v) => v.clone(),
            // A slot holds one type: `EncodingSlot<T>` is the only way in.
            None => unreachable!("encoding slot {} holds another type", slot.index),
        }
    }
}

/// Caches never make two events differ.
impl PartialEq for Encodings {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Encodings {}

impl std::fmt::Debug for Encodings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let made = self.slots.iter().filter(|s| s.get().is_some()).count();
        write!(f, "Encodings({made} made)")
    }
}

/// Shared encodings of a presence event, as a [`Delivery`](crate::hub::queue::Delivery)
/// carries them.
pub type SharedEncodings = Arc<Encodings>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encoding_is_made_once_and_shared() {
        let slot: EncodingSlot<Arc<str>> = EncodingSlot::register();
        let p = Publication::new(1, Payload::json("1"));
        let mut made = 0;
        let a = p.encodings.get_or_init(slot, || {
            made += 1;
            Arc::from("x")
        });
        let b = p.encodings.get_or_init(slot, || unreachable!("made once"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(made, 1);
    }
}
