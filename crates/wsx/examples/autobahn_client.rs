//! Client driver for the Autobahn|Testsuite's fuzzing server (`wstest -m fuzzingserver`):
//! asks `/getCaseCount`, runs `/runCase?case=N&agent=wsx` echoing every message, then
//! `/updateReports?agent=wsx`.
//!
//! `cargo run --release -p wsx --example autobahn_client -- ws://127.0.0.1:9001 [agent]`

use futures_util::StreamExt;
use wsx::{ClientConfig, Config, DeflateConfig, Message};

#[tokio::main(flavor = "current_thread")]
async fn main() -> wsx::Result<()> {
    let mut args = std::env::args().skip(1);
    let base = args.next().unwrap_or_else(|| "ws://127.0.0.1:9001".into());
    let agent = args.next().unwrap_or_else(|| "wsx".into());
    let cfg = ClientConfig::default()
        .deflate(Some(DeflateConfig::default()))
        .protocol(
            Config::default()
                .max_frame_size(64 << 20)
                .max_message_size(64 << 20),
        );

    let (mut ws, _) = wsx::connect(&format!("{base}/getCaseCount"), &cfg).await?;
    let count: u32 = match ws.next().await {
        Some(Ok(Message::Text(t))) => t.as_str().trim().parse().unwrap_or(0),
        other => {
            eprintln!("unexpected answer to getCaseCount: {other:?}");
            std::process::exit(1);
        }
    };
    while ws.next().await.is_some() {}
    eprintln!("{count} cases");

    for case in 1..=count {
        let url = format!("{base}/runCase?case={case}&agent={agent}");
        let (mut ws, _) = match wsx::connect(&url, &cfg).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("case {case}: {e}");
                continue;
            }
        };
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_data() && ws.send(msg).await.is_err() {
                break;
            }
        }
    }

    let (mut ws, _) = wsx::connect(&format!("{base}/updateReports?agent={agent}"), &cfg).await?;
    while ws.next().await.is_some() {}
    Ok(())
}
