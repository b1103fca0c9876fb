//! `sketchreduce bench allreduce --rank-from-env` end to end on loopback: a real
//! `sketchreduce switch` process and one process per rank, as a launcher (or
//! `benches/netbench/run`) starts them.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_sketchreduce");

/// Kills the switch even when an assertion fails.
struct Switch(Child);

impl Drop for Switch {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_switch() -> (Switch, String) {
    let mut c = Command::new(BIN)
        .args([
            "switch",
            "--listen",
            "127.0.0.1:0",
            "--control",
            "127.0.0.1:0",
        ])
        .args(["--stats-interval", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn switch");
    let mut line = String::new();
    BufReader::new(c.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let control = line
        .split("control ")
        .nth(1)
        .and_then(|s| s.split([',', ' ']).next())
        .unwrap_or_else(|| panic!("no control address in {line:?}"))
        .trim()
        .to_string();
    (Switch(c), control)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `world` ranks with `algo` and returns their JSON lines (rank order) and exit codes.
/// Each run needs its own job id: the Communicator does not unregister its job, and the switch
/// refuses the same id with other worker addresses.
fn run_ranks(world: usize, algo: &str, job: u16, control: &str) -> Vec<(Value, bool)> {
    let port = free_port().to_string();
    let children: Vec<Child> = (0..world)
        .map(|r| {
            Command::new(BIN)
                .args(["bench", "allreduce", "--rank-from-env", "--dim", "20000"])
                .args(["--density", "0.05", "--overlap", "0", "--iters", "2"])
                .env("RANK", r.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .env("SKETCHREDUCE_ALGO", algo)
                .env("SKETCHREDUCE_SWITCH", control)
                .env("SKETCHREDUCE_JOB", job.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn rank")
        })
        .collect();
    children
        .into_iter()
        .map(|c| json_line(&c.wait_with_output().unwrap()))
        .collect()
}

/// A rank's JSON line (its last line starting with `{`) and whether it exited successfully.
fn json_line(out: &Output) -> (Value, bool) {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rfind(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line from a rank: {text:?}"));
    (serde_json::from_str(line).unwrap(), out.status.success())
}

#[test]
fn every_algorithm_is_exact_through_the_communicator() {
    let (_sw, control) = start_switch();
    for (job, algo) in (1..).zip(["innet", "ring", "allgather", "auto"]) {
        let rows = run_ranks(3, algo, job, &control);
        for (r, (v, ok)) in rows.iter().enumerate() {
            assert!(ok, "{algo} rank {r} failed: {v}");
            assert_eq!(v["rank"], r as u64, "{v}");
            assert_eq!(v["status"], "ok", "{algo}: {v}");
            assert_eq!(v["exact"], true, "{algo}: {v}");
            assert_eq!(v["mismatches"], 0, "{algo}: {v}");
            assert_eq!(v["algo"], algo, "{v}");
            assert_eq!(v["times_ms"].as_array().unwrap().len(), 2, "{v}");
            assert_eq!(v["ops"].as_array().unwrap().len(), 2, "{v}");
            assert!(v["bytes_sent"].as_u64().unwrap() > 0, "{v}");
            if algo == "auto" {
                // The cost model's choice (a switch is configured, so it may be innet), the
                // same on every rank.
                assert_eq!(v["algo_resolved_all_same"], true, "{v}");
            }
        }
        // Rank 0 reads the switch's counters around the timed operations; only innet uses it.
        let sw = &rows[0].0["switch"];
        let data_in = sw["data_in"].as_u64().unwrap_or_else(|| panic!("{sw}"));
        if algo == "innet" || rows[0].0["algo_resolved"] == "innet" {
            assert!(data_in > 0, "{sw}");
            assert!(sw["drops"]["duplicate"].is_u64(), "{sw}");
        } else {
            assert_eq!(data_in, 0, "{algo}: {sw}");
        }
        assert!(rows[1].0["switch"].is_null(), "only rank 0 reads counters");
    }
}

/// The JSON line of a single rank that fails, and whether the process failed too.
fn failing_rank(args: &[&str], env: &[(&str, &str)]) -> (Value, bool) {
    let mut c = Command::new(BIN);
    c.args(["bench", "allreduce", "--rank-from-env", "--dim", "100"])
        .args(args)
        .env("RANK", "0")
        .env("WORLD_SIZE", "1")
        .env_remove("SKETCHREDUCE_ALGO")
        .env_remove("SKETCHREDUCE_SWITCH");
    for (k, v) in env {
        c.env(k, v);
    }
    json_line(&c.output().unwrap())
}

#[test]
fn a_failing_rank_still_prints_its_line_and_exits_non_zero() {
    // Nothing listens on the switch's control port: joining fails at the registration.
    let dead = format!("127.0.0.1:{}", free_port());
    let (v, ok) = failing_rank(&[], &[("SKETCHREDUCE_SWITCH", &dead)]);
    assert!(!ok);
    assert_eq!(v["status"], "error", "{v}");
    assert_eq!(v["exact"], false, "{v}");
    assert_eq!(v["rank"], 0, "{v}");
    // innet (the default) without a switch, and an option only the parent mode has.
    let (v, ok) = failing_rank(&[], &[]);
    assert!(!ok);
    assert!(v["error"].as_str().unwrap().contains("switch"), "{v}");
    let (v, ok) = failing_rank(&["--algo", "ring", "--loss", "0.1"], &[]);
    assert!(!ok);
    assert!(v["error"].as_str().unwrap().contains("--loss"), "{v}");
}

/// Issue 11: a rank process killed (SIGKILL) while the job runs in-network all-reduces makes
/// every other rank fail within 3 s, naming it, instead of waiting for the operation timeout
/// (torch.distributed's 30 minutes by default).
#[test]
fn a_rank_killed_mid_innet_is_named_within_3_s() {
    let (_sw, control) = start_switch();
    let port = free_port().to_string();
    let mut children: Vec<Child> = (0..3)
        .map(|r| {
            Command::new(BIN)
                .args(["bench", "allreduce", "--rank-from-env", "--dim", "1000000"])
                .args(["--density", "1.0", "--overlap", "0", "--iters", "100000"])
                .args(["--time-budget-s", "600"])
                .env("RANK", r.to_string())
                .env("WORLD_SIZE", "3")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .env("SKETCHREDUCE_ALGO", "innet")
                .env("SKETCHREDUCE_SWITCH", &control)
                .env("SKETCHREDUCE_JOB", "40")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn rank")
        })
        .collect();
    // Generating the inputs, joining and the warm-up take about a second; then operations
    // follow each other back to back, almost all of their time on the switch.
    std::thread::sleep(std::time::Duration::from_secs(4));
    children[1].kill().unwrap();
    let killed = std::time::Instant::now();
    let _ = children[1].wait();
    for r in [0, 2] {
        let c = children.remove(if r == 0 { 0 } else { 1 });
        let out = c.wait_with_output().unwrap();
        let took = killed.elapsed();
        let (v, ok) = json_line(&out);
        assert!(!ok, "rank {r} survived: {v}");
        assert!(
            took < std::time::Duration::from_secs(3),
            "rank {r} took {took:?}: {v}"
        );
        let err = v["error"].as_str().unwrap_or_default();
        eprintln!("rank {r} failed {took:?} after the kill: {err}");
        assert!(err.contains("rank 1"), "rank {r}: {err}");
    }
}
