//! `sketchreduce quic …`: QUIC identities. `quic fingerprint --dir D` prints the SHA-256
//! fingerprint of the certificate in D (a worker's client identity or the switch's
//! `--cert-dir`), creating the identity on first use, so an operator can collect the workers'
//! fingerprints into the switch's `--quic-client-fingerprints` file.

use std::path::PathBuf;

use anyhow::Context;

/// QUIC subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum QuicCommand {
    /// Print the fingerprint (64 hex digits, one line) of the QUIC identity in --dir, creating
    /// a self-signed certificate and key (mode 0600) there if it has none. Appending the output
    /// of every worker to one file gives the switch's --quic-client-fingerprints list.
    Fingerprint {
        /// Directory of the identity (`cert.der`, `key.der`).
        #[arg(long)]
        dir: PathBuf,
    },
}

/// Runs the subcommand.
pub fn run(cmd: QuicCommand) -> anyhow::Result<()> {
    match cmd {
        QuicCommand::Fingerprint { dir } => {
            let id = sketchreduce_quic::load_or_create_identity(&dir)
                .with_context(|| format!("QUIC identity in {}", dir.display()))?;
            println!("{}", sketchreduce_quic::fingerprint(&id.cert_der));
            Ok(())
        }
    }
}
