//! Fuzz-style: random, truncated and mutated datagrams from registered and stray sources never
//! panic the core, and every datagram is accounted for exactly as docs/wire.md's counters
//! section defines (packets_in, packets_out, drops, accepted).

use std::net::SocketAddr;

use proptest::prelude::*;
use sketchreduce_switch::{total_drops, SwitchCore};
use sketchreduce_wire::packet::{build, NACK_MASK};
use sketchreduce_wire::{Header, JobSpec, Kind, Packet, WorkerSpec};

const EPOCH: u32 = 0x1234;

fn worker(r: usize) -> SocketAddr {
    format!("127.0.0.1:{}", 5000 + r).parse().unwrap()
}

fn job() -> JobSpec {
    JobSpec {
        id: 1,
        epoch: EPOCH,
        lanes: 32,
        slot_base: 0,
        slot_count: 8,
        workers: (0..3).map(|r| WorkerSpec::at(worker(r))).collect(),
    }
}

fn valid(rank: u8, slot: u32, round: u32, kind: Kind) -> Vec<u8> {
    let lanes = if kind.has_lanes() { 32 } else { 0 };
    let h = Header {
        lanes,
        ..Header::request(kind, 1, EPOCH, rank, slot, round)
    };
    let mut b = vec![0u8; h.packet_len()];
    build(&h, &vec![round; lanes as usize], &mut b).unwrap();
    b
}

/// Feeds one datagram, checks every output, and counts NACKs (the one kind of output with no
/// per-job counter).
fn feed(core: &mut SwitchCore, from: SocketAddr, d: &[u8], nacks: &mut u64) {
    core.handle(from, d, &mut |to, out| {
        let h = Header::parse(&Packet::new_checked(out).expect("valid length")).expect("valid");
        assert!(h.check_reply().is_ok());
        if h.flags & NACK_MASK != 0 {
            assert_eq!(to, from, "a NACK goes back to the probe's source");
            assert_eq!(out.len(), d.len(), "a NACK is the size of the probe");
            *nacks += 1;
        } else {
            assert!(
                (0..3).any(|r| worker(r) == to),
                "other replies only to registered addresses, not {to}"
            );
        }
    });
}

/// Every datagram in is either a drop or accepted (data_in / probe / unicast RESULT); every
/// datagram out is a multicast replica, a unicast RESULT, a STATUS or a NACK.
fn check_accounting(core: &SwitchCore, nacks: u64) {
    let c = core.counters();
    let drops: u64 = total_drops(&c).iter().sum();
    let j = c.job(1).unwrap();
    assert_eq!(
        c.packets_in,
        drops + j.data_in + j.probes + j.results_unicast
    );
    assert_eq!(
        c.packets_out,
        j.results_multicast + j.results_unicast + j.probes + nacks
    );
    assert_eq!(j.results_multicast, 3 * j.completions);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
        let mut core = SwitchCore::new(8);
        core.create(job()).unwrap();
        let mut nacks = 0;
        feed(&mut core, worker(0), &bytes, &mut nacks);
        check_accounting(&core, nacks);
    }

    #[test]
    fn mutated_valid_packets(
        seq in proptest::collection::vec(
            (0u8..4, 0u32..10, 0u32..4, 0usize..4, any::<(usize, u8)>(), 0usize..200, 0usize..4),
            1..60)
    ) {
        let mut core = SwitchCore::new(8);
        core.create(job()).unwrap();
        let mut nacks = 0;
        for (rank, slot, round, kind, (pos, val), cut, src) in seq {
            let kind = [Kind::Data, Kind::Probe, Kind::Result, Kind::Status][kind];
            let mut p = valid(rank, slot, round, kind);
            // Mutate one byte, then maybe truncate; send from a worker or a stranger.
            let n = p.len();
            p[pos % n] = val;
            let keep = if cut < 100 { n } else { cut % (n + 1) };
            let from = if src < 3 { worker(src) } else { "10.9.9.9:1".parse().unwrap() };
            feed(&mut core, from, &p[..keep], &mut nacks);
        }
        check_accounting(&core, nacks);
    }

    #[test]
    fn truncations_are_malformed(rank in 0u8..3, slot in 0u32..8, cut in 0usize..160) {
        let mut core = SwitchCore::new(8);
        core.create(job()).unwrap();
        let p = valid(rank, slot, 0, Kind::Data);
        let cut = cut % p.len();
        core.handle(worker(rank as usize), &p[..cut], &mut |_, _| panic!("no output"));
        prop_assert_eq!(core.counters().drops[0], 1);
    }
}
