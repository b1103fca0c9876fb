//! Fuzz-style: random, truncated and mutated datagrams never panic the core and are counted.

use std::net::SocketAddr;

use proptest::prelude::*;
use sketchreduce_switch::{total_drops, SwitchCore};
use sketchreduce_wire::packet::build;
use sketchreduce_wire::{Header, JobSpec, Kind, Op, WorkerSpec};

fn job() -> JobSpec {
    JobSpec {
        id: 1,
        token: 0x1234,
        lanes: 32,
        slot_base: 0,
        slot_count: 8,
        workers: (0..3)
            .map(|r| WorkerSpec::at(format!("127.0.0.1:{}", 5000 + r).parse().unwrap()))
            .collect(),
    }
}

fn valid(rank: u8, slot: u32, round: u32, kind: Kind) -> Vec<u8> {
    let lanes = if kind.has_lanes() { 32 } else { 0 };
    let h = Header {
        kind,
        op: Op::Add,
        rank,
        job: 1,
        lanes,
        token: 0x1234,
        slot,
        set: (round & 1) as u8,
        count: 0,
        round,
        offset: 0,
        bitmap: 0,
    };
    let mut b = vec![0u8; h.packet_len()];
    build(&h, &vec![round; lanes as usize], &mut b);
    b
}

/// Every datagram in is either accounted as a drop, or accepted (data_in / probe / unicast).
fn check_accounting(core: &SwitchCore) {
    let c = core.counters();
    let drops: u64 = total_drops(&c).iter().sum();
    let j = c.jobs[0].1;
    assert_eq!(
        c.packets_in,
        drops + j.data_in + j.probes + j.results_unicast
    );
    assert_eq!(
        c.packets_out,
        j.results_multicast + j.results_unicast + j.probes
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
        let mut core = SwitchCore::new(8);
        core.register(job()).unwrap();
        let from: SocketAddr = "127.0.0.1:1".parse().unwrap();
        core.handle(from, &bytes, &mut |_, d| assert!(d.len() >= 32));
        check_accounting(&core);
    }

    #[test]
    fn mutated_valid_packets(
        seq in proptest::collection::vec(
            (0u8..4, 0u32..10, 0u32..4, 0usize..4, any::<(usize, u8)>(), 0usize..200), 1..60)
    ) {
        let mut core = SwitchCore::new(8);
        core.register(job()).unwrap();
        let from: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for (rank, slot, round, kind, (pos, val), cut) in seq {
            let kind = [Kind::Data, Kind::Probe, Kind::Result, Kind::Status][kind];
            let mut p = valid(rank, slot, round, kind);
            // Mutate one byte, then maybe truncate.
            let n = p.len();
            p[pos % n] = val;
            let keep = if cut < 100 { n } else { cut % (n + 1) };
            core.handle(from, &p[..keep], &mut |_, d| assert!(d.len() >= 32));
        }
        check_accounting(&core);
    }

    #[test]
    fn truncations_are_malformed(rank in 0u8..3, slot in 0u32..8, cut in 0usize..160) {
        let mut core = SwitchCore::new(8);
        core.register(job()).unwrap();
        let p = valid(rank, slot, 0, Kind::Data);
        let cut = cut % p.len();
        core.handle("127.0.0.1:1".parse().unwrap(), &p[..cut], &mut |_, _| panic!("no output"));
        prop_assert_eq!(core.counters().drops[0], 1);
    }
}
