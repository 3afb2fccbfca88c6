//! The `wsx` command. Subcommands arrive with issue 4; for now it prints its version.

fn main() {
    println!("wsx {}", env!("CARGO_PKG_VERSION"));
}
