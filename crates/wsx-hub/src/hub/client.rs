//! Who a connection is.

use std::borrow::Cow;

/// A connection's id, unique within the hub.
pub type ClientId = u64;

/// Who a connection is: presence shows this.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ClientInfo {
    /// The connection.
    pub client: ClientId,
    /// The authenticated user ("" for anonymous).
    pub user: String,
    /// The client's name (`connect`'s `name`, e.g. `wsx.js`).
    pub name: String,
    /// Free-form connection info the client gave at `connect` (a nickname, say).
    pub info: String,
    /// The protocol it speaks: the front-end's name (`native`, `stomp`, `socketio`).
    /// A front-end's fixed name is borrowed: nothing allocated per connection.
    pub protocol: Cow<'static, str>,
    /// How it reached the server, where the front-end knows and it cannot change
    /// (`websocket`, `sse`, `polling`, `tcp`, a SockJS transport such as
    /// `sockjs/xhr-streaming`); "" otherwise.
    pub transport: Cow<'static, str>,
}
