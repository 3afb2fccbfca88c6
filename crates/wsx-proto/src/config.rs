//! Connection settings: limits, timers and framing options.

use std::time::Duration;

/// Settings of a [`Connection`](crate::Connection). Every limit has a safe default.
///
/// ```
/// use std::time::Duration;
/// use wsx_proto::Config;
///
/// let cfg = Config::default()
///     .max_message_size(16 << 20)
///     .ping_interval(Some(Duration::from_secs(30)));
/// assert_eq!(cfg.max_frame_size, 1 << 20);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// The largest frame payload accepted, in bytes (1009 beyond). Default: 1 MiB.
    /// A frame's payload is held in memory until it is complete.
    pub max_frame_size: usize,
    /// The largest message accepted, in bytes, after inflation (1009 beyond).
    /// Default: 1 MiB. A message is held in memory until it is complete, unless
    /// `frame_mode` is on.
    pub max_message_size: usize,
    /// Split outgoing messages into frames of at most this many payload bytes.
    /// Default: `None` (one frame per message).
    pub fragment_size: Option<usize>,
    /// Deliver data frames one by one as [`Event::Frame`](crate::Event::Frame) instead
    /// of whole messages, so a message larger than memory can stream through.
    /// `max_message_size` then bounds the inflated size of one frame. Default: off.
    pub frame_mode: bool,
    /// Answer pings with pongs automatically. Default: on.
    pub auto_pong: bool,
    /// Send a keepalive ping after this long without receiving anything.
    /// Default: `None` (no keepalive).
    pub ping_interval: Option<Duration>,
    /// After a keepalive ping, fail the connection with 1011 if nothing arrives within
    /// this long. Default: 20 s.
    pub pong_timeout: Duration,
    /// Close with 1001 after this long without receiving anything. Default: `None`.
    pub idle_timeout: Option<Duration>,
    /// After sending a close frame, wait this long for the peer's before giving up.
    /// Default: 5 s.
    pub close_timeout: Duration,
    /// Outgoing payloads up to this many bytes are copied into the write buffer, so
    /// many small messages go out in one write; larger ones are queued as shared
    /// `Bytes` and written without a copy. Default: 4 KiB.
    pub copy_threshold: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_frame_size: 1 << 20,
            max_message_size: 1 << 20,
            fragment_size: None,
            frame_mode: false,
            auto_pong: true,
            ping_interval: None,
            pong_timeout: Duration::from_secs(20),
            idle_timeout: None,
            close_timeout: Duration::from_secs(5),
            copy_threshold: 4096,
        }
    }
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty;)*) => {
        impl Config {
            $(
                $(#[$doc])*
                pub fn $name(mut self, value: $ty) -> Self {
                    self.$name = value;
                    self
                }
            )*
        }
    };
}

setters! {
    /// Set `max_frame_size`.
    max_frame_size: usize;
    /// Set `max_message_size`.
    max_message_size: usize;
    /// Set `fragment_size`.
    fragment_size: Option<usize>;
    /// Set `frame_mode`.
    frame_mode: bool;
    /// Set `auto_pong`.
    auto_pong: bool;
    /// Set `ping_interval`.
    ping_interval: Option<Duration>;
    /// Set `pong_timeout`.
    pong_timeout: Duration;
    /// Set `idle_timeout`.
    idle_timeout: Option<Duration>;
    /// Set `close_timeout`.
    close_timeout: Duration;
    /// Set `copy_threshold`.
    copy_threshold: usize;
}
