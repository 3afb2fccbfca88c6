//! Channel names: `namespace:name`; a name without `:` is in the default namespace.

use std::fmt;

/// The longest channel name accepted, in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;

/// A parsed channel name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName {
    full: String,
    colon: Option<usize>,
}

/// Why a channel name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadChannel {
    /// Empty, or an empty part around the `:`.
    Empty,
    /// Longer than [`MAX_CHANNEL_LEN`].
    TooLong,
    /// A control character or white space.
    BadCharacter,
}

impl ChannelName {
    /// Parse `namespace:name` or `name`.
    pub fn parse(s: &str) -> Result<ChannelName, BadChannel> {
        if s.is_empty() {
            return Err(BadChannel::Empty);
        }
        if s.len() > MAX_CHANNEL_LEN {
            return Err(BadChannel::TooLong);
        }
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(BadChannel::BadCharacter);
        }
        let colon = s.find(':');
        if let Some(i) = colon {
            if i == 0 || i + 1 == s.len() {
                return Err(BadChannel::Empty);
            }
        }
        Ok(ChannelName {
            full: s.to_string(),
            colon,
        })
    }

    /// The namespace ("" for the default namespace).
    pub fn namespace(&self) -> &str {
        match self.colon {
            Some(i) => &self.full[..i],
            None => "",
        }
    }

    /// The name within the namespace.
    pub fn name(&self) -> &str {
        match self.colon {
            Some(i) => &self.full[i + 1..],
            None => &self.full,
        }
    }

    /// The whole name, as clients write it.
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

impl fmt::Display for BadChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BadChannel::Empty => "empty, or an empty part around `:`",
            BadChannel::TooLong => "longer than 255 bytes",
            BadChannel::BadCharacter => "white space or a control character",
        })
    }
}

impl std::error::Error for BadChannel {}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_and_name() {
        let c = ChannelName::parse("chat:room1").unwrap();
        assert_eq!(
            (c.namespace(), c.name(), c.as_str()),
            ("chat", "room1", "chat:room1")
        );
        let c = ChannelName::parse("news").unwrap();
        assert_eq!((c.namespace(), c.name()), ("", "news"));
        let c = ChannelName::parse("a:b:c").unwrap();
        assert_eq!((c.namespace(), c.name()), ("a", "b:c"));
    }

    #[test]
    fn bad_names_are_refused() {
        assert_eq!(ChannelName::parse(""), Err(BadChannel::Empty));
        assert_eq!(ChannelName::parse(":x"), Err(BadChannel::Empty));
        assert_eq!(ChannelName::parse("x:"), Err(BadChannel::Empty));
        assert_eq!(ChannelName::parse("a b"), Err(BadChannel::BadCharacter));
        assert_eq!(
            ChannelName::parse(&"x".repeat(256)),
            Err(BadChannel::TooLong)
        );
    }
}
