//! WebSocket extensions. The one we implement is permessage-deflate (RFC 7692).

pub mod permessage_deflate;
