//! `wsx-hub`: the real-time server library (not yet implemented; see issue 5).
