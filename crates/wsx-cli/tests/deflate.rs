//! permessage-deflate on the hub's fan-out with Node `ws` clients (from the registry):
//! a publication is compressed once for the subscribers without server context
//! takeover, with its own context for the others, and beyond `--max-deflate-contexts`
//! new connections are answered without context takeover.
#![allow(clippy::unwrap_used)]

mod common;

#[tokio::test]
async fn fan_out_compresses_for_ws_clients_with_and_without_context_takeover() {
    let key = "deflate-test-key-0123456789";
    let (_server, addr) = common::serve(&["--api-key", key, "--max-deflate-contexts", "1"]).await;
    let out = common::node_script("deflate/fanout_ws.mjs", &[&addr, key], "OK passed").await;
    println!("{out}");
}
