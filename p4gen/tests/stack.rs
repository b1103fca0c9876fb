//! The real worker stack through a switch, in network namespaces: 3 ranks, each a
//! `sketchreduce_collectives::Communicator` with algo innet in its own namespace (a veth to the
//! switch), all-reducing small tensors through the switch, exact against an independent
//! fixed-point reference computed here (and within the stated bound of the f64 sum), clean and
//! with 5 % random loss on every worker's link (nftables).
//!
//! - `stack_emulator`: the software switch behind a Linux bridge (needs root).
//! - `stack_bmv2_if_available`: bmv2 `simple_switch` running the program compiled for the
//!   workers' lane count, with `sketchreduce p4 control`'s control plane (needs p4c,
//!   simple_switch, simple_switch_CLI and root; else `skipped: …`). Same workers, same checks:
//!   nothing in the worker stack knows which switch it talks to.
//!
//! The tensors cover every phase of the in-network all-reduce: agreement (MAX and ADD lanes),
//! a sparse tensor (index OR + sketch ADD, decoded by peeling), a dense one (dense mode: ADD
//! lanes, where the agent has it), and the same tensor id again (sizing from history). Then
//! each rank drives a `sketchreduce_agent::Agent` directly with a sketch forced far too small
//! (16 cells), so peeling stalls and the recovery round runs (exact all the same), and finally
//! rank 0 re-creates the job on the switch (`create` with `replace`): every rank's next
//! all-reduce must fail (its packets are `bad_epoch` now, its PROBEs get NACKs), and the
//! switch counts the drops.

mod common;

use std::time::Duration;

use common::{Switch, Topology, CONTROL_PORT, SECRET, SWITCH_IP};
use sketchreduce_codec::{max_exponent, FixedPoint, LaneWidth};
use sketchreduce_collectives::{Algo, Communicator, Config};

const RANKS: usize = 3;
/// Rendezvous port of rank 0 (in its namespace).
const MASTER_PORT: u16 = 29517;

#[test]
fn stack_emulator() {
    if !common::can_create_netns() {
        skip!(
            "skipped: cannot create network namespaces (needs iproute2 and root) (stack_emulator)"
        );
        return;
    }
    let _heavy = common::heavy();
    run(Switch::Emulator);
}

#[test]
fn stack_bmv2_if_available() {
    if let Some(why) = common::bmv2_missing() {
        skip!("skipped: {why} (stack_bmv2_if_available)");
        return;
    }
    let _heavy = common::heavy();
    let dir = common::temp_dir("stack-p4c");
    let lanes = sketchreduce_collectives::innet::JOB_LANES;
    let json = common::compile(&dir, lanes).unwrap_or_else(|e| panic!("{e}"));
    run(Switch::Bmv2 { json });
}

fn run(switch: Switch) {
    let bmv2 = matches!(switch, Switch::Bmv2 { .. });
    let dir = common::temp_dir(if bmv2 { "stack-bmv2" } else { "stack-emu" });
    let mut t = Topology::up(switch, RANKS, &dir).unwrap_or_else(|e| panic!("{e}"));
    let sw = t.ns_switch();
    if bmv2 {
        let ports = t.port_map_json();
        t.spawn(
            &sw,
            "stack_control_process",
            "p4-control",
            &[("SRP4_PORTS", ports)],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    } else {
        t.spawn(&sw, "stack_emulator_process", "emulator", &[])
            .unwrap_or_else(|e| panic!("{e}"));
    }
    for (phase, loss) in [("clean", 0u32), ("lossy", 5)] {
        if loss > 0 {
            let mut ok = true;
            for r in 0..RANKS {
                if let Err(e) = t.add_loss(r, loss) {
                    skip!("skipped: the lossy stack run, cannot install the nftables rules: {e}");
                    ok = false;
                    break;
                }
            }
            if !ok {
                break;
            }
        }
        let mut workers = Vec::new();
        for r in 0..RANKS {
            let env = [
                ("RANK", r.to_string()),
                ("WORLD_SIZE", RANKS.to_string()),
                ("MASTER_ADDR", Topology::worker_ip(0).to_string()),
                ("MASTER_PORT", (MASTER_PORT + loss as u16).to_string()),
                ("SKETCHREDUCE_ALGO", "innet".to_string()),
                ("SKETCHREDUCE_SWITCH", format!("{SWITCH_IP}:{CONTROL_PORT}")),
                ("SKETCHREDUCE_SECRET", SECRET.to_string()),
                ("SKETCHREDUCE_TIMEOUT_SECS", "60".to_string()),
                // One job per phase: the first may still hold its lease.
                ("SKETCHREDUCE_JOB", (1 + loss).to_string()),
                ("SRP4_PHASE", phase.to_string()),
                ("SRP4_DIR", dir.display().to_string()),
                // The direct agents' job: another id and slot range per phase.
                ("SRP4_AGENT_JOB", (20 + loss).to_string()),
            ];
            let ns = t.ns_worker(r);
            let h = t
                .start(
                    &ns,
                    "stack_worker_process",
                    &format!("{phase}-rank{r}"),
                    &env,
                )
                .unwrap_or_else(|e| panic!("{e}"));
            workers.push(h);
        }
        let mut errors = Vec::new();
        for h in workers {
            match h.wait(Duration::from_secs(600), "SRP4-STACK-OK") {
                Ok(log) => {
                    for l in log.lines().filter(|l| l.contains(" case ")) {
                        eprintln!("{phase}: {l}");
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        assert!(
            errors.is_empty(),
            "{phase} run:\n{}\n{}",
            errors.join("\n"),
            t.logs()
        );
    }
    drop(t);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// Helper processes.
// ---------------------------------------------------------------------------------------------

/// The software switch on the switch address, until killed.
#[test]
#[ignore = "helper process of stack_emulator"]
fn stack_emulator_process() {
    if common::is_helper() {
        common::serve_emulator();
    }
}

/// The bmv2 control plane on the switch address, until killed.
#[test]
#[ignore = "helper process of stack_bmv2_if_available"]
fn stack_control_process() {
    if common::is_helper() {
        common::serve_bmv2_control();
    }
}

/// Deterministic input of `rank` for tensor `t`: `dim` values, about `density` of them
/// nonzero, with magnitudes spread over a few binades and both signs.
fn input(rank: usize, t: u64, dim: usize, density: f64) -> Vec<f32> {
    let mut s =
        0x9E37_79B9_7F4A_7C15u64 ^ (rank as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407) ^ t;
    let mut next = move || {
        s ^= s << 7;
        s ^= s >> 9;
        s
    };
    (0..dim)
        .map(|_| {
            let r = next();
            if (r % 10_000) as f64 >= density * 10_000.0 {
                return 0.0;
            }
            let mag = ((r >> 16) % 1_000_000) as f32 / 1_000_000.0 + 0.001;
            let sign = if (r >> 40) & 1 == 1 { -1.0 } else { 1.0 };
            sign * mag * (1u32 << ((r >> 48) % 6)) as f32
        })
        .collect()
}

/// The reference: the fixed point every rank must agree on (global exponent over all inputs,
/// `ranks` workers, 32-bit lanes) and the exact integer sums, computed independently of the
/// worker stack; and the f64 sums.
fn reference(t: u64, dim: usize, density: f64, ranks: usize) -> (FixedPoint, Vec<i64>, Vec<f64>) {
    let inputs: Vec<Vec<f32>> = (0..ranks).map(|r| input(r, t, dim, density)).collect();
    let exp = inputs
        .iter()
        .map(|v| max_exponent(v).expect("finite input"))
        .max()
        .unwrap_or(0);
    let fp = FixedPoint::new(exp, ranks as u32, LaneWidth::W32).expect("fixed point");
    let mut sums = vec![0i64; dim];
    let mut f64s = vec![0f64; dim];
    for v in &inputs {
        for (i, &x) in v.iter().enumerate() {
            sums[i] += fp.to_fixed(x);
            f64s[i] += x as f64;
        }
    }
    (fp, sums, f64s)
}

/// One rank of the stack tests, configured by the environment like any user's process.
#[test]
#[ignore = "helper process of the stack tests"]
fn stack_worker_process() {
    if !common::is_helper() {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let cfg = Config::from_env().expect("configuration from the environment");
    let rank = cfg.rank;
    let world = cfg.world_size;
    let comm = Communicator::new(cfg).expect("joining the job");
    // (tensor id, dimension, density): sparse (sketch), the same id again (sizing from
    // history), dense (dense mode), sparse with a wide spread.
    let cases: [(u64, usize, f64); 4] = [
        (1, 4000, 0.02),
        (1, 4000, 0.03),
        (2, 600, 1.0),
        (3, 20_000, 0.004),
    ];
    for (n, &(t, dim, density)) in cases.iter().enumerate() {
        let seed = t * 100 + n as u64;
        let mine = input(rank, seed, dim, density);
        let ((sums, fp), info) = comm
            .start_fixed(mine.clone(), Algo::Innet)
            .wait()
            .unwrap_or_else(|e| panic!("rank {rank}, case {n}: innet all-reduce: {e}"));
        println!(
            "rank {rank} case {n}: dim {dim}, density {density}: {:?}, {} bytes sent, {:?}",
            info.algo, info.bytes_sent, info.elapsed
        );
        let (want_fp, want, f64s) = reference(seed, dim, density, world);
        assert_eq!(fp, want_fp, "case {n}: agreed fixed point");
        assert_eq!(sums.len(), dim);
        let bad: Vec<usize> = (0..dim).filter(|&i| sums[i] != want[i]).collect();
        assert!(
            bad.is_empty(),
            "rank {rank}, case {n}: {} of {dim} sums differ from the fixed-point reference, first at {}: {} vs {}",
            bad.len(),
            bad[0],
            sums[bad[0]],
            want[bad[0]]
        );
        // Within the quantization bound of the f64 sum: half a unit per rank.
        let unit = 2f64.powi(-fp.shift());
        for i in 0..dim {
            let err = (sums[i] as f64 * unit - f64s[i]).abs();
            assert!(
                err <= world as f64 * unit / 2.0 + 1e-12,
                "case {n}, element {i}: {} vs f64 {}",
                sums[i] as f64 * unit,
                f64s[i]
            );
        }
        // And the same integers as the dense ring.
        let (ring, _) = comm
            .start_fixed(mine, Algo::Ring)
            .wait()
            .unwrap_or_else(|e| panic!("rank {rank}, case {n}: ring: {e}"))
            .0;
        assert_eq!(ring, sums, "case {n}: innet and ring differ");
    }
    drop(comm);
    direct_agent(rank, world);
    println!("SRP4-STACK-OK rank {rank}");
}

/// Waits until every rank has created `name-<rank>` in the shared directory (a barrier
/// between processes in different namespaces; the file system is shared).
fn barrier(name: &str, rank: usize, world: usize) {
    let dir = std::path::PathBuf::from(common::env::<String>("SRP4_DIR"));
    std::fs::write(dir.join(format!("{name}-{rank}")), b"").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !(0..world).all(|r| dir.join(format!("{name}-{r}")).exists()) {
        assert!(
            std::time::Instant::now() < deadline,
            "barrier {name}: ranks missing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The agent API directly: a sketch forced to 16 cells (peeling stalls: the recovery round
/// gives the exact sums), then a re-created job makes the old workers fail.
fn direct_agent(rank: usize, world: usize) {
    use sketchreduce_agent::{Agent, AgentConfig, AggConfig, InnetConfig, UdpTransport};
    let job_id: u16 = common::env("SRP4_AGENT_JOB");
    let local = std::net::SocketAddr::new(Topology::worker_ip(rank).into(), 42_000);
    let spec = sketchreduce_wire::JobSpec {
        id: job_id,
        epoch: 0,
        lanes: sketchreduce_collectives::innet::JOB_LANES,
        slot_base: 896,
        slot_count: 32,
        workers: (0..world)
            .map(|r| {
                sketchreduce_wire::WorkerSpec::at(std::net::SocketAddr::new(
                    Topology::worker_ip(r).into(),
                    42_000,
                ))
            })
            .collect(),
    };
    let sock = std::net::UdpSocket::bind(local).expect("bind the agent's socket");
    let t = UdpTransport::new(sock, common::control_addr()).expect("UDP transport");
    let cfg = AgentConfig {
        agg: AggConfig::with_timeout(Duration::from_secs(10)),
        innet: InnetConfig {
            cells: Some(16),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut agent = Agent::new(t, &spec, rank as u8, cfg).expect("creating or joining the job");
    let epoch = agent.job().epoch;
    let (dim, density, seed) = (4000, 0.01, 777);
    let r = agent
        .all_reduce(seed, &input(rank, seed, dim, density))
        .unwrap_or_else(|e| panic!("rank {rank}: direct agent all-reduce: {e}"));
    let (want_fp, want, _) = reference(seed, dim, density, world);
    assert_eq!(r.fixed, Some(want_fp), "agreed fixed point");
    assert_eq!(
        r.decode_retries, 1,
        "16 cells for ~120 keys must stall and recover"
    );
    let mut sums = vec![0i64; dim];
    r.to_dense_sums(&mut sums).unwrap();
    assert_eq!(sums, want, "rank {rank}: recovered sums");
    println!("rank {rank} case recovery: {} cells, exact", r.cells);

    // Re-create the job under a new epoch: the old workers' packets are now bad_epoch.
    barrier(&format!("{job_id}-done"), rank, world);
    if rank == 0 {
        let e2 = common::control_client()
            .create(&spec, true, 60_000)
            .expect("re-create");
        assert_ne!(e2, epoch);
    }
    barrier(&format!("{job_id}-replaced"), rank, world);
    let err = agent
        .all_reduce(seed + 1, &input(rank, seed, dim, density))
        .expect_err("an all-reduce on a re-created job succeeded");
    println!("rank {rank} case re-created: failed as it must: {err}");
    barrier(&format!("{job_id}-failed"), rank, world);
    if rank == 0 {
        let mut c = common::control_client();
        let k = c.counters().expect("counters");
        let drops = k.job(job_id).expect("the job").drops;
        assert!(
            drops[sketchreduce_wire::DropReason::BadEpoch as usize] > 0,
            "no bad_epoch drops after the re-create: {drops:?}"
        );
        let e2 = c.join(job_id).expect("join").epoch;
        c.unregister(job_id, e2).expect("unregister");
    }
}
