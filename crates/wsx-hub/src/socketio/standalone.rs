//! Socket.IO onto the hub for `wsx serve`: a client of the main namespace connects
//! with the hub's connection token in its auth payload (`io({auth: {token}})`), and
//! uses events whose acknowledgements carry the native protocol's results:
//!
//! | emit (with an ack) | ack |
//! |---|---|
//! | `subscribe(channel, {token?, recover?, offset?, epoch?}?)` | `{result: {offset?, epoch?, recovered?}}` |
//! | `unsubscribe(channel)` | `{result: {}}` |
//! | `publish(channel, data)` (JSON, or one binary value) | `{result: {offset}}` |
//! | `presence(channel)` | `{result: {presence: {...}}}` |
//! | `presence_stats(channel)` | `{result: {num_clients, num_users}}` |
//! | `history(channel, {limit?, since?: {offset, epoch}, reverse?}?)` | `{result: {publications, offset, epoch}}` |
//! | `whoami()` | `{result: {client, user}}`: the hub's id of this connection (presence and join/leave show it) |
//!
//! Errors are `{error: {code, message}}` with the native codes. The server emits
//! `publication(channel, data, {offset})` (with recovery on, the offset string last),
//! `join(channel, client)`, `leave(channel, client)` and `unsubscribed(channel)`.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Ack, Args, Identity, SocketIo};
use crate::hub::backplane::HistoryQuery;
use crate::hub::error::HubError;
use crate::hub::publication::{Payload, StreamPosition};
use crate::native::{codec, codes, error_code};

/// Serve the hub's vocabulary on the main namespace of `io`.
pub fn mount(io: &SocketIo) {
    let ns = io.of("/");
    ns.use_auth(|hs| async move {
        Ok(Identity::Token(
            hs.auth_field::<String>("token").unwrap_or_default(),
        ))
    });
    ns.on_connection(|socket| async move {
        socket.on("subscribe", |s, args, ack| async move {
            reply(ack, subscribe(&s, &args).await);
        });
        socket.on("unsubscribe", |s, args, ack| async move {
            let r = match args.get::<String>(0) {
                Some(ch) => s.leave(&ch).await.map(|_| json!({})).map_err(Into::into),
                None => Err(bad("unsubscribe(channel)")),
            };
            reply(ack, r);
        });
        socket.on("publish", |s, args, ack| async move {
            reply(ack, publish(&s, &args).await);
        });
        socket.on("presence", |s, args, ack| async move {
            reply(ack, presence(&s, &args, false).await);
        });
        socket.on("presence_stats", |s, args, ack| async move {
            reply(ack, presence(&s, &args, true).await);
        });
        socket.on("history", |s, args, ack| async move {
            reply(ack, history(&s, &args).await);
        });
        socket.on("whoami", |s, _args, ack| async move {
            let guard = s.hub_session().lock().await;
            let r = match guard.as_ref() {
                Some(sess) => Ok(json!({
                    "client": sess.client().to_string(),
                    "user": sess.info().user,
                })),
                None => Err(HubError::NotConnected.into()),
            };
            drop(guard);
            reply(ack, r);
        });
    });
}

/// An error as the ack carries it.
#[derive(Debug)]
struct Failure {
    code: u16,
    message: String,
}

impl From<HubError> for Failure {
    fn from(e: HubError) -> Self {
        Failure {
            code: error_code(&e),
            message: e.to_string(),
        }
    }
}

fn bad(usage: &str) -> Failure {
    Failure {
        code: codes::BAD_REQUEST,
        message: format!("bad arguments: {usage}"),
    }
}

fn reply(ack: Option<Ack>, r: Result<Value, Failure>) {
    let Some(ack) = ack else { return };
    let body = match r {
        Ok(v) => json!({ "result": v }),
        Err(f) => json!({ "error": { "code": f.code, "message": f.message } }),
    };
    ack.send(Args::new().push(&body));
}

async fn presence(s: &super::Socket, args: &Args, stats: bool) -> Result<Value, Failure> {
    let channel: String = args.get(0).ok_or_else(|| bad("presence(channel)"))?;
    let guard = s.hub_session().lock().await;
    let sess = guard.as_ref().ok_or(HubError::NotConnected)?;
    if stats {
        let (c, u) = sess.presence_stats(&channel).await?;
        Ok(json!({ "num_clients": c, "num_users": u }))
    } else {
        Ok(codec::presence_json(&sess.presence(&channel).await?))
    }
}

#[derive(Deserialize, Default)]
struct SubscribeOpts {
    token: Option<String>,
    #[serde(default)]
    recover: bool,
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    epoch: String,
}

async fn subscribe(s: &super::Socket, args: &Args) -> Result<Value, Failure> {
    let channel: String = args
        .get(0)
        .ok_or_else(|| bad("subscribe(channel, opts?)"))?;
    let opts: SubscribeOpts = match args.raw(1) {
        Some(r) if r.get() != "null" => {
            serde_json::from_str(r.get()).map_err(|_| bad("subscribe(channel, opts?)"))?
        }
        _ => SubscribeOpts::default(),
    };
    let pos = opts.recover.then(|| StreamPosition {
        offset: opts.offset,
        epoch: opts.epoch.clone(),
    });
    let r = {
        let mut guard = s.hub_session().lock().await;
        let sess = guard.as_mut().ok_or(HubError::NotConnected)?;
        sess.subscribe(&channel, opts.token.as_deref(), pos).await?
    };
    s.track(&channel, r.position.clone());
    Ok(codec::subscribed_json(&r))
}

async fn publish(s: &super::Socket, args: &Args) -> Result<Value, Failure> {
    let channel: String = args.get(0).ok_or_else(|| bad("publish(channel, data)"))?;
    let payload = match (args.binary(1), args.raw(1)) {
        (Some(b), _) => Payload::binary(b.clone()),
        (None, Some(_)) if !args.attachments().is_empty() => {
            return Err(bad(
                "publish(channel, data): binary data must be the whole payload",
            ))
        }
        (None, Some(r)) => Payload::json(Bytes::copy_from_slice(r.get().as_bytes())),
        (None, None) => return Err(bad("publish(channel, data)")),
    };
    let mut guard = s.hub_session().lock().await;
    let sess = guard.as_mut().ok_or(HubError::NotConnected)?;
    let p = sess.publish(&channel, payload).await?;
    Ok(json!({ "offset": p.offset }))
}

#[derive(Deserialize, Default)]
struct HistoryOpts {
    #[serde(default)]
    limit: usize,
    since: Option<Since>,
    #[serde(default)]
    reverse: bool,
}

#[derive(Deserialize)]
struct Since {
    offset: u64,
    #[serde(default)]
    epoch: String,
}

async fn history(s: &super::Socket, args: &Args) -> Result<Value, Failure> {
    let usage = "history(channel, {limit?, since?, reverse?}?)";
    let channel: String = args.get(0).ok_or_else(|| bad(usage))?;
    let opts: HistoryOpts = match args.raw(1) {
        Some(r) if r.get() != "null" => serde_json::from_str(r.get()).map_err(|_| bad(usage))?,
        _ => HistoryOpts::default(),
    };
    let query = HistoryQuery {
        limit: opts.limit,
        since: opts.since.as_ref().map(|s| s.offset),
        reverse: opts.reverse,
    };
    let guard = s.hub_session().lock().await;
    let sess = guard.as_ref().ok_or(HubError::NotConnected)?;
    let page = sess
        .history(
            &channel,
            query,
            opts.since.as_ref().map(|s| s.epoch.as_str()),
        )
        .await?;
    Ok(codec::history_json(&page.publications, &page.position))
}
