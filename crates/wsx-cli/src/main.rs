//! The `wsx` command: `serve` (a WebSocket server with a live demo page), `connect` (an
//! interactive client) and `bench` (a load generator). No protocol logic lives here.

mod admin;
mod bench;
mod connect;
mod demo;
mod echo;
mod serve;
mod settings;
mod units;
mod web;
mod workers;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "wsx",
    version,
    about = "WebSocket server, client and load generator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server: an echo endpoint at /echo and the pages at /.
    Serve(Box<settings::ServeArgs>),
    /// Connect to a WebSocket: stdin lines are sent as text, messages received are printed.
    #[command(after_help = connect::EXIT_CODES)]
    Connect(connect::ConnectArgs),
    /// Load-test a WebSocket echo server.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // clap's whole message: what is wrong, a suggestion where it has one (a
            // misspelt flag), the usage line. Exit 2 for every usage error.
            let _ = e.print();
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Serve(args) => {
            let settings = match args.resolve() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("wsx: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(settings.log_format);
            // The first of `--workers` event loops (serve::run starts the others).
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("wsx: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(serve::run(*args, settings)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("wsx: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Connect(args) => connect::main(args),
        Command::Bench(args) => bench::main(args),
    }
}

fn init_logging(format: settings::LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        settings::LogFormat::Text => builder.init(),
        settings::LogFormat::Json => builder.json().init(),
    }
}
