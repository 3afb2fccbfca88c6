//! `wsx`: async WebSocket over tokio (not yet implemented; see issue 3).
