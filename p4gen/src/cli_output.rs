//! Parsing what bmv2's `simple_switch_CLI` prints (bmv2 1.15, `tools/runtime_CLI.py` and
//! `targets/simple_switch/sswitch_CLI.py`).
//!
//! The CLI is a Python `cmd.Cmd` loop. With commands piped on stdin it prints, on stdout:
//! a preamble (`Obtaining JSON from switch...`/`Done` unless `--json` is given, then the intro
//! line), then for every input line the prompt `RuntimeCmd: ` (no newline) followed by that
//! command's output, and a last prompt answered by end of input. Errors caught by the CLI are
//! printed on stdout too (`Invalid table operation (DUPLICATE_ENTRY)`, `Error: …`); a command
//! the CLI does not know prints `*** Unknown syntax: …`. So the transcript splits at the
//! prompts into one segment per command, which is how [`split_transcript`] attributes output
//! and errors to commands.
//!
//! Every parser here takes text from another process and never panics on it.

use thiserror::Error;

/// The prompt `cmd.Cmd` prints before reading each line.
pub const PROMPT: &str = "RuntimeCmd: ";

/// What went wrong with one CLI run or one command's output.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CliError {
    /// The CLI could not reach the switch's Thrift server.
    #[error("simple_switch_CLI cannot connect to the switch: {0}")]
    Connect(String),
    /// Fewer command outputs than commands: the CLI stopped early (crashed or was killed).
    #[error("simple_switch_CLI stopped after {got} of {want} commands; output: {tail}")]
    Truncated {
        /// Command outputs found.
        got: usize,
        /// Commands sent.
        want: usize,
        /// The end of the transcript, for the log.
        tail: String,
    },
    /// The CLI reported an error for a command.
    #[error("`{command}`: {message}")]
    Command {
        /// The command line.
        command: String,
        /// The CLI's error line.
        message: String,
    },
    /// A command's output does not have the expected form.
    #[error("`{command}`: unexpected output {output:?}")]
    Unexpected {
        /// The command line.
        command: String,
        /// What the CLI printed.
        output: String,
    },
    /// The CLI process could not be run or timed out.
    #[error("simple_switch_CLI: {0}")]
    Process(String),
}

/// Splits a transcript of `commands` piped commands into one output segment per command
/// (trimmed), checking that the CLI answered every command.
pub fn split_transcript(transcript: &str, commands: usize) -> Result<Vec<&str>, CliError> {
    if transcript.contains("Could not connect to thrift client") {
        return Err(CliError::Connect(tail(transcript)));
    }
    // Segment 0 is the preamble; segments 1..=commands are the outputs; the last one is the
    // answer to end of input (an empty line).
    // Without the final prompt the last command may have been cut off mid-output.
    let parts: Vec<&str> = transcript.split(PROMPT).collect();
    if parts.len() < commands + 2 {
        return Err(CliError::Truncated {
            got: parts.len().saturating_sub(2),
            want: commands,
            tail: tail(transcript),
        });
    }
    Ok(parts[1..=commands].iter().map(|s| s.trim()).collect())
}

fn tail(s: &str) -> String {
    let t = s.trim();
    let start = t.char_indices().rev().nth(400).map_or(0, |(i, _)| i);
    t[start..].to_string()
}

/// The error line of a command's output, if the CLI reported one.
pub fn error_line(output: &str) -> Option<&str> {
    output.lines().map(str::trim).find(|l| {
        l.starts_with("Invalid ")
            || l.starts_with("Error:")
            || l.starts_with("*** Unknown syntax")
            || l.starts_with("Traceback")
    })
}

/// Fails with [`CliError::Command`] when `output` (of `command`) holds an error line.
pub fn check(command: &str, output: &str) -> Result<(), CliError> {
    match error_line(output) {
        Some(m) => Err(CliError::Command {
            command: command.to_string(),
            message: m.to_string(),
        }),
        None => Ok(()),
    }
}

fn unexpected(command: &str, output: &str) -> CliError {
    CliError::Unexpected {
        command: command.to_string(),
        output: output.to_string(),
    }
}

/// The number after the last occurrence of `marker` in `output`.
fn number_after(output: &str, marker: &str) -> Option<u64> {
    let at = output.rfind(marker)? + marker.len();
    let digits: String = output[at..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// A counter cell: `counter_read` prints both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterValue {
    /// Bytes counted.
    pub bytes: u64,
    /// Packets counted.
    pub packets: u64,
}

/// Parses `counter_read NAME INDEX`: `NAME[INDEX]= (B bytes, P packets)`.
pub fn counter(command: &str, output: &str) -> Result<CounterValue, CliError> {
    check(command, output)?;
    let bad = || unexpected(command, output);
    let line = output
        .lines()
        .map(str::trim)
        .find(|l| l.contains("]=") && l.ends_with("packets)"))
        .ok_or_else(bad)?;
    let (_, rest) = line.split_once("]=").ok_or_else(bad)?;
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(bad)?;
    let (b, p) = inner.split_once(',').ok_or_else(bad)?;
    let num =
        |s: &str, unit: &str| -> Option<u64> { s.trim().strip_suffix(unit)?.trim().parse().ok() };
    Ok(CounterValue {
        bytes: num(b, "bytes").ok_or_else(bad)?,
        packets: num(p, "packets").ok_or_else(bad)?,
    })
}

/// Parses `register_read NAME INDEX`: `NAME[INDEX]= VALUE`.
pub fn register(command: &str, output: &str) -> Result<u64, CliError> {
    check(command, output)?;
    let bad = || unexpected(command, output);
    let line = output
        .lines()
        .map(str::trim)
        .find(|l| l.contains("]="))
        .ok_or_else(bad)?;
    let (_, v) = line.split_once("]=").ok_or_else(bad)?;
    v.trim().parse().map_err(|_| bad())
}

/// Parses `table_add …`: `Entry has been added with handle H`.
pub fn entry_handle(command: &str, output: &str) -> Result<u64, CliError> {
    check(command, output)?;
    number_after(output, "Entry has been added with handle")
        .ok_or_else(|| unexpected(command, output))
}

/// Parses `mc_node_create …`: `node was created with handle H`.
pub fn node_handle(command: &str, output: &str) -> Result<u64, CliError> {
    check(command, output)?;
    number_after(output, "node was created with handle").ok_or_else(|| unexpected(command, output))
}

/// Parses `mc_mgrp_create G`: `Creating multicast group G` (the CLI asserts that the
/// returned handle equals `G`).
pub fn group_created(command: &str, output: &str) -> Result<u64, CliError> {
    check(command, output)?;
    number_after(output, "Creating multicast group").ok_or_else(|| unexpected(command, output))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transcript as bmv2 1.15.5's simple_switch_CLI prints it for three commands piped on
    /// stdin (`counter_read`, `table_add`, `mc_node_create`), without `--json`.
    const TRANSCRIPT: &str = "Obtaining JSON from switch...\nDone\nControl utility for runtime P4 table manipulation\nRuntimeCmd: SrIngress.sr_global[9]= (119278 bytes, 363 packets)\nRuntimeCmd: Adding entry to exact match table SrIngress.sr_jobs\nmatch key:           EXACT-00:01\naction:              SrIngress.sr_set_job\nruntime data:        12:34:56:78\t04\nEntry has been added with handle 7\nRuntimeCmd: Creating node with rid 33 , port map 10 and lag map \nnode was created with handle 4\nRuntimeCmd: \n";

    #[test]
    fn splits_and_parses_a_real_transcript() {
        let parts = split_transcript(TRANSCRIPT, 3).unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            counter("counter_read SrIngress.sr_global 9", parts[0]).unwrap(),
            CounterValue {
                bytes: 119278,
                packets: 363
            }
        );
        assert_eq!(entry_handle("table_add …", parts[1]).unwrap(), 7);
        assert_eq!(node_handle("mc_node_create 33 1", parts[2]).unwrap(), 4);
    }

    #[test]
    fn a_missing_final_prompt_is_a_truncated_run() {
        // The CLI died during the second command (a Python traceback goes to stderr).
        let t = "Control utility for runtime P4 table manipulation\nRuntimeCmd: SrIngress.sr_global[9]= (0 bytes, 0 packets)\nRuntimeCmd: ";
        assert!(matches!(
            split_transcript(t, 2),
            Err(CliError::Truncated {
                got: 1,
                want: 2,
                ..
            })
        ));
        assert!(matches!(
            split_transcript("", 1),
            Err(CliError::Truncated { got: 0, .. })
        ));
    }

    #[test]
    fn connection_failure() {
        let t = "Could not connect to thrift client on port 9090\nMake sure the switch is running and that you have the right port\n";
        assert!(matches!(split_transcript(t, 1), Err(CliError::Connect(_))));
    }

    #[test]
    fn errors_are_attributed_to_their_command() {
        let t = "Control utility for runtime P4 table manipulation\nRuntimeCmd: Adding entry to exact match table SrIngress.sr_jobs\nmatch key:           EXACT-00:01\naction:              SrIngress.sr_set_job\nruntime data:        00:00:00:01\nInvalid table operation (DUPLICATE_ENTRY)\nRuntimeCmd: Error: Invalid register name (SrIngress.nope)\nRuntimeCmd: *** Unknown syntax: frobnicate 1\nRuntimeCmd: Invalid PRE operation (GROUP_NOT_FOUND)\nRuntimeCmd: Invalid counter operation (INVALID_INDEX)\nRuntimeCmd: \n";
        let parts = split_transcript(t, 5).unwrap();
        let e = entry_handle("table_add SrIngress.sr_jobs …", parts[0]).unwrap_err();
        assert_eq!(
            e,
            CliError::Command {
                command: "table_add SrIngress.sr_jobs …".into(),
                message: "Invalid table operation (DUPLICATE_ENTRY)".into()
            }
        );
        assert!(register("register_read SrIngress.nope 0", parts[1]).is_err());
        assert!(check("frobnicate 1", parts[2]).is_err());
        assert!(check("mc_node_associate 9 0", parts[3]).is_err());
        assert!(matches!(
            counter("counter_read SrIngress.sr_job 99999", parts[4]),
            Err(CliError::Command { .. })
        ));
    }

    #[test]
    fn register_and_group_replies() {
        assert_eq!(
            register("r", "SrIngress.sr_round[17]= 4294967295").unwrap(),
            u32::MAX as u64
        );
        assert!(register("r", "SrIngress.sr_round[17]= x").is_err());
        assert_eq!(
            group_created("g", "Creating multicast group 12").unwrap(),
            12
        );
        // Success of commands that print nothing (register_write, counter_write prints a line).
        assert!(check("register_write SrIngress.sr_round 0 0", "").is_ok());
        assert!(check(
            "counter_write SrIngress.sr_job 16 0 0",
            "SrIngress.sr_job[16] has been updated"
        )
        .is_ok());
    }

    #[test]
    fn malformed_counter_lines_are_errors_not_panics() {
        for bad in [
            "",
            "SrIngress.sr_global[9]=",
            "SrIngress.sr_global[9]= (12 bytes 3 packets)",
            "SrIngress.sr_global[9]= (x bytes, 3 packets)",
            "SrIngress.sr_global[9]= packets=3",
            "SrIngress.sr_global[9]= (18446744073709551616 bytes, 1 packets)",
        ] {
            assert!(
                counter("counter_read SrIngress.sr_global 9", bad).is_err(),
                "{bad:?}"
            );
        }
    }
}
