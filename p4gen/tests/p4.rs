//! Tests of the P4 program and its control plane:
//!
//! - the committed `p4/sketchreduce_gen.p4` is what the generator produces now;
//! - the configuration for the 4-worker example job (golden checks) and its error cases;
//! - the names the configuration uses exist in `p4/sketchreduce.p4`;
//! - with `p4c` on PATH: the program compiles for bmv2/v1model (else "skipped: p4c not found");
//! - with `simple_switch`, `simple_switch_CLI`, `p4c` and permission to create network
//!   namespaces: an end-to-end all-reduce through bmv2 with real UDP workers in namespaces,
//!   including a run with random loss on one link (else a "skipped: …" line on stderr).

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sketchreduce_p4gen::{
    generate_config, generate_headers, names, ConfigError, ConfigOptions, DEFAULT_LANES,
    GENERATED_FILE, PROGRAM_FILE,
};
use sketchreduce_wire::packet::build;
use sketchreduce_wire::{Header, JobFile, Kind, Op, Packet, WorkerSpec};

fn p4_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("p4")
}

fn example_jobs() -> JobFile {
    JobFile::load(&p4_dir().join("example-jobs.json")).expect("p4/example-jobs.json")
}

/// The P4 source without `//` and `/* */` comments.
fn strip_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("//") {
            rest = r.find('\n').map_or("", |i| &r[i..]);
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.find("*/").map_or("", |i| &r[i + 2..]);
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

#[test]
fn generated_file_is_up_to_date() {
    let path = p4_dir().join(GENERATED_FILE);
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let now = generate_headers(DEFAULT_LANES);
    assert!(
        committed == now,
        "{} is out of date with the wire spec: run `sketchreduce p4 gen` \
         (cargo run -p sketchreduce-cli -- p4 gen) and commit the result",
        path.display()
    );
}

#[test]
fn p4_sources_are_balanced_and_include_the_generated_file() {
    for file in [PROGRAM_FILE, GENERATED_FILE] {
        let src = std::fs::read_to_string(p4_dir().join(file)).unwrap();
        let code = strip_comments(&src);
        for (open, close) in [('{', '}'), ('(', ')'), ('[', ']')] {
            let mut depth = 0i64;
            for c in code.chars() {
                if c == open {
                    depth += 1;
                } else if c == close {
                    depth -= 1;
                }
                assert!(depth >= 0, "{file}: unbalanced {close}");
            }
            assert_eq!(depth, 0, "{file}: unbalanced {open}{close}");
        }
    }
    let main = std::fs::read_to_string(p4_dir().join(PROGRAM_FILE)).unwrap();
    assert!(main.contains(&format!("#include \"{GENERATED_FILE}\"")));
    assert!(main.contains("#include <v1model.p4>"));
    assert!(main.contains("mark_to_drop(standard_metadata)"));
    assert!(!strip_comments(&main).contains("mark_to_drop()"));
}

/// The tables, actions, registers and counters the config generator and the README name
/// exist in the program under the control and local names bmv2 derives them from.
#[test]
fn config_names_exist_in_program() {
    let main = strip_comments(&std::fs::read_to_string(p4_dir().join(PROGRAM_FILE)).unwrap());
    let control_of = |full: &str| -> (String, String) {
        let (c, l) = full.split_once('.').unwrap();
        (c.to_string(), l.to_string())
    };
    // Byte range of `control NAME(` … up to the next top-level `control` or `V1Switch`.
    let control_body = |control: &str| -> String {
        let start = main
            .find(&format!("control {control}("))
            .unwrap_or_else(|| panic!("no control {control}"));
        let rest = &main[start + 8..];
        let end = rest
            .find("\ncontrol ")
            .or_else(|| rest.find("\nV1Switch"))
            .unwrap();
        rest[..end].to_string()
    };
    for t in [names::JOBS_TABLE, names::L2_TABLE, names::DST_TABLE] {
        let (c, l) = control_of(t);
        assert!(
            control_body(&c).contains(&format!("table {l} {{")),
            "table {t} not found"
        );
    }
    for (a, params) in [
        (names::SET_JOB, 7),
        (names::L2_FORWARD, 1),
        (names::SET_DST, 3),
    ] {
        let (c, l) = control_of(a);
        let body = control_body(&c);
        let at = body
            .find(&format!("action {l}("))
            .unwrap_or_else(|| panic!("action {a} not found"));
        let sig = &body[at..at + body[at..].find(')').unwrap()];
        assert_eq!(
            sig.matches("bit<").count(),
            params,
            "action {a} parameter count"
        );
    }
    for r in [names::REG_ROUND, names::REG_BITMAP, names::REG_COUNT] {
        let (c, l) = control_of(r);
        let body = control_body(&c);
        assert!(
            body.contains(&format!("(SR_REG_SIZE) {l};")),
            "register {r}"
        );
    }
    for k in [
        names::CTR_GLOBAL,
        names::CTR_JOB,
        names::CTR_TX,
        names::CTR_TX_MCAST,
    ] {
        let (c, l) = control_of(k);
        let body = control_body(&c);
        assert!(
            body.contains(&format!("CounterType.packets) {l};")),
            "counter {k}"
        );
    }
}

#[test]
fn config_for_four_worker_job() {
    let jobs = example_jobs();
    assert_eq!(jobs.jobs[0].workers.len(), 4);
    let cfg = generate_config(&jobs, &ConfigOptions::default()).unwrap();
    let lines: Vec<&str> = cfg.lines().collect();
    let has = |l: &str| lines.contains(&l);

    // Job table: id => token workers lanes slot_base slot_count mcast_grp job_index.
    assert!(has(
        "table_add SrIngress.sr_jobs SrIngress.sr_set_job 1 => 305419896 4 64 0 8 1 0"
    ));
    // Multicast group 1 with one node per worker: rid = 1 + rank, on the worker's port;
    // node handles 0..3 in creation order.
    assert!(has("mc_mgrp_create 1"));
    for rank in 0..4 {
        assert!(has(&format!("mc_node_create {} {}", rank + 1, rank + 1)));
        assert!(has(&format!("mc_node_associate 1 {rank}")));
        assert!(has(&format!(
            "table_add SrEgress.sr_mcast_dst SrEgress.sr_set_dst {} {} => 02:00:00:00:00:0{} 10.0.0.{} 40000",
            rank + 1,
            rank + 1,
            rank + 1,
            rank + 1
        )));
        assert!(has(&format!(
            "table_add SrIngress.sr_l2 SrIngress.sr_l2_forward 02:00:00:00:00:0{} => {}",
            rank + 1,
            rank + 1
        )));
    }
    // Every node create is followed by its association.
    let creates: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("mc_node_create"))
        .map(|(i, _)| i)
        .collect();
    for i in creates {
        assert!(lines[i + 1].starts_with("mc_node_associate 1 "));
    }
    // Slot reset: round, bitmap, count of both sets of slots 0..8 (indices 0..16), all
    // before the job entry makes the job visible.
    for reg in [names::REG_ROUND, names::REG_BITMAP, names::REG_COUNT] {
        let idx: BTreeSet<u32> = lines
            .iter()
            .filter_map(|l| l.strip_prefix(&format!("register_write {reg} ")))
            .map(|rest| {
                let (i, v) = rest.split_once(' ').unwrap();
                assert_eq!(v, "0");
                i.parse().unwrap()
            })
            .collect();
        assert_eq!(idx, (0..16).collect::<BTreeSet<u32>>(), "{reg}");
    }
    let job_line = lines
        .iter()
        .position(|l| l.starts_with("table_add SrIngress.sr_jobs"))
        .unwrap();
    let last_reset = lines
        .iter()
        .rposition(|l| l.starts_with("register_write"))
        .unwrap();
    assert!(last_reset < job_line);
    assert_eq!(lines.len(), 48 + 1 + 8 + 4 + 1 + 4);
    // No comments or blank lines: simple_switch_CLI reads every line as a command.
    assert!(lines.iter().all(|l| !l.is_empty() && !l.starts_with('#')));
}

#[test]
fn config_allocates_groups_and_rids_per_job() {
    let mut jobs = example_jobs();
    let mut second = jobs.jobs[0].clone();
    second.id = 9;
    second.slot_base = 8;
    second.slot_count = 2;
    for w in &mut second.workers {
        w.addr.set_port(40001);
    }
    jobs.jobs.push(second);
    let cfg = generate_config(&jobs, &ConfigOptions::default()).unwrap();
    assert!(cfg.contains(
        "table_add SrIngress.sr_jobs SrIngress.sr_set_job 9 => 305419896 4 64 8 2 2 1\n"
    ));
    assert!(cfg.contains("mc_mgrp_create 2\n"));
    // Second job: rids 33..36, node handles 4..7.
    assert!(cfg.contains("mc_node_create 33 1\nmc_node_associate 2 4\n"));
    assert!(cfg.contains("mc_node_create 36 4\nmc_node_associate 2 7\n"));
    assert!(cfg.contains(
        "table_add SrEgress.sr_mcast_dst SrEgress.sr_set_dst 36 4 => 02:00:00:00:00:04 10.0.0.4 40001\n"
    ));
    // Shared workers: one L2 entry per MAC.
    assert_eq!(
        cfg.matches("SrIngress.sr_l2_forward 02:00:00:00:00:01 ")
            .count(),
        1
    );
    // Second job's slots 8..10: register indices 16..20.
    assert!(cfg.contains("register_write SrIngress.sr_count 19 0\n"));
    assert!(!cfg.contains("register_write SrIngress.sr_count 20 0\n"));
}

#[test]
fn config_errors_are_clear() {
    let opts = ConfigOptions::default();
    let base = example_jobs();

    let mut j = base.clone();
    j.jobs[0].workers[2].mac = None;
    let e = generate_config(&j, &opts).unwrap_err();
    assert!(matches!(
        e,
        ConfigError::MissingField {
            job: 1,
            rank: 2,
            field: "mac"
        }
    ));
    assert!(e.to_string().contains("`mac`"), "{e}");

    let mut j = base.clone();
    j.jobs[0].workers[3].port = None;
    let e = generate_config(&j, &opts).unwrap_err();
    assert!(matches!(
        e,
        ConfigError::MissingField {
            rank: 3,
            field: "port",
            ..
        }
    ));

    let mut j = base.clone();
    j.jobs[0].workers[0].mac = Some("02:00:00:00:01".into());
    assert!(matches!(
        generate_config(&j, &opts),
        Err(ConfigError::BadWorker { rank: 0, .. })
    ));

    let mut j = base.clone();
    j.jobs[0].workers[0].port = Some(511);
    assert!(matches!(
        generate_config(&j, &opts),
        Err(ConfigError::BadWorker { .. })
    ));

    let mut j = base.clone();
    j.jobs[0].workers[1] = WorkerSpec {
        addr: "[fd00::2]:40000".parse().unwrap(),
        mac: Some("02:00:00:00:00:02".into()),
        port: Some(2),
    };
    assert!(matches!(
        generate_config(&j, &opts),
        Err(ConfigError::BadWorker { rank: 1, .. })
    ));

    let mut j = base.clone();
    j.jobs[0].lanes = 128;
    let e = generate_config(&j, &opts).unwrap_err();
    assert!(matches!(e, ConfigError::LanesMismatch { .. }));
    assert!(e.to_string().contains("p4 gen --lanes 128"), "{e}");
    // …and fine for a program generated for 128 lanes.
    assert!(generate_config(&j, &ConfigOptions { lanes: 128, ..opts }).is_ok());

    let mut j = base.clone();
    j.jobs.push(j.jobs[0].clone());
    assert!(matches!(
        generate_config(&j, &opts),
        Err(ConfigError::DuplicateJob(1))
    ));

    let mut j = base.clone();
    let mut other = j.jobs[0].clone();
    other.id = 2;
    other.slot_base = 7;
    j.jobs.push(other);
    assert!(matches!(
        generate_config(&j, &opts),
        Err(ConfigError::Overlap(1, 2))
    ));

    let mut j = base.clone();
    j.jobs[0].slot_count = sketchreduce_p4gen::POOL_SLOTS + 1;
    assert!(matches!(
        generate_config(&j, &opts),
        Err(ConfigError::Invalid(_))
    ));

    let mut j = base.clone();
    let mut other = j.jobs[0].clone();
    other.id = 2;
    other.slot_base = 100;
    other.workers[0].port = Some(7);
    j.jobs.push(other);
    assert!(matches!(
        generate_config(&j, &opts),
        Err(ConfigError::MacConflict { a: 1, b: 7, .. })
    ));

    assert!(matches!(
        generate_config(&JobFile::default(), &opts),
        Err(ConfigError::NoJobs)
    ));
}

// ---------------------------------------------------------------------------------------------
// Real tools, when present.
// ---------------------------------------------------------------------------------------------

/// Prints a skip notice straight to the process's stderr, bypassing libtest's output capture,
/// so a skipped check is visible in a plain `cargo test` run.
macro_rules! skip {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

fn on_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::env::temp_dir().join(format!("srp4-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Compiles `p4/sketchreduce.p4` for bmv2/v1model into `out`; returns the JSON path.
fn compile(out: &Path) -> PathBuf {
    let program = p4_dir().join(PROGRAM_FILE);
    let o = Command::new("p4c")
        .args(["--target", "bmv2", "--arch", "v1model", "-o"])
        .arg(out)
        .arg(&program)
        .output()
        .expect("running p4c");
    assert!(
        o.status.success(),
        "p4c failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let json = out.join("sketchreduce.json");
    assert!(json.is_file(), "p4c did not write {}", json.display());
    json
}

#[test]
fn p4c_compiles_if_available() {
    if on_path("p4c").is_none() {
        skip!("skipped: p4c not found (p4c_compiles_if_available)");
        return;
    }
    let dir = temp_dir("p4c");
    let json = compile(&dir);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).expect("bmv2 JSON");
    let listed = |section: &str| -> Vec<String> {
        v[section]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let regs = listed("register_arrays");
    for r in [names::REG_ROUND, names::REG_BITMAP, names::REG_COUNT] {
        assert!(regs.iter().any(|n| n == r), "{r} not in {regs:?}");
    }
    let ctrs = listed("counter_arrays");
    for c in [
        names::CTR_GLOBAL,
        names::CTR_JOB,
        names::CTR_TX,
        names::CTR_TX_MCAST,
    ] {
        assert!(ctrs.iter().any(|n| n == c), "{c} not in {ctrs:?}");
    }
    let actions = listed("actions");
    for a in [names::SET_JOB, names::L2_FORWARD, names::SET_DST] {
        assert!(actions.iter().any(|n| n == a), "{a} not in {actions:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- end-to-end through simple_switch -------------------------------------------------------

const NS_SWITCH: &str = "srp4-sw";
const SWITCH_IP: &str = "10.0.0.254";
const SWITCH_MAC: &str = "02:00:00:00:00:fe";
const E2E_WORKERS: usize = 4;
const THRIFT_PORT: &str = "9090";

fn ns_worker(rank: usize) -> String {
    format!("srp4-w{}", rank + 1)
}

fn sh(args: &[&str]) -> Result<String, String> {
    let o = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

fn can_create_netns() -> bool {
    let name = format!("srp4-probe-{}", std::process::id());
    if sh(&["ip", "netns", "add", &name]).is_err() {
        return false;
    }
    let _ = sh(&["ip", "netns", "del", &name]);
    true
}

/// Namespaces, veths and the switch process; torn down on drop.
struct Testbed {
    switch: Option<std::process::Child>,
}

impl Testbed {
    fn teardown_namespaces() {
        let _ = sh(&["ip", "netns", "del", NS_SWITCH]);
        for r in 0..E2E_WORKERS {
            let _ = sh(&["ip", "netns", "del", &ns_worker(r)]);
        }
    }

    fn up(json: &Path, log: &Path) -> Testbed {
        Self::teardown_namespaces();
        let mut tb = Testbed { switch: None };
        let run = |args: &[&str]| sh(args).unwrap_or_else(|e| panic!("{e}"));
        run(&["ip", "netns", "add", NS_SWITCH]);
        run(&["ip", "-n", NS_SWITCH, "link", "set", "lo", "up"]);
        let mut ifaces = Vec::new();
        for r in 0..E2E_WORKERS {
            let ns = ns_worker(r);
            let sw_if = format!("srp4-s{}", r + 1);
            let host_if = format!("srp4-h{}", r + 1);
            let mac = format!("02:00:00:00:00:0{}", r + 1);
            let ip = format!("10.0.0.{}/24", r + 1);
            run(&["ip", "netns", "add", &ns]);
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            run(&[
                "ip", "link", "add", &sw_if, "type", "veth", "peer", "name", &host_if,
            ]);
            run(&["ip", "link", "set", &sw_if, "netns", NS_SWITCH]);
            run(&["ip", "link", "set", &host_if, "netns", &ns]);
            run(&["ip", "-n", &ns, "link", "set", &host_if, "address", &mac]);
            run(&["ip", "-n", &ns, "addr", "add", &ip, "dev", &host_if]);
            run(&["ip", "-n", &ns, "link", "set", &host_if, "up"]);
            run(&["ip", "-n", NS_SWITCH, "link", "set", &sw_if, "up"]);
            run(&[
                "ip",
                "-n",
                &ns,
                "neigh",
                "replace",
                SWITCH_IP,
                "lladdr",
                SWITCH_MAC,
                "dev",
                &host_if,
                "nud",
                "permanent",
            ]);
            // Checksum offload on veths leaves partial checksums; not needed, but keeps
            // captures readable. Best effort (ethtool may be absent).
            let _ = sh(&[
                "ip", "netns", "exec", &ns, "ethtool", "-K", &host_if, "tx", "off",
            ]);
            ifaces.push(format!("{}@{sw_if}", r + 1));
        }
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            NS_SWITCH,
            "simple_switch",
            "--thrift-port",
            THRIFT_PORT,
        ]);
        for i in &ifaces {
            cmd.args(["-i", i]);
        }
        cmd.arg("--log-file").arg(log).arg(json);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        tb.switch = Some(cmd.spawn().expect("starting simple_switch"));
        // Wait for the Thrift server.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = tb.switch.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "simple_switch exited at start ({status}); see {}",
                    log.display()
                );
            }
            let out = cli(NS_SWITCH, "show_ports\n");
            if out.as_ref().is_ok_and(|o| !o.contains("Could not connect")) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "simple_switch did not come up: {out:?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        tb
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Some(mut c) = self.switch.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        Self::teardown_namespaces();
    }
}

/// Runs simple_switch_CLI in namespace `ns` with `input` on stdin; returns its stdout.
fn cli(ns: &str, input: &str) -> Result<String, String> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "simple_switch_CLI",
            "--thrift-port",
            THRIFT_PORT,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .map_err(|e| e.to_string())?;
    let o = child.wait_with_output().map_err(|e| e.to_string())?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    if o.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// Job file of the e2e test: job 1 for the clean run, job 2 (other slots, other UDP port) for
/// the run with loss.
fn e2e_jobs() -> JobFile {
    let job = |id: u16, slot_base: u32, udp: u16| sketchreduce_wire::JobSpec {
        id,
        epoch: 0x5eed_0000 + id as u32,
        lanes: DEFAULT_LANES,
        slot_base,
        slot_count: 4,
        workers: (0..E2E_WORKERS)
            .map(|r| WorkerSpec {
                addr: format!("10.0.0.{}:{udp}", r + 1).parse().unwrap(),
                mac: Some(format!("02:00:00:00:00:0{}", r + 1)),
                port: Some(r as u16 + 1),
            })
            .collect(),
    };
    JobFile {
        jobs: vec![job(1, 0, 40000), job(2, 16, 40001)],
    }
}

/// Starts the worker processes of `job` (one per namespace) and waits for them.
fn run_workers(job: &sketchreduce_wire::JobSpec, chunks: u32, window: u32) -> Result<(), String> {
    let exe = std::env::current_exe().unwrap();
    let mut kids = Vec::new();
    for (rank, w) in job.workers.iter().enumerate() {
        let child = Command::new("ip")
            .args(["netns", "exec", &ns_worker(rank)])
            .arg(&exe)
            .args([
                "--exact",
                "e2e_worker_process",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SRP4_RANK", rank.to_string())
            .env("SRP4_WORKERS", job.workers.len().to_string())
            .env("SRP4_JOB", job.id.to_string())
            .env("SRP4_EPOCH", job.epoch.to_string())
            .env("SRP4_SLOT_BASE", job.slot_base.to_string())
            .env("SRP4_WINDOW", window.to_string())
            .env("SRP4_CHUNKS", chunks.to_string())
            .env("SRP4_BIND", w.addr.to_string())
            .env("SRP4_SWITCH", SWITCH_IP)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        kids.push(child);
    }
    let mut failures = Vec::new();
    for (rank, k) in kids.into_iter().enumerate() {
        let o = k.wait_with_output().map_err(|e| e.to_string())?;
        let out = String::from_utf8_lossy(&o.stdout);
        if !o.status.success() || !out.contains("SRP4-WORKER-OK") {
            failures.push(format!(
                "worker {rank}: {}\n{out}\n{}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            ));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

#[test]
fn bmv2_e2e_if_available() {
    for tool in ["simple_switch", "simple_switch_CLI"] {
        if on_path(tool).is_none() {
            skip!("skipped: {tool} not found (bmv2_e2e_if_available)");
            return;
        }
    }
    if on_path("p4c").is_none() {
        skip!("skipped: p4c not found, needed to compile the program (bmv2_e2e_if_available)");
        return;
    }
    if on_path("ip").is_none() || !can_create_netns() {
        skip!(
            "skipped: cannot create network namespaces (needs iproute2 and root/CAP_NET_ADMIN) \
             (bmv2_e2e_if_available)"
        );
        return;
    }
    let dir = temp_dir("e2e");
    let json = compile(&dir);
    let jobs = e2e_jobs();
    let config = generate_config(&jobs, &ConfigOptions::default()).unwrap();
    let _tb = Testbed::up(&json, &dir.join("switch.log"));
    let out = cli(NS_SWITCH, &config).unwrap_or_else(|e| panic!("simple_switch_CLI: {e}"));
    let lower = out.to_ascii_lowercase();
    assert!(
        !lower.contains("error") && !lower.contains("invalid"),
        "loading the config failed:\n{out}"
    );

    // Clean run: 32 chunks over a window of 4 slots (8 rounds per slot, both sets).
    run_workers(&jobs.jobs[0], 32, 4).unwrap_or_else(|e| panic!("clean run: {e}"));

    // Lossy run: drop ~20% of sketchreduce datagrams in both directions on worker 0's link.
    let ns = ns_worker(0);
    let nft = |rule: &str| sh(&["ip", "netns", "exec", &ns, "nft", rule]);
    let rules = [
        "add table inet srp4loss",
        "add chain inet srp4loss out { type filter hook output priority 0 ; }",
        "add chain inet srp4loss in { type filter hook input priority 0 ; }",
        "add rule inet srp4loss out udp dport 39424-39439 numgen random mod 10 < 2 drop",
        "add rule inet srp4loss in udp sport 39424-39439 numgen random mod 10 < 2 drop",
    ];
    let setup: Result<Vec<String>, String> = if on_path("nft").is_some() {
        rules.iter().map(|r| nft(r)).collect()
    } else {
        Err("nft not found".into())
    };
    match setup {
        Ok(_) => run_workers(&jobs.jobs[1], 32, 4).unwrap_or_else(|e| panic!("lossy run: {e}")),
        Err(e) => skip!("skipped: lossy e2e run, cannot install the nftables drop rule: {e}"),
    }

    // The counters are readable and saw the traffic.
    let out = cli(
        NS_SWITCH,
        &format!("counter_read {} 9\n", names::CTR_GLOBAL),
    )
    .unwrap();
    assert!(out.contains("packets="), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn env_u32(name: &str) -> u32 {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} not set"))
        .parse()
        .unwrap()
}

/// Contribution of `rank` to lane `i` of chunk `k` (values near u32::MAX to exercise wrapping).
fn contribution(rank: u32, k: u32, i: u32) -> u32 {
    (rank + 1)
        .wrapping_mul(0x9E37_79B9)
        .wrapping_add(k.wrapping_mul(0x85EB_CA6B))
        .wrapping_add(i.wrapping_mul(0xC2B2_AE35))
}

fn op_of(k: u32) -> Op {
    match k % 3 {
        0 => Op::Add,
        1 => Op::Or,
        _ => Op::Max,
    }
}

/// One worker of the e2e test, run by `bmv2_e2e_if_available` inside a worker namespace with
/// its parameters in `SRP4_*` variables. Not a test by itself (hence ignored).
#[test]
#[ignore = "helper process of bmv2_e2e_if_available; needs SRP4_* variables"]
fn e2e_worker_process() {
    let rank = env_u32("SRP4_RANK");
    let workers = env_u32("SRP4_WORKERS");
    let job = env_u32("SRP4_JOB") as u16;
    let epoch = env_u32("SRP4_EPOCH");
    let base = env_u32("SRP4_SLOT_BASE");
    let window = env_u32("SRP4_WINDOW");
    let chunks = env_u32("SRP4_CHUNKS");
    let bind: SocketAddr = std::env::var("SRP4_BIND").unwrap().parse().unwrap();
    let switch_ip: std::net::IpAddr = std::env::var("SRP4_SWITCH").unwrap().parse().unwrap();
    let lanes = DEFAULT_LANES as u32;
    let full = if workers == 32 {
        u32::MAX
    } else {
        (1u32 << workers) - 1
    };

    let sock = UdpSocket::bind(bind).expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let header = |kind: Kind, k: u32| {
        let slot = base + k % window;
        let round = k / window;
        Header {
            kind,
            op: op_of(k),
            rank: rank as u8,
            job,
            lanes: if kind == Kind::Data { lanes as u16 } else { 0 },
            epoch,
            slot,
            set: (round & 1) as u8,
            count: 0,
            flags: 0,
            round,
            offset: k,
            bitmap: 0,
        }
    };
    let send = |k: u32| {
        let h = header(Kind::Data, k);
        let vals: Vec<u32> = (0..lanes).map(|i| contribution(rank, k, i)).collect();
        let mut buf = vec![0u8; h.packet_len()];
        let n = build(&h, &vals, &mut buf).expect("lane count");
        let port = sketchreduce_wire::DEFAULT_DATA_PORT + (h.slot % 16) as u16;
        // An nftables drop in the output hook fails the send with EPERM: that is a loss.
        let _ = sock.send_to(&buf[..n], SocketAddr::new(switch_ip, port));
    };
    let expected = |k: u32, i: u32| -> u32 {
        let op = op_of(k);
        let mut acc = contribution(0, k, i);
        for r in 1..workers {
            acc = op.apply(acc, contribution(r, k, i));
        }
        acc
    };

    // Chunk k may be sent once chunk k - window (same slot, previous round) is done.
    let mut done = vec![false; chunks as usize];
    let mut sent_at: Vec<Option<Instant>> = vec![None; chunks as usize];
    let mut next = 0u32;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 2048];
    let mut resends = 0u32;
    while done.iter().any(|d| !d) {
        assert!(
            Instant::now() < deadline,
            "rank {rank}: timed out; done {done:?}"
        );
        while next < chunks && (next < window || done[(next - window) as usize]) {
            send(next);
            sent_at[next as usize] = Some(Instant::now());
            next += 1;
        }
        match sock.recv_from(&mut buf) {
            Ok((n, _from)) => {
                let p = Packet::new_checked(&buf[..n]).expect("well-formed reply");
                let h = Header::parse(&p).expect("valid reply header");
                assert_eq!(h.kind, Kind::Result, "unexpected reply {h:?}");
                let k = h.offset;
                if k >= chunks || done[k as usize] {
                    continue; // a duplicate RESULT (multicast + unicast after a resend)
                }
                assert_eq!(h.job, job);
                assert_eq!(h.slot, base + k % window);
                assert_eq!(h.round, k / window);
                assert_eq!(h.count as u32, workers);
                assert_eq!(h.bitmap, full);
                assert_eq!(h.lanes as u32, lanes);
                for (i, got) in p.lanes().enumerate() {
                    assert_eq!(
                        got,
                        expected(k, i as u32),
                        "rank {rank}, chunk {k}, lane {i}, op {:?}",
                        op_of(k)
                    );
                }
                done[k as usize] = true;
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("recv: {e}"),
        }
        for k in 0..next {
            if let Some(t) = sent_at[k as usize] {
                if !done[k as usize] && t.elapsed() > Duration::from_millis(150) {
                    send(k);
                    resends += 1;
                    sent_at[k as usize] = Some(Instant::now());
                }
            }
        }
    }

    // PROBE the first slot's last round: a STATUS with the full bitmap.
    if rank == 0 {
        let last = ((chunks - 1) / window) * window;
        let h = header(Kind::Probe, last);
        let mut pb = vec![0u8; h.packet_len()];
        let n = build(&h, &[], &mut pb).expect("probe");
        let port = sketchreduce_wire::DEFAULT_DATA_PORT + (h.slot % 16) as u16;
        let mut ok = false;
        for _ in 0..50 {
            let _ = sock.send_to(&pb[..n], SocketAddr::new(switch_ip, port));
            let t = Instant::now();
            while t.elapsed() < Duration::from_millis(100) {
                if let Ok((m, _)) = sock.recv_from(&mut buf) {
                    let p = Packet::new_checked(&buf[..m]).expect("well-formed reply");
                    let s = Header::parse(&p).expect("valid reply header");
                    if s.kind == Kind::Status {
                        assert_eq!(s.round, h.round);
                        assert_eq!(s.count as u32, workers);
                        assert_eq!(s.bitmap, full);
                        ok = true;
                        break;
                    }
                }
            }
            if ok {
                break;
            }
        }
        assert!(ok, "no STATUS answer to a PROBE");
    }
    println!("SRP4-WORKER-OK rank {rank} chunks {chunks} resends {resends}");
}
