//! `sketchreduce p4 control`'s control plane through real processes, without bmv2: the
//! runtime CLI is `tests/fixtures/fake_simple_switch_CLI.py`, a Python `cmd.Cmd` loop like
//! the real `simple_switch_CLI` (same prompts, same reply texts, state kept in a file between
//! runs). This exercises what the unit tests cannot: spawning the CLI, piping commands,
//! splitting real transcripts, the control protocol v2 endpoint (create, join, replace,
//! unregister, counters, leases from counter activity) over TCP, refusals, and undoing a job
//! when the CLI reports an error halfway. Needs python3 (else `skipped: …`).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sketchreduce_control::{Client, ClientError, ServerConfig};
use sketchreduce_p4gen::control::{start, ControlOptions, Running, StartError};
use sketchreduce_p4gen::portmap::PortMap;
use sketchreduce_p4gen::runtime::SwitchCli;
use sketchreduce_wire::control::ErrorKind;
use sketchreduce_wire::{JobSpec, WorkerSpec};

const PORTS: &str = r#"{"hosts": [
    {"ip": "10.0.0.1", "mac": "02:00:00:00:00:01", "port": 1},
    {"ip": "10.0.0.2", "mac": "02:00:00:00:00:02", "port": 2},
    {"ip": "10.0.0.3", "mac": "02:00:00:00:00:03", "port": 3},
    {"ip": "10.0.0.254", "mac": "02:00:00:00:00:fe", "port": 0}]}"#;

struct Fake {
    dir: PathBuf,
}

impl Fake {
    fn state(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(self.dir.join("state.json")).unwrap())
            .unwrap()
    }

    /// Entries of `table`, as the `table_add` lines that made them (modifications applied).
    fn entries(&self, table: &str) -> Vec<String> {
        let s = self.state();
        let mut v: Vec<String> = s["entries"]
            .as_object()
            .unwrap()
            .values()
            .filter_map(|e| e.as_str())
            .filter(|e| e.starts_with(&format!("{table} ")))
            .map(str::to_string)
            .collect();
        v.sort();
        v
    }

    /// Handles of the entries of `table`.
    fn handles(&self, table: &str) -> Vec<String> {
        let s = self.state();
        s["entries"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, v)| v.as_str().unwrap_or("").starts_with(&format!("{table} ")))
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn count(&self, what: &str) -> usize {
        self.state()[what].as_object().unwrap().len()
    }

    /// Makes `name[index]` read `packets` (a stand-in for traffic), whatever the CLI wrote.
    fn set_counter(&self, name: &str, index: u32, packets: u64) {
        let path = self.dir.join("counters.json");
        let mut m: serde_json::Value = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_else(|| serde_json::json!({}));
        m[format!("{name}[{index}]")] = packets.into();
        // Atomically: CLI runs read it at any time.
        let tmp = self.dir.join("counters.json.tmp");
        std::fs::write(&tmp, m.to_string()).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    fn clear_counters(&self) {
        let _ = std::fs::remove_file(self.dir.join("counters.json"));
    }

    fn fail(&self, prefix: Option<&str>) {
        let f = self.dir.join("fail");
        match prefix {
            Some(p) => std::fs::write(f, p).unwrap(),
            None => {
                let _ = std::fs::remove_file(f);
            }
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

fn fake_cli(dir: &Path) -> SwitchCli {
    let mut cli = SwitchCli::new(9090);
    cli.program = vec![
        "env".into(),
        format!("FAKE_BMV2_STATE={}", dir.join("state.json").display()),
        format!(
            "FAKE_BMV2_PROGRAM={}",
            fixtures().join("program-64.json").display()
        ),
        format!("FAKE_BMV2_FAIL_FILE={}", dir.join("fail").display()),
        format!("FAKE_BMV2_LOG={}", dir.join("log").display()),
        format!("FAKE_BMV2_COUNTERS={}", dir.join("counters.json").display()),
        "python3".into(),
        fixtures()
            .join("fake_simple_switch_CLI.py")
            .display()
            .to_string(),
    ];
    cli.timeout = Duration::from_secs(30);
    cli
}

fn options(dir: &Path, jobs: Vec<JobSpec>) -> ControlOptions<SwitchCli> {
    ControlOptions {
        runtime: fake_cli(dir),
        ports: PortMap::parse(PORTS).unwrap(),
        listen: "127.0.0.1:0".parse().unwrap(),
        secret: None,
        jobs,
        server: ServerConfig {
            sweep_interval: Duration::from_millis(100),
            ..Default::default()
        },
    }
}

fn launch(dir: &Path) -> Running<SwitchCli> {
    start(options(dir, Vec::new())).unwrap_or_else(|e| panic!("starting the control plane: {e}"))
}

fn spec(id: u16, base: u32, hosts: &[u8]) -> JobSpec {
    JobSpec {
        id,
        epoch: 0,
        lanes: 64,
        slot_base: base,
        slot_count: 8,
        workers: hosts
            .iter()
            .map(|h| WorkerSpec::at(format!("10.0.0.{h}:4000{h}").parse().unwrap()))
            .collect(),
    }
}

fn refused(r: Result<u32, ClientError>) -> (ErrorKind, String) {
    match r {
        Err(ClientError::Refused { kind, message }) => (kind, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn setup(tag: &str) -> Option<(Fake, Running<SwitchCli>, Client)> {
    if common::on_path("python3").is_none() {
        skip!("skipped: python3 not found ({tag})");
        return None;
    }
    let dir = common::temp_dir(tag);
    let running = launch(&dir);
    let addr: SocketAddr = running.local_addr();
    let client = Client::connect(addr, None, Duration::from_secs(30)).expect("connect");
    Some((Fake { dir }, running, client))
}

#[test]
fn p4_control_jobs_through_the_cli() {
    let Some((fake, _running, mut c)) = setup("fake-jobs") else {
        return;
    };
    assert!(
        fake.log().starts_with("reset_state\nwrite_config_to_file "),
        "the switch is reset first: {}",
        fake.log()
    );
    assert_eq!(
        fake.entries("SrIngress.sr_l2").len(),
        4,
        "one L2 entry per host"
    );

    let info = c.info().unwrap();
    assert_eq!(
        (
            info.version,
            info.data_port,
            info.data_ports,
            info.slots,
            info.max_lanes
        ),
        (2, 39424, 16, 1024, 64)
    );
    assert_eq!(
        (info.max_workers, info.max_jobs, info.auth),
        (32, 64, false)
    );

    // Create: every entry, with the handles the CLI gave.
    let e1 = c.create(&spec(3, 0, &[2, 1]), false, 60_000).unwrap();
    assert_eq!(
        fake.entries("SrIngress.sr_jobs"),
        [format!(
            "SrIngress.sr_jobs SrIngress.sr_set_job 3 => {e1} 2 64 0 8 1 0"
        )]
    );
    assert_eq!(
        fake.entries("SrIngress.sr_ranks"),
        [
            "SrIngress.sr_ranks SrIngress.sr_set_rank 3 0 => 02:00:00:00:00:02 10.0.0.2 40002 2",
            "SrIngress.sr_ranks SrIngress.sr_set_rank 3 1 => 02:00:00:00:00:01 10.0.0.1 40001 1"
        ]
    );
    assert_eq!(fake.entries("SrEgress.sr_mcast_dst").len(), 2);
    let s = fake.state();
    assert_eq!(s["groups"]["1"].as_array().unwrap().len(), 2);
    assert_eq!(
        s["registers"]["SrIngress.sr_count[15]"], 0,
        "slot 7, set 1 reset"
    );
    // Join returns the spec as created, with its epoch.
    let j = c.join(3).unwrap();
    assert_eq!(j.epoch, e1);
    assert_eq!(j.workers, spec(3, 0, &[2, 1]).workers);

    // Counters come from the switch's counter arrays (job index 0: sr_job 0..16).
    fake.set_counter("SrIngress.sr_job", 10, 5); // data_in
    fake.set_counter("SrIngress.sr_job", 9, 2); // bad_source
    fake.set_counter("SrIngress.sr_global", 10, 77); // packets_in
    fake.set_counter("SrEgress.sr_tx_mcast", 0, 6);
    let k = c.counters().unwrap();
    assert_eq!(k.packets_in, 77);
    let jc = k.job(3).unwrap();
    assert_eq!((jc.data_in, jc.drops[9], jc.results_multicast), (5, 2, 6));

    // Refusals: not in the port map, another lane count, an overlap.
    let (kind, m) = refused(c.create(&spec(4, 100, &[9]), false, 60_000));
    assert_eq!(kind, ErrorKind::Invalid, "{m}");
    assert!(m.contains("10.0.0.9"), "{m}");
    let mut s32 = spec(5, 200, &[1]);
    s32.lanes = 32;
    let (kind, m) = refused(c.create(&s32, false, 60_000));
    assert_eq!(kind, ErrorKind::Invalid, "{m}");
    assert!(m.contains("compiled for exactly 64"), "{m}");
    assert_eq!(fake.entries("SrIngress.sr_jobs").len(), 1);

    // A CLI error halfway: the job is refused and nothing of it stays on the switch.
    let before = (
        fake.count("entries"),
        fake.count("nodes"),
        fake.count("groups"),
    );
    fake.fail(Some(
        "table_add SrIngress.sr_ranks SrIngress.sr_set_rank 6 1",
    ));
    let (kind, m) = refused(c.create(&spec(6, 300, &[1, 3]), false, 60_000));
    assert_eq!(kind, ErrorKind::Internal, "{m}");
    assert!(m.contains("Invalid table operation"), "{m}");
    fake.fail(None);
    assert_eq!(
        (
            fake.count("entries"),
            fake.count("nodes"),
            fake.count("groups")
        ),
        before
    );
    assert!(matches!(
        c.join(6),
        Err(ClientError::Refused {
            kind: ErrorKind::UnknownJob,
            ..
        })
    ));

    // Replace: same job entry (handle), new epoch and parameters; counters restart.
    let handle_before = fake.handles("SrIngress.sr_jobs");
    fake.clear_counters();
    let e2 = c.create(&spec(3, 16, &[1, 2, 3]), true, 60_000).unwrap();
    assert_ne!(e2, e1);
    assert_eq!(
        fake.entries("SrIngress.sr_jobs"),
        [format!(
            "SrIngress.sr_jobs SrIngress.sr_set_job 3 => {e2} 3 64 16 8 1 0"
        )]
    );
    let handle_after = fake.handles("SrIngress.sr_jobs");
    assert_eq!(
        handle_before, handle_after,
        "the job entry is modified, not re-added"
    );
    assert_eq!(fake.entries("SrIngress.sr_ranks").len(), 3);
    assert_eq!(fake.state()["nodes"].as_object().unwrap().len(), 3);
    assert_eq!(c.counters().unwrap().job(3).unwrap().data_in, 0);
    let log = fake.log();
    let modify = log
        .rfind("table_modify SrIngress.sr_jobs")
        .expect("table_modify");
    let first_modify = log[..modify]
        .rfind("table_modify SrIngress.sr_jobs")
        .expect("the epoch is switched first");
    assert!(log[first_modify..].contains(&format!("=> {e2} 2 64 0 8 1 0")));

    // Unregister: nothing of the job remains; the L2 entries do.
    c.unregister(3, e2).unwrap();
    assert!(fake.entries("SrIngress.sr_jobs").is_empty());
    assert!(fake.entries("SrIngress.sr_ranks").is_empty());
    assert!(fake.entries("SrEgress.sr_mcast_dst").is_empty());
    assert_eq!((fake.count("nodes"), fake.count("groups")), (0, 0));
    assert_eq!(fake.entries("SrIngress.sr_l2").len(), 4);
    let _ = std::fs::remove_dir_all(&fake.dir);
}

const LEASE_MS: u64 = 3000;

/// Leases on bmv2 follow the job's counter activity as read through the CLI: a job whose
/// data_in + probes keep changing stays, an idle one is unregistered from the switch.
#[test]
fn p4_control_leases_follow_counter_activity() {
    let Some((fake, _running, mut c)) = setup("fake-leases") else {
        return;
    };
    // Leases well above the time a create takes through the CLI (the lease clock starts when
    // the request arrives).
    let idle = c.create(&spec(7, 0, &[1]), false, LEASE_MS).unwrap();
    let busy = c.create(&spec(8, 100, &[2]), false, LEASE_MS).unwrap();
    assert!(idle != 0 && busy != 0);
    // Job 8 has index 1: its data_in is sr_job[16 + 10]. Traffic keeps bumping it (on a
    // thread, so that it goes on while this thread waits for the control plane).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bumper = {
        let stop = stop.clone();
        let dir = fake.dir.clone();
        std::thread::spawn(move || {
            let fake = Fake { dir };
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                fake.set_counter("SrIngress.sr_job", 26, n);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    // The idle job goes (within many leases), the busy one stays.
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.join(7).is_ok() {
        assert!(Instant::now() < deadline, "an idle job did not expire");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Both were created together with the same lease: only the traffic differs.
    assert_eq!(c.join(8).unwrap().epoch, busy, "a job with traffic expired");
    let jobs = fake.entries("SrIngress.sr_jobs");
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert!(jobs[0].contains("sr_set_job 8 =>"));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    bumper.join().unwrap();
    // Once idle, job 8 expires too.
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.join(8).is_ok() {
        assert!(Instant::now() < deadline, "an idle job did not expire");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(fake.entries("SrIngress.sr_jobs").is_empty());
    let _ = std::fs::remove_dir_all(&fake.dir);
}

/// Static jobs (`p4 control --jobs`): installed at start with their explicit epoch, no lease,
/// and not replaceable or removable through the endpoint. And the startup check: no secret on
/// a non-loopback address is refused before the switch is touched.
#[test]
fn p4_control_static_jobs_and_startup_checks() {
    if common::on_path("python3").is_none() {
        skip!("skipped: python3 not found (p4_control_static_jobs_and_startup_checks)");
        return;
    }
    let dir = common::temp_dir("fake-static");
    let mut o = options(&dir, Vec::new());
    o.listen = "10.0.0.254:39440".parse().unwrap();
    match start(o) {
        Err(StartError::Config(m)) => assert!(m.contains("secret"), "{m}"),
        other => panic!("no secret on a non-loopback address: {other:?}"),
    }
    assert!(
        !dir.join("log").exists(),
        "the switch was touched before the check"
    );

    let mut job = spec(9, 32, &[1, 3]);
    job.epoch = 0x1234_5678;
    let running = start(options(&dir, vec![job.clone()])).unwrap();
    let mut c = Client::connect(running.local_addr(), None, Duration::from_secs(30)).unwrap();
    assert_eq!(c.join(9).unwrap().epoch, 0x1234_5678);
    let fake = Fake { dir: dir.clone() };
    assert_eq!(
        fake.entries("SrIngress.sr_jobs"),
        ["SrIngress.sr_jobs SrIngress.sr_set_job 9 => 305419896 2 64 32 8 1 0"]
    );
    let (kind, _) = refused(c.create(&job, true, 60_000));
    assert_eq!(kind, ErrorKind::Conflict);
    assert!(matches!(
        c.unregister(9, 0x1234_5678),
        Err(ClientError::Refused {
            kind: ErrorKind::Conflict,
            ..
        })
    ));
    assert_eq!(fake.entries("SrIngress.sr_jobs").len(), 1);
    // A static job the switch cannot hold stops the start, naming the job.
    let mut bad = spec(10, 64, &[7]);
    bad.epoch = 5;
    match start(options(&dir, vec![bad])) {
        Err(StartError::Config(m)) => assert!(m.contains("job 10"), "{m}"),
        other => panic!("a static job on an unknown host: {other:?}"),
    }
    drop(running);
    let _ = std::fs::remove_dir_all(&dir);
}
