//! `sketchreduce`: the one user-facing binary.
//!
//! Every subcommand lives in its own module; this file only parses arguments and dispatches.

mod allreduce_bench;
mod allreduce_rank;
mod codec_bench;
mod demo;
mod p4_cmd;
mod quic_cmd;
mod switch_bench;
mod switch_cmd;

use clap::{Parser, Subcommand};

/// In-network aggregation of compressed gradients.
#[derive(Parser, Debug)]
#[command(name = "sketchreduce", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the software switch (UDP data path + control endpoint), or query a running one.
    Switch(switch_cmd::Args),
    /// Benchmarks with a stable JSON contract.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// P4 program generation and bmv2 control-plane configuration.
    #[command(subcommand)]
    P4(p4_cmd::P4Command),
    /// Codec demo: simulate workers on a realistic sparse gradient and check exactness.
    Demo(demo::Args),
    /// QUIC identities (fingerprints for the switch's client allow-list).
    #[command(subcommand)]
    Quic(quic_cmd::QuicCommand),
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Encode, merge and decode synthetic gradients; compare with memcpy and other codecs.
    Codec(codec_bench::Args),
    /// Push rounds through a real switch-emu over loopback UDP; compare with a UDP echo server.
    Switch(switch_bench::Args),
    /// End-to-end all-reduce through the switch with real worker processes, or one rank of a
    /// launcher-started job (--rank-from-env).
    Allreduce(allreduce_bench::Args),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version go to stdout and exit 0; usage errors are one line and exit 2.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("invalid arguments");
            eprintln!("{first} (see --help)");
            std::process::exit(2);
        }
    };
    let result = match cli.command {
        Command::Switch(a) => switch_cmd::run(a),
        Command::Bench(BenchCommand::Codec(a)) => codec_bench::run(a),
        Command::Bench(BenchCommand::Switch(a)) => switch_bench::run(a),
        Command::Bench(BenchCommand::Allreduce(a)) => allreduce_bench::run(a),
        Command::P4(c) => p4_cmd::run(c),
        Command::Demo(a) => demo::run(a),
        Command::Quic(c) => quic_cmd::run(c),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}
