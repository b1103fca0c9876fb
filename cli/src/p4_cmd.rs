//! Not implemented yet.

/// P4 subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum P4Command {
    /// Regenerate the generated parts of the P4 program.
    Gen,
}

/// Runs the subcommand.
pub fn run(_cmd: P4Command) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
