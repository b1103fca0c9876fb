//! End-to-end through bmv2 with hand-rolled workers and the offline configuration
//! (`sketchreduce p4 config`): the switch runs the compiled program, `simple_switch_CLI` loads
//! the generated commands, and 4 worker processes (this binary re-executed in namespaces,
//! plain UDP sockets and the wire crate's packets) push 32 chunks through 4 slots (8 rounds,
//! ops ADD/OR/MAX), checking every lane against an independent reference; then a second job
//! with 20 % random loss on one link (nftables), so retransmissions, duplicates and unicast
//! RESULTs happen. The switch's counters are read back through the CLI and checked against
//! what the workers did.
//!
//! Needs p4c, simple_switch, simple_switch_CLI and root; otherwise prints `skipped: …`.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{Topology, SWITCH_IP};
use sketchreduce_p4gen::cli_output;
use sketchreduce_p4gen::runtime::{Runtime, SwitchCli};
use sketchreduce_p4gen::{counters, generate_config, names, ConfigOptions, DEFAULT_LANES};
use sketchreduce_wire::packet::build;
use sketchreduce_wire::{DropReason, Header, JobFile, JobSpec, Kind, Op, Packet, WorkerSpec};

const WORKERS: usize = 4;
const CHUNKS: u32 = 32;
const WINDOW: u32 = 4;

/// Job 1 for the clean run, job 2 (other slots, other UDP port) for the run with loss.
fn jobs() -> JobFile {
    let job = |id: u16, slot_base: u32, udp: u16| JobSpec {
        id,
        epoch: 0x5eed_0000 + id as u32,
        lanes: DEFAULT_LANES,
        slot_base,
        slot_count: WINDOW,
        workers: (0..WORKERS)
            .map(|r| WorkerSpec {
                addr: SocketAddr::new(Topology::worker_ip(r).into(), udp),
                mac: Some(Topology::worker_mac(r)),
                port: Some(Topology::worker_port(r)),
            })
            .collect(),
    };
    JobFile {
        jobs: vec![job(1, 0, 40000), job(2, 16, 40001)],
    }
}

fn cli(t: &Topology) -> SwitchCli {
    let mut c = SwitchCli::new(common::THRIFT_PORT);
    c.program = ["ip", "netns", "exec", &t.ns_switch(), "simple_switch_CLI"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    c
}

/// Runs the workers of `job` and waits for them.
fn run_workers(t: &mut Topology, job: &JobSpec, tag: &str) -> Result<Vec<String>, String> {
    let mut helpers = Vec::new();
    for (rank, w) in job.workers.iter().enumerate() {
        let env = [
            ("SRP4_RANK", rank.to_string()),
            ("SRP4_WORKERS", job.workers.len().to_string()),
            ("SRP4_JOB", job.id.to_string()),
            ("SRP4_EPOCH", job.epoch.to_string()),
            ("SRP4_SLOT_BASE", job.slot_base.to_string()),
            ("SRP4_BIND", w.addr.to_string()),
        ];
        let ns = t.ns_worker(rank);
        helpers.push(t.start(
            &ns,
            "raw_worker_process",
            &format!("{tag}-worker{rank}"),
            &env,
        )?);
    }
    let mut logs = Vec::new();
    let mut errors = Vec::new();
    for h in helpers {
        match h.wait(Duration::from_secs(180), "SRP4-WORKER-OK") {
            Ok(l) => logs.push(l),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(logs)
    } else {
        Err(format!("{}\n{}", errors.join("\n"), t.logs()))
    }
}

/// Reads `name[index]` (packets) through the CLI.
fn counter(c: &mut SwitchCli, name: &str, index: u32) -> u64 {
    let cmd = format!("counter_read {name} {index}");
    let out = c
        .run(std::slice::from_ref(&cmd))
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    cli_output::counter(&cmd, &out[0])
        .unwrap_or_else(|e| panic!("{e}"))
        .packets
}

#[test]
fn bmv2_raw_workers_if_available() {
    if let Some(why) = common::bmv2_missing() {
        skip!("skipped: {why} (bmv2_raw_workers_if_available)");
        return;
    }
    let _heavy = common::heavy();
    let dir = common::temp_dir("raw");
    let json = common::compile(&dir, DEFAULT_LANES).unwrap_or_else(|e| panic!("{e}"));
    let mut t = Topology::up(common::Switch::Bmv2 { json }, WORKERS, &dir)
        .unwrap_or_else(|e| panic!("{e}"));
    let jobs = jobs();
    let config = generate_config(&jobs, &ConfigOptions::default()).unwrap();
    let commands: Vec<String> = config.lines().map(str::to_string).collect();
    let mut c = cli(&t);
    c.run(&commands)
        .unwrap_or_else(|e| panic!("loading the configuration: {e}\n{}", t.logs()));

    // Clean run.
    run_workers(&mut t, &jobs.jobs[0], "clean").unwrap_or_else(|e| panic!("clean run: {e}"));
    // Every DATA of the clean run was accepted exactly once per (chunk, rank) and every chunk
    // completed once; nothing was dropped but, if bmv2 was slow enough for a worker to resend,
    // duplicates. (Counters of job index 0.)
    let mut job0 = |k: u32| counter(&mut c, names::CTR_JOB, k);
    assert_eq!(
        job0(counters::JOB_DATA_IN),
        (CHUNKS as usize * WORKERS) as u64
    );
    assert_eq!(job0(counters::JOB_COMPLETIONS), CHUNKS as u64);
    for r in DropReason::ALL {
        if r != DropReason::Duplicate {
            assert_eq!(job0(r as u32), 0, "clean run: {} drops", r.name());
        }
    }
    assert_eq!(
        counter(&mut c, names::CTR_TX_MCAST, 0),
        (CHUNKS as usize * WORKERS) as u64
    );

    // Run with loss on worker 0's link.
    match t.add_loss(0, 20) {
        Ok(()) => {
            run_workers(&mut t, &jobs.jobs[1], "lossy")
                .unwrap_or_else(|e| panic!("lossy run: {e}"));
            let base = sketchreduce_p4gen::JOB_COUNTER_STRIDE;
            assert_eq!(
                counter(&mut c, names::CTR_JOB, base + counters::JOB_COMPLETIONS),
                CHUNKS as u64
            );
        }
        Err(e) => skip!("skipped: lossy run, cannot install the nftables rules: {e}"),
    }

    // Global counters: packets in = every datagram the workers sent (at least the clean
    // run's), packets out ≥ RESULT replicas and the PROBE's STATUS.
    let pin = counter(&mut c, names::CTR_GLOBAL, counters::GLOBAL_PACKETS_IN);
    let pout = counter(&mut c, names::CTR_TX, counters::TX_PACKETS_OUT);
    assert!(pin > (CHUNKS as usize * WORKERS) as u64, "packets in {pin}");
    assert!(
        pout > (CHUNKS as usize * WORKERS) as u64,
        "packets out {pout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
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

/// The reference result of lane `i` of chunk `k`: the op folded over every rank in u64/u32
/// arithmetic written out here, not through the wire crate.
fn expected(workers: u32, k: u32, i: u32) -> u32 {
    let vals = (0..workers).map(|r| contribution(r, k, i));
    match op_of(k) {
        Op::Add => (vals.map(u64::from).sum::<u64>() % (1u64 << 32)) as u32,
        Op::Or => vals.fold(0, |a, v| a | v),
        Op::Max => vals.max().unwrap_or(0),
    }
}

/// One worker of `bmv2_raw_workers_if_available`, run in a worker namespace with its
/// parameters in `SRP4_*` variables. Not a test by itself (hence ignored).
#[test]
#[ignore = "helper process of bmv2_raw_workers_if_available"]
fn raw_worker_process() {
    if !common::is_helper() {
        return;
    }
    let rank: u32 = common::env("SRP4_RANK");
    let workers: u32 = common::env("SRP4_WORKERS");
    let job: u16 = common::env("SRP4_JOB");
    let epoch: u32 = common::env("SRP4_EPOCH");
    let base: u32 = common::env("SRP4_SLOT_BASE");
    let bind: SocketAddr = common::env("SRP4_BIND");
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
        let slot = base + k % WINDOW;
        let round = k / WINDOW;
        Header {
            op: op_of(k),
            lanes: if kind == Kind::Data { lanes as u16 } else { 0 },
            offset: k,
            ..Header::request(kind, job, epoch, rank as u8, slot, round)
        }
    };
    let switch = |slot: u32| {
        SocketAddr::new(
            SWITCH_IP.into(),
            sketchreduce_wire::DEFAULT_DATA_PORT + (slot % 16) as u16,
        )
    };
    let send = |k: u32| {
        let h = header(Kind::Data, k);
        let vals: Vec<u32> = (0..lanes).map(|i| contribution(rank, k, i)).collect();
        let mut buf = vec![0u8; h.packet_len()];
        let n = build(&h, &vals, &mut buf).expect("lane count");
        // An nftables drop in the output hook fails the send with EPERM: that is a loss.
        let _ = sock.send_to(&buf[..n], switch(h.slot));
    };

    // Chunk k may be sent once chunk k - WINDOW (same slot, previous round) is done.
    let mut done = vec![false; CHUNKS as usize];
    let mut sent_at: Vec<Option<Instant>> = vec![None; CHUNKS as usize];
    let mut next = 0u32;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut buf = [0u8; 2048];
    let mut resends = 0u32;
    while done.iter().any(|d| !d) {
        assert!(
            Instant::now() < deadline,
            "rank {rank}: timed out; done {done:?}"
        );
        while next < CHUNKS && (next < WINDOW || done[(next - WINDOW) as usize]) {
            send(next);
            sent_at[next as usize] = Some(Instant::now());
            next += 1;
        }
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                assert_eq!(
                    from.ip(),
                    std::net::IpAddr::from(SWITCH_IP),
                    "reply from {from}"
                );
                let p = Packet::new_checked(&buf[..n]).expect("well-formed reply");
                let h = Header::parse(&p).expect("valid reply header");
                assert_eq!(h.kind, Kind::Result, "unexpected reply {h:?}");
                let k = h.offset;
                if k >= CHUNKS || done[k as usize] {
                    continue; // a duplicate RESULT (multicast + unicast after a resend)
                }
                assert_eq!(h.job, job);
                assert_eq!(h.epoch, epoch);
                assert_eq!(h.slot, base + k % WINDOW);
                assert_eq!(h.round, k / WINDOW);
                assert_eq!(h.count as u32, workers);
                assert_eq!(h.bitmap, full);
                assert_eq!(h.flags, 0);
                assert_eq!(h.lanes as u32, lanes);
                for (i, got) in p.lanes().enumerate() {
                    assert_eq!(
                        got,
                        expected(workers, k, i as u32),
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
                if !done[k as usize] && t.elapsed() > Duration::from_millis(300) {
                    send(k);
                    resends += 1;
                    sent_at[k as usize] = Some(Instant::now());
                }
            }
        }
    }

    // PROBE the first slot's last round: a STATUS with the full bitmap, to this rank's
    // registered address.
    if rank == 0 {
        let last = ((CHUNKS - 1) / WINDOW) * WINDOW;
        let h = header(Kind::Probe, last);
        let mut pb = vec![0u8; h.packet_len()];
        let n = build(&h, &[], &mut pb).expect("probe");
        let mut ok = false;
        for _ in 0..50 {
            let _ = sock.send_to(&pb[..n], switch(h.slot));
            let t = Instant::now();
            while t.elapsed() < Duration::from_millis(200) {
                if let Ok((m, _)) = sock.recv_from(&mut buf) {
                    let p = Packet::new_checked(&buf[..m]).expect("well-formed reply");
                    let s = Header::parse(&p).expect("valid reply header");
                    if s.kind == Kind::Status {
                        assert_eq!(s.round, h.round);
                        assert_eq!(s.count as u32, workers);
                        assert_eq!(s.bitmap, full);
                        assert_eq!(s.flags, 0);
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
    println!("SRP4-WORKER-OK rank {rank} chunks {CHUNKS} resends {resends}");
}
