//! Running `simple_switch_CLI`: the thin I/O layer between the bmv2 control plane and a
//! running `simple_switch`.
//!
//! Each [`Runtime::run`] starts one CLI process, pipes a batch of commands into it, waits (with
//! a timeout) and returns one output per command, with the CLI's own error messages turned
//! into [`CliError`]s ([`crate::cli_output`]). One process per batch keeps no state that
//! could go stale; its cost (a Python start, ~0.3 s) is paid per control operation, not per
//! packet.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli_output::{self, CliError};

/// Something that runs batches of `simple_switch_CLI` commands.
pub trait Runtime: Send {
    /// Runs `commands` (one per line, none empty) in order. Fails as a whole if the CLI could
    /// not run or did not answer every command; otherwise returns each command's output, or
    /// the error the CLI reported for it (the CLI goes on after an error, so later commands
    /// may have succeeded: callers that undo work need to know which).
    fn run_all(&mut self, commands: &[String]) -> Result<Vec<Result<String, CliError>>, CliError>;

    /// [`Runtime::run_all`], failing on the first command the CLI reported an error for.
    fn run(&mut self, commands: &[String]) -> Result<Vec<String>, CliError> {
        self.run_all(commands)?.into_iter().collect()
    }
}

/// How to reach `simple_switch_CLI`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchCli {
    /// The command and its leading arguments, e.g. `["simple_switch_CLI"]` or
    /// `["ip", "netns", "exec", "sw", "simple_switch_CLI"]`.
    pub program: Vec<String>,
    /// The switch's Thrift port (`simple_switch --thrift-port`).
    pub thrift_port: u16,
    /// Longest a batch may take.
    pub timeout: Duration,
}

impl SwitchCli {
    /// `simple_switch_CLI --thrift-port PORT` from `PATH`, 60 s per batch.
    pub fn new(thrift_port: u16) -> Self {
        SwitchCli {
            program: vec!["simple_switch_CLI".into()],
            thrift_port,
            timeout: Duration::from_secs(60),
        }
    }

    /// Runs the CLI with `input` on stdin; returns (exit success, stdout, stderr).
    fn exec(&self, input: String) -> Result<(bool, String, String), CliError> {
        let (prog, args) = self
            .program
            .split_first()
            .ok_or_else(|| CliError::Process("empty CLI command".into()))?;
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .arg("--thrift-port")
            .arg(self.thrift_port.to_string());
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| CliError::Process(format!("cannot start {prog}: {e}")))?;
        // Feed stdin and drain stdout/stderr on threads so a full pipe cannot block us.
        let mut stdin = child.stdin.take();
        let writer = std::thread::spawn(move || {
            if let Some(s) = stdin.as_mut() {
                let _ = s.write_all(input.as_bytes());
            }
            // Dropping stdin closes it: end of input ends the CLI's loop.
        });
        let drain = |r: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_end(&mut buf);
                }
                String::from_utf8_lossy(&buf).into_owned()
            })
        };
        let out = drain(
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        );
        let err = drain(
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        );
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(CliError::Process(format!(
                        "no answer within {:?} (is simple_switch running on thrift port {}?)",
                        self.timeout, self.thrift_port
                    )));
                }
                Err(e) => return Err(CliError::Process(e.to_string())),
            }
        };
        let _ = writer.join();
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        Ok((status.success(), stdout, stderr))
    }
}

impl Runtime for SwitchCli {
    fn run_all(&mut self, commands: &[String]) -> Result<Vec<Result<String, CliError>>, CliError> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        // An empty line would make cmd.Cmd repeat the previous command.
        if let Some(c) = commands
            .iter()
            .find(|c| c.trim().is_empty() || c.contains('\n'))
        {
            return Err(CliError::Process(format!("invalid command line {c:?}")));
        }
        let mut input = commands.join("\n");
        input.push('\n');
        let (ok, stdout, stderr) = self.exec(input)?;
        let parts = cli_output::split_transcript(&stdout, commands.len()).map_err(|e| match e {
            CliError::Truncated { got, want, tail } => CliError::Truncated {
                got,
                want,
                tail: format!("{tail}\nstderr: {}", stderr.trim()),
            },
            other => other,
        })?;
        if !ok {
            return Err(CliError::Process(format!(
                "exited with an error: {}",
                stderr.trim()
            )));
        }
        Ok(commands
            .iter()
            .zip(parts)
            .map(|(c, o)| cli_output::check(c, o).map(|()| o.to_string()))
            .collect())
    }
}
