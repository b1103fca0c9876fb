//! Conformance of both switches to docs/wire.md ("Conformance"), one test per rule and switch:
//! `p4_<rule>` runs it against bmv2 (the compiled program, driven by the bmv2 control plane
//! of `sketchreduce p4 control`), `emu_<rule>` against the software switch, with the same
//! packets and the same expectations. The bmv2 tests need p4c, simple_switch,
//! simple_switch_CLI and root (else `skipped: …`); the emulator tests need root.
//!
//! Each test builds a topology (common/mod.rs) with two worker namespaces, starts the
//! switch's control plane in the switch namespace, and runs a prober (this binary
//! re-executed in worker namespace 1) that creates jobs over the control protocol (HMAC
//! authenticated), sends crafted datagrams from real UDP sockets, and checks every reply
//! (source, every header field, lanes) and the exact change of every counter.

mod common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::{control_addr, Switch, Topology, SWITCH_IP};
use sketchreduce_control::{Client, ClientError, Secret};
use sketchreduce_wire::control::ErrorKind;
use sketchreduce_wire::packet::{build, NACK_BAD_EPOCH, NACK_UNKNOWN_JOB};
use sketchreduce_wire::{
    Counters, DropReason, Header, JobCounters, JobSpec, Kind, Op, Packet, WorkerSpec,
    DEFAULT_DATA_PORT,
};

// ---------------------------------------------------------------------------------------------
// The tests: one per rule and switch.
// ---------------------------------------------------------------------------------------------

macro_rules! rules {
    ($($rule:ident),* $(,)?) => {
        mod p4 {
            $(
                #[test]
                fn $rule() {
                    super::run_bmv2(stringify!($rule));
                }
            )*
        }
        mod emu {
            $(
                #[test]
                fn $rule() {
                    super::run_emulator(stringify!($rule));
                }
            )*
        }
        /// Runs rule `name` in the prober.
        fn dispatch(name: &str, p: &mut Prober) {
            match name {
                $(stringify!($rule) => $rule(p),)*
                other => panic!("no rule {other}"),
            }
        }
    };
}

rules!(
    ipv4_options,
    malformed_fields,
    request_flags_and_set,
    ingress_order,
    nack_unknown_job_and_bad_epoch,
    source_check,
    first_contribution,
    result_headers,
    counters_semantics,
    lane_counts,
    jobs_are_isolated,
    rounds_and_sets,
    control_endpoint,
);

static JSON: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The program compiled once per test binary.
fn program_json() -> Result<PathBuf, String> {
    JSON.get_or_init(|| {
        common::compile(
            &common::temp_dir("conf-p4c"),
            sketchreduce_p4gen::DEFAULT_LANES,
        )
    })
    .clone()
}

fn run_bmv2(rule: &str) {
    if let Some(why) = common::bmv2_missing() {
        skip!("skipped: {why} (p4::{rule})");
        return;
    }
    let _heavy = common::heavy();
    let json = program_json().unwrap_or_else(|e| panic!("{e}"));
    run(rule, Switch::Bmv2 { json });
}

fn run_emulator(rule: &str) {
    if !common::can_create_netns() {
        skip!("skipped: cannot create network namespaces (needs iproute2 and root) (emu::{rule})");
        return;
    }
    let _heavy = common::heavy();
    run(rule, Switch::Emulator);
}

fn run(rule: &str, switch: Switch) {
    let dir = common::temp_dir(&format!("conf-{rule}"));
    let bmv2 = matches!(switch, Switch::Bmv2 { .. });
    let mut t = Topology::up(switch, 2, &dir).unwrap_or_else(|e| panic!("{e}"));
    let sw = t.ns_switch();
    if bmv2 {
        // Worker 2's namespace also holds worker 1's address: the prober sends from there to
        // show that bmv2 checks the switch port too.
        let h2 = format!("{}h2", t.tag);
        common::sh(&[
            "ip",
            "-n",
            &t.ns_worker(1),
            "addr",
            "add",
            "10.0.0.1/32",
            "dev",
            &h2,
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let ports = t.port_map_json();
        t.spawn(
            &sw,
            "control_process",
            "p4-control",
            &[("SRP4_PORTS", ports)],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    } else {
        t.spawn(&sw, "emulator_process", "emulator", &[])
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let ns1 = t.ns_worker(0);
    let env = [
        ("SRP4_RULE", rule.to_string()),
        ("SRP4_BMV2", (bmv2 as u8).to_string()),
        (
            "SRP4_SPOOF_NS",
            format!("/var/run/netns/{}", t.ns_worker(1)),
        ),
    ];
    let prober = t
        .start(&ns1, "prober_process", &format!("prober-{rule}"), &env)
        .unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = prober.wait(Duration::from_secs(240), "SRP4-PROBER-OK") {
        panic!("{rule}: {e}\n{}", t.logs());
    }
    drop(t);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// Helper processes.
// ---------------------------------------------------------------------------------------------

/// The software switch on the switch address, until killed.
#[test]
#[ignore = "helper process of the emu:: conformance tests"]
fn emulator_process() {
    if common::is_helper() {
        common::serve_emulator();
    }
}

/// The bmv2 control plane on the switch address, until killed.
#[test]
#[ignore = "helper process of the p4:: tests"]
fn control_process() {
    if common::is_helper() {
        common::serve_bmv2_control();
    }
}

/// The prober: runs rule `SRP4_RULE` from worker namespace 1.
#[test]
#[ignore = "helper process of the conformance tests"]
fn prober_process() {
    if !common::is_helper() {
        return;
    }
    let rule: String = common::env("SRP4_RULE");
    let mut p = Prober::connect(common::env::<u8>("SRP4_BMV2") == 1);
    dispatch(&rule, &mut p);
    println!("SRP4-PROBER-OK {rule}");
}

// ---------------------------------------------------------------------------------------------
// The prober's tools.
// ---------------------------------------------------------------------------------------------

/// How long to wait for a reply that must come, and to make sure none comes.
const REPLY: Duration = Duration::from_secs(3);
const QUIET: Duration = Duration::from_millis(400);
const LANES: u16 = 64;

struct Prober {
    bmv2: bool,
    /// The switch's data port range (`info`): slot `s` goes to `data_port + s % data_ports`.
    ports: (u16, u16),
    ctl: Client,
    /// Rank sockets: 10.0.0.1:41000 + i.
    socks: Vec<UdpSocket>,
}

fn worker_addr(i: usize) -> SocketAddr {
    SocketAddr::new(Topology::worker_ip(0).into(), 41000 + i as u16)
}

impl Prober {
    fn connect(bmv2: bool) -> Prober {
        // Waits for the control plane (bmv2's resets the switch first).
        let mut ctl = common::control_client();
        let info = ctl.info().expect("info");
        let socks = (0..4)
            .map(|i| {
                let s = UdpSocket::bind(worker_addr(i)).expect("bind");
                s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                s
            })
            .collect();
        Prober {
            bmv2,
            ports: (info.data_port, info.data_ports),
            ctl,
            socks,
        }
    }

    /// A job of `n` workers on this host's sockets 0..n, slots `base..base + 4`.
    fn spec(&self, id: u16, base: u32, n: usize) -> JobSpec {
        JobSpec {
            id,
            epoch: 0,
            lanes: LANES,
            slot_base: base,
            slot_count: 4,
            workers: (0..n).map(|i| WorkerSpec::at(worker_addr(i))).collect(),
        }
    }

    fn create(&mut self, spec: &JobSpec) -> u32 {
        self.ctl
            .create(spec, false, 60_000)
            .unwrap_or_else(|e| panic!("create job {}: {e}", spec.id))
    }

    fn counters(&mut self) -> Counters {
        self.ctl.counters().expect("counters")
    }

    /// Sends `h` (with `lanes` values) from socket `from` to the data port of its slot.
    fn send(&self, from: usize, h: &Header, lanes: &[u32]) {
        send_on(&self.socks[from], h, lanes, self.ports);
    }

    /// The next datagram on socket `at` within `wait`, with its source.
    fn recv(&self, at: usize, wait: Duration) -> Option<(SocketAddr, Vec<u8>)> {
        recv_on(&self.socks[at], wait)
    }

    /// The one reply expected on socket `at`: from the switch, well-formed.
    fn reply(&self, at: usize, what: &str) -> (Header, Vec<u32>) {
        let (from, bytes) = self
            .recv(at, REPLY)
            .unwrap_or_else(|| panic!("{what}: no reply on {}", worker_addr(at)));
        assert_eq!(
            from.ip(),
            IpAddr::from(SWITCH_IP),
            "{what}: reply from {from}"
        );
        let port = from.port();
        assert!(
            (DEFAULT_DATA_PORT..DEFAULT_DATA_PORT + 16).contains(&port),
            "{what}: reply from port {port}"
        );
        let p = Packet::new_checked(&bytes[..]).unwrap_or_else(|e| panic!("{what}: {e}"));
        let h = Header::parse(&p).unwrap_or_else(|e| panic!("{what}: {e}"));
        h.check_reply().unwrap_or_else(|e| panic!("{what}: {e}"));
        (h, p.lanes().collect())
    }

    /// Asserts that nothing arrives on any socket for a while.
    fn quiet(&self, what: &str) {
        for (i, _) in self.socks.iter().enumerate() {
            let wait = if i == 0 {
                QUIET
            } else {
                Duration::from_millis(20)
            };
            if let Some((from, b)) = self.recv(i, wait) {
                panic!(
                    "{what}: unexpected datagram of {} bytes from {from} on socket {i}",
                    b.len()
                );
            }
        }
    }
}

/// Sends `h` from `s` to the switch's data port for its slot (`ports`: first port, count).
fn send_on(s: &UdpSocket, h: &Header, lanes: &[u32], ports: (u16, u16)) {
    let mut buf = vec![0u8; h.packet_len()];
    let n = build(h, lanes, &mut buf).expect("build");
    let port = ports.0 + (h.slot % ports.1.max(1) as u32) as u16;
    let to = SocketAddr::new(SWITCH_IP.into(), port);
    s.send_to(&buf[..n], to).expect("send");
}

fn recv_on(s: &UdpSocket, wait: Duration) -> Option<(SocketAddr, Vec<u8>)> {
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        match s.recv_from(&mut buf) {
            Ok((n, from)) => return Some((from, buf[..n].to_vec())),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("recv: {e}"),
        }
    }
    None
}

/// A DATA header of rank `rank` for job `id`.
fn data(id: u16, epoch: u32, rank: u8, slot: u32, round: u32, offset: u32) -> Header {
    Header {
        lanes: LANES,
        offset,
        ..Header::request(Kind::Data, id, epoch, rank, slot, round)
    }
}

/// A PROBE header (no lanes).
fn probe(id: u16, epoch: u32, rank: u8, slot: u32, round: u32) -> Header {
    Header {
        kind: Kind::Probe,
        lanes: 0,
        offset: 0x0bad_cafe,
        ..data(id, epoch, rank, slot, round, 0)
    }
}

/// Lane values of a contribution (near u32::MAX, so sums wrap).
fn values(seed: u32) -> Vec<u32> {
    (0..LANES as u32)
        .map(|i| {
            seed.wrapping_mul(0x9E37_79B9)
                .wrapping_add(i.wrapping_mul(0x85EB_CA6B))
        })
        .collect()
}

/// Counter changes, field by field.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Delta {
    packets_in: u64,
    packets_out: u64,
    drops: [u64; DropReason::COUNT],
    job: JobCounters,
}

fn delta(before: &Counters, after: &Counters, job: u16) -> Delta {
    let jb = before.job(job).copied().unwrap_or_default();
    let ja = after.job(job).copied().unwrap_or_default();
    let mut d = Delta {
        packets_in: after.packets_in - before.packets_in,
        packets_out: after.packets_out - before.packets_out,
        ..Default::default()
    };
    for i in 0..DropReason::COUNT {
        d.drops[i] = after.drops[i] - before.drops[i];
        d.job.drops[i] = ja.drops[i].wrapping_sub(jb.drops[i]);
    }
    d.job.data_in = ja.data_in - jb.data_in;
    d.job.completions = ja.completions - jb.completions;
    d.job.results_multicast = ja.results_multicast - jb.results_multicast;
    d.job.results_unicast = ja.results_unicast - jb.results_unicast;
    d.job.probes = ja.probes - jb.probes;
    d
}

/// Drops by reason, as an array.
fn drops(list: &[(DropReason, u64)]) -> [u64; DropReason::COUNT] {
    let mut a = [0; DropReason::COUNT];
    for (r, n) in list {
        a[*r as usize] += n;
    }
    a
}

// ---------------------------------------------------------------------------------------------
// The rules.
// ---------------------------------------------------------------------------------------------

/// IPv4 header with options (IHL ≠ 5): counted in packets_in and as a global `malformed`
/// drop, nothing sent, even though the datagram is otherwise a valid PROBE.
fn ipv4_options(p: &mut Prober) {
    let epoch = p.create(&p.spec(11, 0, 2));
    // Rank 0's socket sends with IP options (NOP, NOP, NOP, EOL: IHL 6), so that nothing but
    // the options is wrong with the datagram.
    use std::os::fd::AsRawFd;
    let fd = p.socks[0].as_raw_fd();
    let set_options = |opts: &[u8]| {
        // SAFETY: plain setsockopt on an open socket with a valid buffer and length.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_OPTIONS,
                opts.as_ptr().cast(),
                opts.len() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "IP_OPTIONS: {}", std::io::Error::last_os_error());
    };
    set_options(&[1, 1, 1, 0]);
    let before = p.counters();
    p.send(0, &probe(11, epoch, 0, 0, 0), &[]);
    p.quiet("PROBE with IP options");
    set_options(&[]);
    let d = delta(&before, &p.counters(), 11);
    assert_eq!(
        d,
        Delta {
            packets_in: 1,
            drops: drops(&[(DropReason::Malformed, 1)]),
            ..Default::default()
        }
    );
}

/// Malformed: a datagram shorter than the header, shorter or longer than its lanes, with
/// version ≠ 2, kind ∉ 1..4, op > 2, set > 1, a DATA/RESULT without lanes or a PROBE/STATUS
/// with lanes: a global `malformed` drop each, nothing sent, and the slot untouched.
fn malformed_fields(p: &mut Prober) {
    let epoch = p.create(&p.spec(20, 0, 2));
    let good = data(20, epoch, 0, 0, 0, 0);
    let mut full = vec![0u8; good.packet_len()];
    build(&good, &values(50), &mut full).unwrap();
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("10 bytes", full[..10].to_vec()),
        ("header only, lanes announced", full[..32].to_vec()),
        ("one lane short", full[..full.len() - 4].to_vec()),
        ("4 trailing bytes", [&full[..], &[0, 0, 0, 0]].concat()),
    ];
    for (what, at, v) in [
        ("version 1", 0, 1u8),
        ("version 3", 0, 3),
        ("kind 0", 1, 0),
        ("kind 5", 1, 5),
        ("op 3", 2, 3),
        ("set 2", 16, 2),
    ] {
        let mut b = full.clone();
        b[at] = v;
        cases.push((what, b));
    }
    // A DATA without lanes and a PROBE with lanes (lengths consistent with the lane field).
    let mut b = full[..32].to_vec();
    b[6..8].copy_from_slice(&0u16.to_be_bytes());
    cases.push(("DATA with 0 lanes", b));
    let mut b = full.clone();
    b[1] = Kind::Probe as u8;
    cases.push(("PROBE with lanes", b));
    let before = p.counters();
    let to = SocketAddr::new(SWITCH_IP.into(), p.ports.0);
    for (what, b) in &cases {
        p.socks[0]
            .send_to(b, to)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    p.quiet("malformed datagrams");
    let d = delta(&before, &p.counters(), 20);
    assert_eq!(
        d,
        Delta {
            packets_in: cases.len() as u64,
            drops: drops(&[(DropReason::Malformed, cases.len() as u64)]),
            ..Default::default()
        },
        "{:?}",
        cases.iter().map(|c| c.0).collect::<Vec<_>>()
    );
    p.send(0, &probe(20, epoch, 0, 0, 0), &[]);
    let (s, _) = p.reply(0, "STATUS");
    assert_eq!(
        (s.count, s.bitmap),
        (0, 0),
        "a malformed DATA changed the slot"
    );
}

/// Ingress order: a datagram failing several checks is counted for the first one, in the
/// order unknown_job → bad_epoch → bad_rank → bad_source → bad_slot → bad_kind → bad_lanes
/// (malformed before all of them).
fn ingress_order(p: &mut Prober) {
    let epoch = p.create(&p.spec(21, 4, 2));
    let wrong = epoch ^ 0x00f0_0001;
    // Socket 3 is no rank's: every datagram from it also fails the source check.
    let base = |kind: Kind, lanes: u16| Header {
        kind,
        lanes,
        ..data(21, epoch, 0, 4, 0, 0)
    };
    // (what, header, reason, counted per job)
    let cases: Vec<(&str, Header, DropReason, bool)> = vec![
        (
            "malformed + unknown job",
            Header {
                job: 99,
                flags: 1,
                ..base(Kind::Data, 32)
            },
            DropReason::Malformed,
            false,
        ),
        (
            "unknown job + bad epoch + bad rank + bad source",
            Header {
                job: 99,
                epoch: 1,
                rank: 7,
                ..base(Kind::Data, 32)
            },
            DropReason::UnknownJob,
            false,
        ),
        (
            "bad epoch + bad rank + bad source + bad slot + bad kind + bad lanes",
            Header {
                epoch: wrong,
                rank: 7,
                slot: 0,
                ..base(Kind::Result, 32)
            },
            DropReason::BadEpoch,
            true,
        ),
        (
            "bad rank + bad source + bad slot",
            Header {
                rank: 7,
                slot: 0,
                ..base(Kind::Data, 32)
            },
            DropReason::BadRank,
            true,
        ),
        (
            "bad source + bad slot + bad kind",
            Header {
                slot: 0,
                ..base(Kind::Result, 32)
            },
            DropReason::BadSource,
            true,
        ),
    ];
    for (what, h, reason, per_job) in &cases {
        let before = p.counters();
        let v: Vec<u32> = (0..h.lanes as u32).collect();
        p.send(3, h, &v);
        p.quiet(what);
        let d = delta(&before, &p.counters(), 21);
        let mut expect = Delta {
            packets_in: 1,
            ..Default::default()
        };
        if *per_job {
            expect.job.drops = drops(&[(*reason, 1)]);
        } else {
            expect.drops = drops(&[(*reason, 1)]);
        }
        assert_eq!(d, expect, "{what}");
    }
    // From rank 0's own socket: bad_slot before bad_kind before bad_lanes.
    for (what, h, reason) in [
        (
            "bad slot + bad kind + bad lanes",
            Header {
                slot: 0,
                ..base(Kind::Result, 32)
            },
            DropReason::BadSlot,
        ),
        (
            "bad kind + bad lanes",
            base(Kind::Result, 32),
            DropReason::BadKind,
        ),
        ("bad lanes", base(Kind::Data, 32), DropReason::BadLanes),
    ] {
        let before = p.counters();
        let v: Vec<u32> = (0..h.lanes as u32).collect();
        p.send(0, &h, &v);
        p.quiet(what);
        let d = delta(&before, &p.counters(), 21);
        assert_eq!(d.job.drops, drops(&[(reason, 1)]), "{what}");
    }
}

/// Requests (DATA, PROBE) with flags ≠ 0, or set ≠ round & 1, are malformed: no reply (not
/// even a NACK), a global `malformed` drop each.
fn request_flags_and_set(p: &mut Prober) {
    let epoch = p.create(&p.spec(12, 0, 2));
    let before = p.counters();
    let v = values(1);
    p.send(
        0,
        &Header {
            flags: 1,
            ..data(12, epoch, 0, 0, 0, 0)
        },
        &v,
    );
    p.send(
        0,
        &Header {
            flags: 0x8000,
            ..probe(12, epoch, 0, 0, 0)
        },
        &[],
    );
    // A PROBE of an unknown job with flags: still malformed, so no NACK either.
    p.send(
        0,
        &Header {
            flags: NACK_UNKNOWN_JOB,
            ..probe(999, 1, 0, 0, 0)
        },
        &[],
    );
    p.send(
        0,
        &Header {
            set: 1,
            ..data(12, epoch, 0, 0, 0, 0)
        },
        &v,
    );
    p.send(
        0,
        &Header {
            set: 0,
            ..probe(12, epoch, 0, 1, 1)
        },
        &[],
    );
    p.quiet("malformed requests");
    let d = delta(&before, &p.counters(), 12);
    assert_eq!(
        d,
        Delta {
            packets_in: 5,
            drops: drops(&[(DropReason::Malformed, 5)]),
            ..Default::default()
        }
    );
    // The slot is untouched: a valid PROBE shows no contribution.
    p.send(0, &probe(12, epoch, 0, 0, 0), &[]);
    let (s, _) = p.reply(0, "STATUS");
    assert_eq!((s.kind, s.count, s.bitmap), (Kind::Status, 0, 0));
}

/// A PROBE for a job that is not registered, or registered with another epoch, is answered
/// with a NACK STATUS to the probe's source: the probe's header with kind STATUS, count,
/// bitmap, round and lanes 0 and the NACK bit in flags. The drop is counted (unknown_job
/// globally, bad_epoch for the job) and the NACK counts as a datagram sent. A DATA in the
/// same situation gets nothing.
fn nack_unknown_job_and_bad_epoch(p: &mut Prober) {
    let epoch = p.create(&p.spec(13, 0, 2));
    let wrong = epoch ^ 0x5a5a_0001;
    // From a socket that is no rank's: a NACK goes to the source, whoever it is.
    for (job, ep, flag, reason, rank) in [
        (999u16, 77u32, NACK_UNKNOWN_JOB, DropReason::UnknownJob, 3u8),
        (13, wrong, NACK_BAD_EPOCH, DropReason::BadEpoch, 1),
    ] {
        let before = p.counters();
        let pr = Header {
            round: 6,
            set: 0,
            ..probe(job, ep, rank, 2, 6)
        };
        p.send(3, &pr, &[]);
        let (h, lanes) = p.reply(3, "NACK");
        assert!(lanes.is_empty());
        assert_eq!(
            h,
            Header {
                kind: Kind::Status,
                count: 0,
                bitmap: 0,
                round: 0,
                lanes: 0,
                set: pr.set,
                flags: flag,
                ..pr
            },
            "NACK for job {job}"
        );
        p.quiet("after the NACK");
        // A DATA in the same situation: dropped, nothing sent.
        p.send(3, &data(job, ep, rank, 2, 0, 0), &values(2));
        p.quiet("DATA of an unknown job / bad epoch");
        let d = delta(&before, &p.counters(), 13);
        let mut want = Delta {
            packets_in: 2,
            packets_out: 1,
            ..Default::default()
        };
        if reason == DropReason::UnknownJob {
            want.drops = drops(&[(reason, 2)]);
        } else {
            want.job.drops = drops(&[(reason, 2)]);
        }
        assert_eq!(d, want, "{}", reason.name());
    }
}

/// bad_source: a datagram for a rank from another address (here another UDP port of the
/// rank's host) is dropped and counted for the job, after bad_rank and before bad_slot. On
/// bmv2 the switch port is checked too: the rank's address and port, but from another
/// switch port, is bad_source.
fn source_check(p: &mut Prober) {
    let epoch = p.create(&p.spec(14, 0, 2));
    let before = p.counters();
    // Socket 2 is no rank's; socket 1 is rank 1's, not rank 0's.
    p.send(2, &data(14, epoch, 0, 0, 0, 0), &values(3));
    p.send(1, &data(14, epoch, 0, 0, 0, 0), &values(3));
    p.send(2, &probe(14, epoch, 1, 0, 0), &[]);
    // bad_rank comes first, bad_slot after.
    p.send(2, &data(14, epoch, 7, 0, 0, 0), &values(3));
    p.send(2, &data(14, epoch, 0, 100, 0, 0), &values(3));
    p.quiet("datagrams from the wrong source");
    let d = delta(&before, &p.counters(), 14);
    assert_eq!(
        d,
        Delta {
            packets_in: 5,
            job: JobCounters {
                drops: drops(&[(DropReason::BadSource, 4), (DropReason::BadRank, 1)]),
                ..Default::default()
            },
            ..Default::default()
        }
    );
    if p.bmv2 {
        // Rank 0's exact address, sent from worker 2's namespace (switch port 2, while the
        // port map puts 10.0.0.1 on port 1).
        let spoof = socket_in_namespace(&common::env::<String>("SRP4_SPOOF_NS"), worker_addr(0));
        let before = p.counters();
        send_on(&spoof, &data(14, epoch, 0, 0, 0, 0), &values(3), p.ports);
        p.quiet("datagram from another switch port");
        let d = delta(&before, &p.counters(), 14);
        assert_eq!(d.packets_in, 1);
        assert_eq!(d.job.drops, drops(&[(DropReason::BadSource, 1)]));
        assert_eq!(d.job.data_in, 0);
    }
    // From the right place it is accepted.
    p.send(0, &data(14, epoch, 0, 0, 0, 0), &values(3));
    p.send(0, &probe(14, epoch, 0, 0, 0), &[]);
    let (s, _) = p.reply(0, "STATUS");
    assert_eq!((s.count, s.bitmap), (1, 1));
}

/// A UDP socket created in network namespace `ns_path` (a thread enters it; the socket stays
/// in it), bound to `addr`.
fn socket_in_namespace(ns_path: &str, addr: SocketAddr) -> UdpSocket {
    let path = ns_path.to_string();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns on a valid namespace fd affects only this thread.
        let rc = unsafe {
            use std::os::fd::AsRawFd;
            libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET)
        };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr} in {path}: {e}"))
    })
    .join()
    .expect("namespace thread")
}

/// The first contribution of a round sets lanes = the packet's, bitmap = 1 << rank and
/// count = 1, whatever the set held (also after a round on the other set).
fn first_contribution(p: &mut Prober) {
    let epoch = p.create(&p.spec(15, 0, 3));
    // Rank 2 first on slot 1, round 0 (fresh registers).
    p.send(2, &data(15, epoch, 2, 1, 0, 0), &values(4));
    p.send(2, &probe(15, epoch, 2, 1, 0), &[]);
    let (s, _) = p.reply(2, "STATUS after rank 2's first contribution");
    assert_eq!((s.count, s.bitmap, s.round), (1, 0b100, 0));
    // Complete round 0, then rank 1 starts round 2 on the same set: its contribution alone.
    p.send(0, &data(15, epoch, 0, 1, 0, 0), &values(5));
    p.send(1, &data(15, epoch, 1, 1, 0, 0), &values(6));
    for i in 0..3 {
        let (r, _) = p.reply(i, "RESULT of round 0");
        assert_eq!(r.kind, Kind::Result);
    }
    p.send(1, &data(15, epoch, 1, 1, 2, 1), &values(7));
    p.send(1, &probe(15, epoch, 1, 1, 2), &[]);
    let (s, _) = p.reply(1, "STATUS after rank 1 starts round 2");
    assert_eq!((s.count, s.bitmap, s.round), (1, 0b010, 2));
    // And the lanes are its alone: complete the round and compare.
    p.send(0, &data(15, epoch, 0, 1, 2, 1), &values(8));
    p.send(2, &data(15, epoch, 2, 1, 2, 1), &values(9));
    let (_, lanes) = p.reply(0, "RESULT of round 2");
    let want: Vec<u32> = (0..LANES as usize)
        .map(|i| {
            values(7)[i]
                .wrapping_add(values(8)[i])
                .wrapping_add(values(9)[i])
        })
        .collect();
    assert_eq!(lanes, want);
}

/// RESULT headers. On completion: the completing packet's header with kind RESULT,
/// count = N, bitmap = full, flags = 0, and the aggregate, to every registered address. To a
/// rank that retransmits into a complete set: the retransmitted packet's header (its rank
/// and offset) with the stored lanes, count = N, bitmap = full, flags = 0, to that rank
/// only.
fn result_headers(p: &mut Prober) {
    let epoch = p.create(&p.spec(16, 0, 3));
    let ops = [Op::Add, Op::Or, Op::Max];
    for (slot, op) in ops.iter().enumerate() {
        let slot = slot as u32;
        let contrib: Vec<Header> = (0..3u8)
            .map(|r| Header {
                op: *op,
                ..data(16, epoch, r, slot, 0, 100 + 10 * slot + r as u32)
            })
            .collect();
        let vals: Vec<Vec<u32>> = (0..3).map(|r| values(20 + r as u32 + 3 * slot)).collect();
        let want: Vec<u32> = (0..LANES as usize)
            .map(|i| op.apply(op.apply(vals[0][i], vals[1][i]), vals[2][i]))
            .collect();
        // Ranks 2, 0, then 1 completes.
        for r in [2usize, 0, 1] {
            p.send(r, &contrib[r], &vals[r]);
        }
        for at in 0..3 {
            let (h, lanes) = p.reply(at, "multicast RESULT");
            assert_eq!(
                h,
                Header {
                    kind: Kind::Result,
                    count: 3,
                    bitmap: 0b111,
                    flags: 0,
                    ..contrib[1]
                },
                "multicast RESULT ({op:?}) at rank {at}"
            );
            assert_eq!(lanes, want, "aggregate ({op:?})");
        }
        p.quiet("after the multicast");
        // Rank 2 lost its RESULT and retransmits.
        p.send(2, &contrib[2], &values(999));
        let (h, lanes) = p.reply(2, "unicast RESULT");
        assert_eq!(
            h,
            Header {
                kind: Kind::Result,
                count: 3,
                bitmap: 0b111,
                flags: 0,
                ..contrib[2]
            },
            "unicast RESULT ({op:?})"
        );
        assert_eq!(lanes, want, "stored lanes, not the retransmission's");
        p.quiet("only the retransmitting rank gets the unicast RESULT");
    }
}

/// Counter semantics (docs/wire.md "Counters"): after a scripted sequence, every counter
/// moved by exactly what the definitions say.
fn counters_semantics(p: &mut Prober) {
    let epoch = p.create(&p.spec(17, 0, 2));
    let before = p.counters();
    let v = values(30);
    // Round 0 on slot 0: rank 0, a duplicate, rank 1 (completion: 2 replicas).
    p.send(0, &data(17, epoch, 0, 0, 0, 0), &v);
    p.send(0, &data(17, epoch, 0, 0, 0, 0), &v);
    p.send(1, &data(17, epoch, 1, 0, 0, 0), &v);
    p.reply(0, "RESULT");
    p.reply(1, "RESULT");
    // A retransmission after completion: one unicast.
    p.send(1, &data(17, epoch, 1, 0, 0, 0), &v);
    p.reply(1, "unicast RESULT");
    // Round 2 on the same set, then a delayed round-0 packet: stale.
    p.send(0, &data(17, epoch, 0, 0, 2, 1), &v);
    p.send(1, &data(17, epoch, 1, 0, 0, 0), &v);
    // A PROBE (answered), a RESULT and a STATUS sent to the switch (bad_kind), wrong rank,
    // wrong slot, wrong lane count.
    p.send(0, &probe(17, epoch, 0, 0, 2), &[]);
    p.reply(0, "STATUS");
    p.send(
        0,
        &Header {
            kind: Kind::Result,
            ..data(17, epoch, 0, 1, 0, 0)
        },
        &v,
    );
    p.send(
        0,
        &Header {
            kind: Kind::Status,
            lanes: 0,
            ..data(17, epoch, 0, 1, 0, 0)
        },
        &[],
    );
    p.send(0, &data(17, epoch, 9, 1, 0, 0), &v);
    p.send(0, &data(17, epoch, 0, 4, 0, 0), &v);
    p.send(
        0,
        &Header {
            lanes: 32,
            ..data(17, epoch, 0, 1, 0, 0)
        },
        &v[..32],
    );
    // A malformed datagram (too short) and a PROBE of an unknown job (NACK).
    p.socks[0]
        .send_to(
            &[2u8; 10],
            SocketAddr::new(SWITCH_IP.into(), DEFAULT_DATA_PORT),
        )
        .unwrap();
    p.send(0, &probe(998, 1, 0, 0, 0), &[]);
    p.reply(0, "NACK");
    p.quiet("end of the sequence");
    let d = delta(&before, &p.counters(), 17);
    assert_eq!(
        d,
        Delta {
            packets_in: 14,
            // 2 replicas + 1 unicast + 1 STATUS + 1 NACK.
            packets_out: 5,
            drops: drops(&[(DropReason::Malformed, 1), (DropReason::UnknownJob, 1)]),
            job: JobCounters {
                data_in: 3,
                completions: 1,
                results_multicast: 2,
                results_unicast: 1,
                probes: 1,
                drops: drops(&[
                    (DropReason::Duplicate, 1),
                    (DropReason::Stale, 1),
                    (DropReason::BadKind, 2),
                    (DropReason::BadRank, 1),
                    (DropReason::BadSlot, 1),
                    (DropReason::BadLanes, 1),
                ]),
            },
        }
    );
}

/// Lane counts: a DATA whose lane count is not the job's is bad_lanes; the switch reports
/// the lane counts it can hold (`max_lanes`); bmv2 holds exactly the one it was compiled for
/// and refuses other jobs at `create` (`invalid`).
fn lane_counts(p: &mut Prober) {
    let info = p.ctl.info().expect("info");
    if p.bmv2 {
        assert_eq!(info.max_lanes, sketchreduce_p4gen::DEFAULT_LANES);
        for lanes in [32u16, 128] {
            let mut s = p.spec(18, 0, 2);
            s.lanes = lanes;
            match p.ctl.create(&s, false, 60_000) {
                Err(ClientError::Refused { kind, message }) => {
                    assert_eq!(kind, ErrorKind::Invalid, "{message}");
                    assert!(message.contains("lanes"), "{message}");
                }
                other => panic!("a {lanes}-lane job on a 64-lane program: {other:?}"),
            }
        }
    } else {
        assert!(info.max_lanes >= LANES, "{info:?}");
    }
    let epoch = p.create(&p.spec(18, 0, 2));
    let before = p.counters();
    for lanes in [32u16, 128, 256] {
        let v: Vec<u32> = (0..lanes as u32).collect();
        p.send(
            0,
            &Header {
                lanes,
                ..data(18, epoch, 0, 0, 0, 0)
            },
            &v,
        );
    }
    p.quiet("DATA with another lane count");
    let d = delta(&before, &p.counters(), 18);
    assert_eq!(d.packets_in, 3);
    assert_eq!(d.job.drops, drops(&[(DropReason::BadLanes, 3)]));
}

/// Jobs are isolated: a job's packets cannot reach another job's slots (bad_slot), and one
/// job's traffic moves only its own counters.
fn jobs_are_isolated(p: &mut Prober) {
    let ea = p.create(&p.spec(22, 0, 2));
    let mut sb = p.spec(23, 4, 2);
    sb.workers = (2..4).map(|i| WorkerSpec::at(worker_addr(i))).collect();
    let eb = p.create(&sb);
    let before = p.counters();
    // Job 22 into job 23's slot 5: bad_slot for job 22, job 23 untouched.
    p.send(0, &data(22, ea, 0, 5, 0, 0), &values(60));
    // Job 23 completes slot 5; job 22 completes slot 1.
    p.send(2, &data(23, eb, 0, 5, 0, 0), &values(61));
    p.send(3, &data(23, eb, 1, 5, 0, 0), &values(62));
    p.reply(2, "job 23's RESULT");
    p.reply(3, "job 23's RESULT");
    p.send(0, &data(22, ea, 0, 1, 0, 0), &values(63));
    p.send(1, &data(22, ea, 1, 1, 0, 0), &values(64));
    let (r, lanes) = p.reply(0, "job 22's RESULT");
    p.reply(1, "job 22's RESULT");
    assert_eq!((r.job, r.slot), (22, 1));
    let want: Vec<u32> = values(63)
        .iter()
        .zip(values(64))
        .map(|(a, b)| a.wrapping_add(b))
        .collect();
    assert_eq!(lanes, want);
    p.quiet("after both completions");
    let after = p.counters();
    let a = delta(&before, &after, 22);
    let b = delta(&before, &after, 23);
    assert_eq!(a.job.drops, drops(&[(DropReason::BadSlot, 1)]));
    assert_eq!(
        (a.job.data_in, a.job.completions, a.job.results_multicast),
        (2, 1, 2)
    );
    assert_eq!(b.job.drops, [0; DropReason::COUNT]);
    assert_eq!(
        (b.job.data_in, b.job.completions, b.job.results_multicast),
        (2, 1, 2)
    );
    assert_eq!((a.packets_in, a.packets_out), (5, 4));
}

/// Shadow sets and serial-number rounds: consecutive rounds alternate sets, a completed
/// round's result stays readable on its set while the other set runs the next round, a
/// packet of an older round is stale, and rounds wrap around 2³² (0 is newer than 2³² − 1).
fn rounds_and_sets(p: &mut Prober) {
    let epoch = p.create(&p.spec(24, 0, 2));
    let round = |r: u32, slot: u32, seed: u32| -> Vec<u32> {
        p.send(0, &data(24, epoch, 0, slot, r, r), &values(seed));
        p.send(1, &data(24, epoch, 1, slot, r, r), &values(seed + 1));
        let (h0, l0) = p.reply(0, "RESULT");
        let (h1, _) = p.reply(1, "RESULT");
        assert_eq!((h0.round, h1.round, h0.set), (r, r, (r & 1) as u8));
        l0
    };
    // Rounds through the wrap on slot 2. Each set holds its own round and a round is newer
    // only within 2³¹ of it, so the sets climb from 0 in steps below 2³¹ (set 0 through the
    // even rounds, set 1 through the odd ones) to 2³² − 2 and 2³² − 1, then 0 and 1.
    let rounds = [
        0x7FFF_FFFE,
        0x7FFF_FFFF,
        0xBFFF_FFFE,
        0xBFFF_FFFF,
        u32::MAX - 1,
        u32::MAX,
        0,
        1,
    ];
    let mut last = Vec::new();
    for (i, r) in rounds.into_iter().enumerate() {
        last = round(r, 2, 70 + 2 * i as u32);
    }
    // Round 0 (set 0) is still readable while round 1 (set 1) completed: rank 0 retransmits
    // its round-0 packet and gets round 0's result unicast.
    p.send(0, &data(24, epoch, 0, 2, 0, 0), &values(1));
    let (h, l) = p.reply(0, "unicast RESULT of round 0");
    assert_eq!((h.round, h.set), (0, 0));
    let sum = |a: u32| -> Vec<u32> {
        values(a)
            .iter()
            .zip(values(a + 1))
            .map(|(x, y)| x.wrapping_add(y))
            .collect()
    };
    assert_eq!(l, sum(82));
    assert_eq!(last, sum(84));
    // Round 2 overwrites set 0; a delayed round-0 packet of rank 1 is then stale, and so is
    // round u32::MAX (older than 2 in serial arithmetic).
    let before = p.counters();
    p.send(0, &data(24, epoch, 0, 2, 2, 2), &values(80));
    p.send(1, &data(24, epoch, 1, 2, 0, 0), &values(81));
    p.send(1, &data(24, epoch, 1, 2, u32::MAX, 0), &values(82));
    p.quiet("stale packets");
    let d = delta(&before, &p.counters(), 24);
    assert_eq!(d.job.drops, drops(&[(DropReason::Stale, 2)]));
    assert_eq!(d.job.data_in, 1);
    p.send(1, &data(24, epoch, 1, 2, 2, 2), &values(83));
    let (h, l) = p.reply(1, "RESULT of round 2");
    assert_eq!((h.round, h.set, h.count), (2, 0, 2));
    let want2: Vec<u32> = values(80)
        .iter()
        .zip(values(83))
        .map(|(a, b)| a.wrapping_add(b))
        .collect();
    assert_eq!(l, want2);
}

/// The control endpoint: info, authentication, create/exists/replace (new epoch, reset
/// slots, old packets bad_epoch), join, unregister with the wrong and the right epoch.
fn control_endpoint(p: &mut Prober) {
    let info = p.ctl.info().expect("info");
    assert_eq!(info.version, 2);
    assert_eq!(info.data_port, DEFAULT_DATA_PORT);
    assert!(info.data_ports >= 1 && info.data_ports <= 16);
    assert_eq!(info.max_workers, 32);
    assert!(info.auth);
    if p.bmv2 {
        assert_eq!(info.data_ports, 16, "the P4 parser accepts the whole range");
        assert_eq!(info.slots, sketchreduce_p4gen::POOL_SLOTS);
        assert_eq!(info.max_jobs as usize, sketchreduce_p4gen::MAX_JOBS);
    }
    // A client with the wrong secret is refused.
    let wrong = Secret::new(b"not-the-secret-0123456789".to_vec()).unwrap();
    let bad =
        Client::connect(control_addr(), Some(Arc::new(wrong)), REPLY).and_then(|mut c| c.info());
    assert!(bad.is_err(), "a client with the wrong secret got {bad:?}");

    let spec = p.spec(19, 0, 2);
    let e1 = p.create(&spec);
    assert_ne!(e1, 0);
    match p.ctl.create(&spec, false, 60_000) {
        Err(ClientError::Refused {
            kind: ErrorKind::Exists,
            ..
        }) => {}
        other => panic!("create of an existing id: {other:?}"),
    }
    let joined = p.ctl.join(19).expect("join");
    assert_eq!(joined.epoch, e1);
    assert_eq!(joined.workers.len(), 2);
    // Rank 0 contributes under e1.
    p.send(0, &data(19, e1, 0, 0, 0, 0), &values(40));
    // Replace: a new epoch; the old epoch's packets are bad_epoch, the slots are reset.
    let e2 = p.ctl.create(&spec, true, 60_000).expect("replace");
    assert_ne!(e2, e1);
    let before = p.counters();
    p.send(1, &data(19, e1, 1, 0, 0, 0), &values(41));
    p.quiet("old epoch after replace");
    p.send(0, &probe(19, e2, 0, 0, 0), &[]);
    let (s, _) = p.reply(0, "STATUS under the new epoch");
    assert_eq!(
        (s.flags, s.count, s.bitmap, s.round),
        (0, 0, 0, 0),
        "slots reset"
    );
    p.send(0, &probe(19, e1, 0, 0, 0), &[]);
    let (s, _) = p.reply(0, "NACK under the old epoch");
    assert_eq!(s.flags, NACK_BAD_EPOCH);
    let d = delta(&before, &p.counters(), 19);
    assert_eq!(d.job.drops, drops(&[(DropReason::BadEpoch, 2)]));
    assert_eq!(d.job.probes, 1);
    // Unregister with the old epoch: refused; with the current one: gone.
    match p.ctl.unregister(19, e1) {
        Err(ClientError::Refused {
            kind: ErrorKind::BadEpoch,
            ..
        }) => {}
        other => panic!("unregister with the old epoch: {other:?}"),
    }
    p.ctl.unregister(19, e2).expect("unregister");
    assert!(p.counters().job(19).is_none());
    p.send(0, &probe(19, e2, 0, 0, 0), &[]);
    let (s, _) = p.reply(0, "NACK after unregister");
    assert_eq!(s.flags, NACK_UNKNOWN_JOB);
    match p.ctl.join(19) {
        Err(ClientError::Refused {
            kind: ErrorKind::UnknownJob,
            ..
        }) => {}
        other => panic!("join after unregister: {other:?}"),
    }
}
