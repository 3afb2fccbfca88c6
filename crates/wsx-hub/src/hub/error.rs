//! The one error type of the hub core. Each front-end maps it onto its wire in one
//! table (native error codes, HTTP statuses, STOMP `ERROR` frames, …); the core names
//! no code of any of them. `Display` is the human text a front-end may put on the wire.

use std::fmt;

use crate::hub::auth::TokenError;
use crate::hub::channel::BadChannel;

/// Why a hub operation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HubError {
    /// The channel name does not parse.
    BadChannel(BadChannel),
    /// The channel is in a namespace that is not configured.
    UnknownNamespace(String),
    /// The channel has no state: nobody present, nothing retained.
    UnknownChannel,
    /// A position was given in another epoch of the stream (the server or its
    /// backplane restarted): its offsets mean nothing now.
    EpochChanged,
    /// No valid connection token where one is needed.
    Unauthorized(TokenError),
    /// The client may not do this.
    PermissionDenied(Denied),
    /// Already subscribed to the channel.
    AlreadySubscribed,
    /// Not subscribed to the channel.
    NotSubscribed,
    /// A limit was reached.
    LimitExceeded(Limit),
    /// The channel's namespace does not enable this feature.
    NotAvailable(Feature),
    /// No pending message has this delivery tag (for this client).
    UnknownMessage,
    /// The session is not connected yet (a command before `connect`).
    NotConnected,
    /// The session is already connected.
    AlreadyConnected,
    /// The backplane could not be reached or failed: nothing was done; may be retried.
    Unavailable(String),
}

/// What a permission refusal was about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Denied {
    /// Anonymous connections may not subscribe in this namespace.
    AnonymousSubscribe,
    /// The channel is limited to other users (`name#user1,user2`).
    OtherUsers,
    /// A private channel (`$name`) needs a channel token.
    ChannelTokenRequired,
    /// The channel token was refused.
    ChannelToken(TokenError),
    /// Clients may not publish in this namespace.
    ClientPublish,
    /// Publishing to a user-limited or private channel needs a subscription to it.
    SubscribeFirst,
}

/// Which limit was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Limit {
    /// Subscriptions one connection may hold.
    Subscriptions(usize),
    /// Bytes of the `name` and `info` a client gives at connect.
    InfoSize(usize),
    /// Messages waiting in a work queue.
    QueueFull(usize),
    /// Work queues on this node (a message to a new queue beyond it is refused).
    Queues(usize),
    /// Connections of one user on this node.
    UserConnections(usize),
}

/// A per-namespace feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Feature {
    /// Presence.
    Presence,
    /// History.
    History,
    /// Recovery of missed publications (needs history).
    Recovery,
}

impl fmt::Display for HubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HubError::BadChannel(why) => write!(f, "bad channel name: {why}"),
            HubError::UnknownNamespace(ns) => write!(f, "unknown namespace `{ns}`"),
            HubError::UnknownChannel => f.write_str("unknown channel"),
            HubError::EpochChanged => f.write_str("epoch changed: the stream was reset"),
            HubError::Unauthorized(TokenError::Missing) => f.write_str("a token is required"),
            HubError::Unauthorized(TokenError::Expired) => f.write_str("token expired"),
            HubError::Unauthorized(TokenError::Invalid(why)) => write!(f, "invalid token: {why}"),
            HubError::PermissionDenied(d) => d.fmt(f),
            HubError::AlreadySubscribed => f.write_str("already subscribed"),
            HubError::NotSubscribed => f.write_str("not subscribed"),
            HubError::LimitExceeded(Limit::Subscriptions(max)) => {
                write!(f, "too many subscriptions (at most {max})")
            }
            HubError::LimitExceeded(Limit::InfoSize(max)) => {
                write!(f, "name and info are limited to {max} bytes")
            }
            HubError::NotAvailable(feature) => {
                let what = match feature {
                    Feature::Presence => "presence",
                    Feature::History => "history",
                    Feature::Recovery => "recovery",
                };
                write!(f, "{what} is off for this channel's namespace")
            }
            HubError::LimitExceeded(Limit::QueueFull(max)) => {
                write!(f, "queue full ({max} messages waiting)")
            }
            HubError::LimitExceeded(Limit::Queues(max)) => {
                write!(f, "too many work queues (at most {max})")
            }
            HubError::LimitExceeded(Limit::UserConnections(max)) => {
                write!(f, "too many connections of this user (at most {max})")
            }
            HubError::UnknownMessage => f.write_str("no pending message with this id"),
            HubError::NotConnected => f.write_str("connect first"),
            HubError::AlreadyConnected => f.write_str("already connected"),
            HubError::Unavailable(why) => write!(f, "backplane unavailable: {why}"),
        }
    }
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denied::AnonymousSubscribe => {
                f.write_str("anonymous connections may not subscribe here")
            }
            Denied::OtherUsers => f.write_str("this channel is limited to other users"),
            Denied::ChannelTokenRequired => f.write_str("a channel token is required"),
            Denied::ChannelToken(e) => write!(f, "channel token refused: {e}"),
            Denied::ClientPublish => f.write_str("clients may not publish here"),
            Denied::SubscribeFirst => f.write_str("subscribe to this channel first"),
        }
    }
}

impl std::error::Error for HubError {}

impl From<BadChannel> for HubError {
    fn from(e: BadChannel) -> Self {
        HubError::BadChannel(e)
    }
}

impl From<crate::hub::backplane::BackplaneError> for HubError {
    fn from(e: crate::hub::backplane::BackplaneError) -> Self {
        match e {
            crate::hub::backplane::BackplaneError::UnknownChannel => HubError::UnknownChannel,
            crate::hub::backplane::BackplaneError::Unavailable(why) => HubError::Unavailable(why),
            crate::hub::backplane::BackplaneError::QueueFull(max) => {
                HubError::LimitExceeded(Limit::QueueFull(max))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_the_human_text_never_the_debug_form() {
        let e = HubError::BadChannel(BadChannel::BadCharacter);
        assert_eq!(
            e.to_string(),
            "bad channel name: white space or a control character"
        );
        let e = HubError::PermissionDenied(Denied::ChannelToken(TokenError::Expired));
        assert_eq!(e.to_string(), "channel token refused: token expired");
    }
}
