//! `wsx connect URL`: stdin lines become text messages; messages received are printed.
//!
//! Exit status: 0 after a normal close (1000, or a close without a code); 1 when the
//! peer closed with another code; 2 on a usage error (a bad argument or URL); 3 when the
//! connection or handshake failed; 4 on a protocol error or a connection lost without a
//! close frame. The reason goes to stderr.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use wsx::{ClientConfig, CloseCode, CloseFrame, Config, DeflateConfig, Error, Message};

use crate::units::{parse_optional_duration, parse_size};

/// The exit statuses, for `--help`.
pub const EXIT_CODES: &str = "Exit status:
  0  the connection ended with a normal close (1000, or a close without a code)
  1  the server closed with another code (printed on stderr)
  2  usage error: a bad argument or URL
  3  the connection or the handshake failed (refused, TLS, an HTTP status)
  4  a protocol error, or the connection was lost without a close frame";

#[derive(clap::Args, Debug)]
pub struct ConnectArgs {
    /// ws:// or wss:// URL (http:// and https:// are taken as ws:// and wss://).
    pub url: String,
    /// Offer a subprotocol (repeat for several, in order of preference).
    #[arg(long = "subprotocol", value_name = "NAME")]
    pub subprotocols: Vec<String>,
    /// Extra request header, e.g. -H 'Authorization: Bearer TOKEN' (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Trust this CA certificate (PEM) for wss://, besides the system roots.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Accept any server certificate (testing only: no authentication).
    #[arg(long)]
    pub insecure: bool,
    /// Send a keepalive ping after this long without input, e.g. 30s [default: off].
    #[arg(long, value_name = "DURATION", value_parser = parse_optional_duration)]
    pub ping_interval: Option<Option<Duration>>,
    /// Offer permessage-deflate.
    #[arg(long)]
    pub compress: bool,
    /// Write binary messages raw instead of as hex.
    #[arg(long)]
    pub binary: bool,
    /// Send an Origin header.
    #[arg(long, value_name = "ORIGIN")]
    pub origin: Option<String>,
    /// Largest message accepted [default: 16MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_message_size: Option<usize>,
}

pub fn main(args: ConnectArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wsx: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(args))
}

fn config(args: &ConnectArgs) -> Result<ClientConfig, String> {
    let max = args.max_message_size.unwrap_or(16 << 20);
    let protocol = Config::default()
        .max_message_size(max)
        .max_frame_size(max)
        .ping_interval(args.ping_interval.flatten());
    let mut cfg = ClientConfig::default()
        .subprotocols(args.subprotocols.clone())
        .protocol(protocol)
        .deflate(args.compress.then(DeflateConfig::default));
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("invalid header `{h}`: expected 'Name: value'"))?;
        cfg = cfg.header(name.trim(), value.trim());
    }
    if let Some(o) = &args.origin {
        cfg = cfg.origin(o.clone());
    }
    if let Some(ca) = &args.ca {
        for cert in wsx::tls::load_certs(ca).map_err(|e| e.to_string())? {
            cfg = cfg.ca_cert(cert);
        }
    }
    cfg.danger_accept_invalid_certs = args.insecure;
    Ok(cfg)
}

async fn run(args: ConnectArgs) -> ExitCode {
    if let Err(e) = wsx::WsUrl::parse(&args.url) {
        eprintln!("wsx: {e}");
        return ExitCode::from(2);
    }
    let cfg = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wsx: {e}");
            return ExitCode::from(2);
        }
    };
    let (mut ws, accepted) = match wsx::connect(&args.url, &cfg).await {
        Ok(ok) => ok,
        Err(e) => {
            eprintln!("wsx: cannot connect to {}: {e}", args.url);
            return ExitCode::from(3);
        }
    };
    if let Some(p) = &accepted.subprotocol {
        eprintln!("wsx: connected, subprotocol {p}");
    }
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    let mut stdin_open = true;
    let mut close: Option<Option<CloseFrame>> = None;
    loop {
        tokio::select! {
            line = stdin.next_line(), if stdin_open => match line {
                Ok(Some(line)) => {
                    let line = line.strip_suffix('\r').unwrap_or(&line).to_string();
                    if let Err(e) = ws.send(Message::text(line)).await {
                        eprintln!("wsx: send failed: {e}");
                        stdin_open = false;
                    }
                }
                _ => {
                    // End of input: close normally, then print what still arrives.
                    stdin_open = false;
                    let _ = ws.send(Message::Close(Some(CloseFrame::new(CloseCode::NORMAL, "")))).await;
                }
            },
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let _ = stdout.write_all(t.as_bytes()).await;
                    let _ = stdout.write_all(b"\n").await;
                    let _ = stdout.flush().await;
                }
                Some(Ok(Message::Binary(b))) => {
                    if args.binary {
                        let _ = stdout.write_all(&b).await;
                    } else {
                        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
                        let _ = stdout.write_all(format!("{hex}\n").as_bytes()).await;
                    }
                    let _ = stdout.flush().await;
                }
                Some(Ok(Message::Close(frame))) => close = Some(frame),
                Some(Ok(_)) => {}
                Some(Err(e)) => return error_exit(&e),
                None => break,
            },
        }
    }
    match close {
        Some(None) => ExitCode::SUCCESS,
        Some(Some(f)) if f.code == CloseCode::NORMAL => ExitCode::SUCCESS,
        Some(Some(f)) => {
            eprintln!("wsx: closed by the server: {} {}", f.code, f.reason);
            ExitCode::from(1)
        }
        None => {
            eprintln!("wsx: connection lost without a close frame (1006)");
            ExitCode::from(4)
        }
    }
}

fn error_exit(e: &Error) -> ExitCode {
    eprintln!("wsx: {e}");
    match e {
        Error::Handshake(_) => ExitCode::from(3),
        _ => ExitCode::from(4),
    }
}
