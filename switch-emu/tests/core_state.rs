//! Slot state machine tests against docs/wire.md, through `SwitchCore::handle`. The tests named
//! in docs/wire.md's conformance section live here (and in `loopback.rs`, `control.rs`).

use std::net::SocketAddr;

use sketchreduce_switch::{CoreError, RegisterError, ShardedCore, SwitchCore};
use sketchreduce_wire::packet::{build, NACK_BAD_EPOCH, NACK_UNKNOWN_JOB};
use sketchreduce_wire::{DropReason, Header, JobSpec, Kind, Op, Packet, WorkerSpec};

const MALFORMED: usize = DropReason::Malformed as usize;

fn addr(job: u16, rank: usize) -> SocketAddr {
    format!("10.0.{job}.{}:4000", rank + 1).parse().unwrap()
}

fn job(id: u16, epoch: u32, lanes: u16, base: u32, count: u32, n: usize) -> JobSpec {
    JobSpec {
        id,
        epoch,
        lanes,
        slot_base: base,
        slot_count: count,
        workers: (0..n).map(|r| WorkerSpec::at(addr(id, r))).collect(),
    }
}

fn header(kind: Kind, op: Op, j: &JobSpec, rank: u8, slot: u32, round: u32, lanes: u16) -> Header {
    Header {
        kind,
        op,
        rank,
        job: j.id,
        lanes,
        epoch: j.epoch,
        slot,
        set: (round & 1) as u8,
        count: 0,
        flags: 0,
        round,
        offset: 1000 + slot,
        bitmap: 0,
    }
}

fn raw(h: &Header, lanes: &[u32]) -> Vec<u8> {
    let mut buf = vec![0u8; h.packet_len()];
    build(h, lanes, &mut buf).unwrap();
    buf
}

#[allow(clippy::too_many_arguments)]
fn pkt(kind: Kind, op: Op, j: &JobSpec, rank: u8, slot: u32, round: u32, lanes: &[u32]) -> Vec<u8> {
    raw(
        &header(kind, op, j, rank, slot, round, lanes.len() as u16),
        lanes,
    )
}

fn data(j: &JobSpec, rank: u8, slot: u32, round: u32, lanes: &[u32]) -> Vec<u8> {
    pkt(Kind::Data, Op::Add, j, rank, slot, round, lanes)
}

fn probe(j: &JobSpec, rank: u8, slot: u32, round: u32) -> Vec<u8> {
    pkt(Kind::Probe, Op::Add, j, rank, slot, round, &[])
}

type Out = Vec<(SocketAddr, Vec<u8>)>;

fn feed(core: &mut SwitchCore, from: SocketAddr, d: &[u8]) -> Out {
    let mut out = Vec::new();
    core.handle(from, d, &mut |a, b| out.push((a, b.to_vec())));
    out
}

fn lanes_of(d: &[u8]) -> Vec<u32> {
    Packet::new_checked(d).unwrap().lanes().collect()
}

fn hdr(d: &[u8]) -> Header {
    Header::parse(&Packet::new_checked(d).unwrap()).unwrap()
}

fn job_drops(core: &SwitchCore, id: u16) -> [u64; DropReason::COUNT] {
    core.counters().job(id).unwrap().drops
}

fn vals(lanes: usize, f: impl Fn(usize) -> u32) -> Vec<u32> {
    (0..lanes).map(f).collect()
}

fn core_with(jobs: &[&JobSpec], slots: u32) -> SwitchCore {
    let mut core = SwitchCore::new(slots);
    for j in jobs {
        core.create((*j).clone()).unwrap();
    }
    core
}

#[test]
fn aggregates_in_any_order_and_multicasts() {
    let j = job(1, 7, 32, 0, 4, 3);
    for order in [[0u8, 1, 2], [2, 0, 1], [1, 2, 0]] {
        let mut core = core_with(&[&j], 8);
        let mut out = Vec::new();
        for (i, &r) in order.iter().enumerate() {
            let v = vals(32, |l| (r as u32 + 1) * 1000 + l as u32);
            out = feed(&mut core, addr(1, r as usize), &data(&j, r, 2, 0, &v));
            if i < 2 {
                assert!(out.is_empty(), "no result before the last contribution");
            }
        }
        assert_eq!(out.len(), 3, "multicast to every worker");
        let dsts: Vec<_> = out.iter().map(|(a, _)| *a).collect();
        assert_eq!(dsts, vec![addr(1, 0), addr(1, 1), addr(1, 2)]);
        for (_, d) in &out {
            let h = hdr(d);
            assert_eq!(h.kind, Kind::Result);
            assert_eq!(h.count, 3);
            assert_eq!(h.bitmap, 0b111);
            assert_eq!(h.flags, 0);
            assert_eq!(h.epoch, 7);
            assert_eq!(h.slot, 2);
            assert_eq!(h.round, 0);
            assert_eq!(h.offset, 1002);
            assert_eq!(h.rank, order[2], "header of the completing packet");
            assert_eq!(lanes_of(d), vals(32, |l| 6000 + 3 * l as u32));
        }
        let c = core.counters();
        assert_eq!(c.packets_in, 3);
        assert_eq!(c.packets_out, 3);
        let jc = c.job(1).unwrap();
        assert_eq!(jc.data_in, 3);
        assert_eq!(jc.completions, 1);
        assert_eq!(jc.results_multicast, 3);
    }
}

#[test]
fn first_contribution_sets_count_one_and_own_bit() {
    let j = job(1, 7, 64, 0, 4, 3);
    let mut core = core_with(&[&j], 4);
    // Round 0 on fresh registers (R = 0, C = 0): the "bit clear, C = 0" case.
    let v = vals(64, |l| 0x1000 + l as u32);
    assert!(feed(&mut core, addr(1, 2), &data(&j, 2, 1, 0, &v)).is_empty());
    let (round, count, bitmap, lanes) = core.slot_set(1, 0).unwrap();
    assert_eq!((round, count, bitmap), (0, 1, 1 << 2));
    assert_eq!(&lanes[..64], &v[..], "lanes = the packet's lanes");
    // A newer round on a set (q > R): the same three assignments, whatever the set held.
    for r in 0..3u8 {
        feed(&mut core, addr(1, r as usize), &data(&j, r, 1, 0, &v));
    }
    let w = vals(64, |l| 7 * l as u32);
    feed(&mut core, addr(1, 1), &data(&j, 1, 1, 2, &w));
    let (round, count, bitmap, lanes) = core.slot_set(1, 0).unwrap();
    assert_eq!((round, count, bitmap), (2, 1, 1 << 1));
    assert_eq!(&lanes[..64], &w[..]);
}

#[test]
fn ops_wrap_or_max() {
    let j = job(1, 7, 32, 0, 4, 2);
    let mut core = core_with(&[&j], 4);
    let a = vals(32, |l| if l == 0 { u32::MAX } else { 0x0F0 + l as u32 });
    let b = vals(32, |l| if l == 0 { 2 } else { 0x00F });
    let run = |core: &mut SwitchCore, op: Op, slot: u32| {
        feed(core, addr(1, 0), &pkt(Kind::Data, op, &j, 0, slot, 0, &a));
        let out = feed(core, addr(1, 1), &pkt(Kind::Data, op, &j, 1, slot, 0, &b));
        lanes_of(&out[0].1)
    };
    let l = run(&mut core, Op::Add, 0);
    assert_eq!(l[0], 1, "wrapping add");
    assert_eq!(l[1], 0x0F0 + 1 + 0x00F);
    assert_eq!(run(&mut core, Op::Or, 1)[1], (0x0F0 + 1) | 0x00F);
    let l = run(&mut core, Op::Max, 2);
    assert_eq!(l[0], u32::MAX);
    assert_eq!(l[1], 0x0F1);
}

#[test]
fn unicast_result_after_completion_carries_the_duplicates_header() {
    let j = job(1, 7, 32, 0, 4, 2);
    let mut core = core_with(&[&j], 4);
    let v0 = vals(32, |l| l as u32);
    let v1 = vals(32, |l| 100 * l as u32);
    let mut h0 = header(Kind::Data, Op::Add, &j, 0, 1, 0, 32);
    h0.offset = 111;
    let p0 = raw(&h0, &v0);
    assert!(feed(&mut core, addr(1, 0), &p0).is_empty());
    // Retransmission before completion: nothing changes.
    assert!(feed(&mut core, addr(1, 0), &p0).is_empty());
    assert_eq!(job_drops(&core, 1)[DropReason::Duplicate as usize], 1);
    let mut h1 = header(Kind::Data, Op::Add, &j, 1, 1, 0, 32);
    h1.offset = 222;
    let out = feed(&mut core, addr(1, 1), &raw(&h1, &v1));
    assert_eq!(out.len(), 2);
    let want = vals(32, |l| 101 * l as u32);
    assert_eq!(
        lanes_of(&out[0].1),
        want,
        "the duplicate was not added twice"
    );
    assert_eq!(
        (hdr(&out[0].1).rank, hdr(&out[0].1).offset),
        (1, 222),
        "multicast: the completing packet's header"
    );
    // Rank 0 lost its RESULT and retransmits: the stored result, unicast to its registered
    // address, with the retransmitted packet's header (rank 0, offset 111).
    let out = feed(&mut core, addr(1, 0), &p0);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, addr(1, 0));
    let h = hdr(&out[0].1);
    assert_eq!(
        (h.kind, h.rank, h.offset, h.count, h.bitmap, h.flags, h.lanes),
        (Kind::Result, 0, 111, 2, 0b11, 0, 32)
    );
    assert_eq!((h.slot, h.set, h.round, h.epoch), (1, 0, 0, 7));
    assert_eq!(lanes_of(&out[0].1), want);
    let c = core.counters();
    let jc = c.job(1).unwrap();
    assert_eq!(jc.results_unicast, 1);
    assert_eq!(jc.completions, 1);
    assert_eq!(jc.data_in, 2);
    assert_eq!(c.packets_out, 3);
}

#[test]
fn shadow_sets_across_rounds_and_stale() {
    let j = job(1, 7, 32, 0, 1, 2);
    let mut core = core_with(&[&j], 1);
    let v = |r: u32, q: u32| vals(32, move |l| r * 10 + q * 1000 + l as u32);
    let sum = |q: u32| vals(32, move |l| 10 + 2 * q * 1000 + 2 * l as u32);
    // Round 0 (set 0) completes.
    feed(&mut core, addr(1, 0), &data(&j, 0, 0, 0, &v(0, 0)));
    let out = feed(&mut core, addr(1, 1), &data(&j, 1, 0, 0, &v(1, 0)));
    assert_eq!(lanes_of(&out[0].1), sum(0));
    // Worker 0 moves to round 1 (set 1); worker 1 lost its round-0 result and retransmits:
    // set 0 still holds round 0.
    assert!(feed(&mut core, addr(1, 0), &data(&j, 0, 0, 1, &v(0, 1))).is_empty());
    let out = feed(&mut core, addr(1, 1), &data(&j, 1, 0, 0, &v(1, 0)));
    assert_eq!(out.len(), 1);
    assert_eq!(lanes_of(&out[0].1), sum(0));
    // Round 1 completes on set 1.
    let out = feed(&mut core, addr(1, 1), &data(&j, 1, 0, 1, &v(1, 1)));
    assert_eq!(out.len(), 2);
    assert_eq!(hdr(&out[0].1).round, 1);
    assert_eq!(hdr(&out[0].1).set, 1);
    assert_eq!(lanes_of(&out[0].1), sum(1));
    // Round 2 reuses set 0: the first packet overwrites round 0.
    assert!(feed(&mut core, addr(1, 1), &data(&j, 1, 0, 2, &v(1, 2))).is_empty());
    let (round, count, bitmap, _) = core.slot_set(0, 0).unwrap();
    assert_eq!((round, count, bitmap), (2, 1, 0b10));
    // A delayed round-0 packet is stale now.
    assert!(feed(&mut core, addr(1, 0), &data(&j, 0, 0, 0, &v(0, 0))).is_empty());
    assert_eq!(job_drops(&core, 1)[DropReason::Stale as usize], 1);
    let out = feed(&mut core, addr(1, 0), &data(&j, 0, 0, 2, &v(0, 2)));
    assert_eq!(lanes_of(&out[0].1), sum(2));
    // ("bit clear and C = N" is unreachable: a complete set has every rank's bit.)
}

#[test]
fn set_must_equal_round_parity() {
    // v1 indexed the registers by the packet's set alone: round 1 sent on set 0 overwrote set
    // 0's completed round-0 result, which a worker that lost it could then never get back.
    let j = job(1, 7, 32, 0, 1, 2);
    let mut core = core_with(&[&j], 1);
    let v = vals(32, |l| l as u32);
    feed(&mut core, addr(1, 0), &data(&j, 0, 0, 0, &v));
    feed(&mut core, addr(1, 1), &data(&j, 1, 0, 0, &v));
    let mut h = header(Kind::Data, Op::Add, &j, 0, 0, 1, 32);
    h.set = 0; // round 1 must use set 1
    assert!(feed(&mut core, addr(1, 0), &raw(&h, &vals(32, |_| 999))).is_empty());
    let mut p = header(Kind::Probe, Op::Add, &j, 0, 0, 2, 0);
    p.set = 1;
    assert!(feed(&mut core, addr(1, 0), &raw(&p, &[])).is_empty());
    let c = core.counters();
    assert_eq!(c.drops[MALFORMED], 2);
    let (round, count, bitmap, lanes) = core.slot_set(0, 0).unwrap();
    assert_eq!((round, count, bitmap), (0, 2, 0b11));
    assert_eq!(lanes[5], 10, "set 0 still holds round 0's sum");
    // The round-0 result is still there for a worker that lost it.
    let out = feed(&mut core, addr(1, 1), &data(&j, 1, 0, 0, &v));
    assert_eq!(lanes_of(&out[0].1), vals(32, |l| 2 * l as u32));
}

#[test]
fn request_flags_must_be_zero() {
    let j = job(1, 7, 32, 0, 2, 2);
    let mut core = core_with(&[&j], 2);
    for flags in [NACK_UNKNOWN_JOB, 0x8000] {
        let mut d = header(Kind::Data, Op::Add, &j, 0, 0, 0, 32);
        d.flags = flags;
        let mut p = header(Kind::Probe, Op::Add, &j, 0, 0, 0, 0);
        p.flags = flags;
        assert!(feed(&mut core, addr(1, 0), &raw(&d, &vals(32, |_| 1))).is_empty());
        assert!(feed(&mut core, addr(1, 0), &raw(&p, &[])).is_empty());
    }
    let c = core.counters();
    assert_eq!(c.drops[MALFORMED], 4);
    assert_eq!(c.packets_out, 0);
    assert_eq!(c.job(1).unwrap().data_in, 0);
    assert_eq!(core.slot_set(0, 0).unwrap().1, 0);
    // A RESULT or STATUS sent to the switch is bad_kind whatever its flags (they are reply
    // flags, not checked on ingress).
    let mut r = header(Kind::Status, Op::Add, &j, 0, 0, 0, 0);
    r.flags = 0x00ff;
    feed(&mut core, addr(1, 0), &raw(&r, &[]));
    assert_eq!(job_drops(&core, 1)[DropReason::BadKind as usize], 1);
}

#[test]
fn serial_round_wraparound() {
    let j = job(1, 7, 32, 0, 1, 2);
    let mut core = core_with(&[&j], 1);
    let v = vals(32, |l| l as u32);
    // Jump the set to a round near the wrap point (newer than 0 as a serial number).
    let near = 0x7fff_fffe_u32; // set 0 (even)
    feed(&mut core, addr(1, 0), &data(&j, 0, 0, near, &v));
    let out = feed(&mut core, addr(1, 1), &data(&j, 1, 0, near, &v));
    assert_eq!(out.len(), 2);
    // Walk rounds across 2^31 and 2^32 by steps of 2 on set 0.
    let mut q = near;
    for _ in 0..4 {
        q = q.wrapping_add(0x4000_0000);
        feed(&mut core, addr(1, 0), &data(&j, 0, 0, q, &v));
        let out = feed(&mut core, addr(1, 1), &data(&j, 1, 0, q, &v));
        assert_eq!(out.len(), 2, "round {q:#x} accepted as newer");
        assert_eq!(hdr(&out[0].1).round, q);
        // The previous round is now older: stale.
        let prev = q.wrapping_sub(0x4000_0000);
        assert!(feed(&mut core, addr(1, 0), &data(&j, 0, 0, prev, &v)).is_empty());
    }
    assert_eq!(q, near, "went all the way around");
    assert_eq!(job_drops(&core, 1)[DropReason::Stale as usize], 4);
    // Consecutive rounds across u32::MAX -> 0, on both sets (each set first walked up in
    // steps below 2^31, since a jump of 2^31 or more reads as older).
    let mut core = core_with(&[&j], 1);
    let walk = [0x3fff_fffe_u32, 0x7fff_fffe, 0xbfff_fffe];
    let seq = walk
        .iter()
        .flat_map(|&q| [q, q + 1])
        .chain([u32::MAX - 1, u32::MAX, 0, 1, 2, 3]);
    for q in seq {
        feed(&mut core, addr(1, 0), &data(&j, 0, 0, q, &v));
        let out = feed(&mut core, addr(1, 1), &data(&j, 1, 0, q, &v));
        assert_eq!(out.len(), 2, "round {q}");
    }
}

#[test]
fn probe_reports_status_to_registered_address() {
    let j = job(3, 9, 64, 10, 4, 3);
    let mut core = core_with(&[&j], 16);
    let v = vals(64, |l| l as u32);
    feed(&mut core, addr(3, 2), &data(&j, 2, 12, 0, &v));
    let out = feed(&mut core, addr(3, 1), &probe(&j, 1, 12, 0));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, addr(3, 1));
    assert_eq!(out[0].1.len(), 32);
    let h = hdr(&out[0].1);
    assert_eq!(h.kind, Kind::Status);
    assert_eq!(
        (h.round, h.count, h.bitmap, h.rank, h.lanes, h.flags, h.offset),
        (0, 1, 0b100, 1, 0, 0, 1012)
    );
    assert_eq!(core.counters().job(3).unwrap().probes, 1);
    assert_eq!(
        core.slot_set(12, 0).unwrap().1,
        1,
        "a probe changes nothing"
    );
}

#[test]
fn probe_of_unknown_job_or_old_epoch_gets_a_nack() {
    let j = job(3, 9, 64, 10, 4, 3);
    let mut core = core_with(&[&j], 16);
    let stranger: SocketAddr = "192.0.2.7:5555".parse().unwrap();
    // Unknown job: NACK_UNKNOWN_JOB to the probe's source (no registered address exists).
    let mut other = j.clone();
    other.id = 4;
    let p = probe(&other, 1, 12, 5);
    let out = feed(&mut core, stranger, &p);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, stranger);
    assert_eq!(
        out[0].1.len(),
        p.len(),
        "same size as the probe: no amplification"
    );
    let h = hdr(&out[0].1);
    assert_eq!(h.check_reply(), Ok(()));
    assert_eq!(
        (h.kind, h.flags, h.count, h.bitmap, h.round, h.lanes),
        (Kind::Status, NACK_UNKNOWN_JOB, 0, 0, 0, 0)
    );
    assert_eq!(
        (h.job, h.rank, h.slot, h.set, h.offset, h.epoch),
        (4, 1, 12, 1, 1012, 9),
        "the rest of the probe's header is echoed"
    );
    // Old epoch: NACK_BAD_EPOCH.
    let mut old = j.clone();
    old.epoch = 8;
    let out = feed(&mut core, addr(3, 1), &probe(&old, 1, 12, 0));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, addr(3, 1));
    assert_eq!(hdr(&out[0].1).flags, NACK_BAD_EPOCH);
    // DATA of an unknown job or old epoch gets nothing.
    assert!(feed(
        &mut core,
        addr(3, 1),
        &data(&old, 1, 12, 0, &vals(64, |_| 1))
    )
    .is_empty());
    let c = core.counters();
    assert_eq!(c.drops[DropReason::UnknownJob as usize], 1);
    assert_eq!(c.job(3).unwrap().drops[DropReason::BadEpoch as usize], 2);
    assert_eq!(
        c.job(3).unwrap().probes,
        0,
        "a NACK is not an answered probe"
    );
    assert_eq!(c.packets_out, 2, "NACKs count in packets_out");
}

#[test]
fn old_epoch_packet_after_recreate_is_bad_epoch() {
    // Issue 11: "Unregister then register the same id and token: a delayed packet of the old
    // run is accepted as the first contribution and the real one dropped as duplicate (999+5
    // instead of 7+5)". With epochs the delayed packet is bad_epoch.
    let old = job(1, 0x1111, 32, 0, 4, 2);
    let mut core = core_with(&[&old], 4);
    let delayed = data(&old, 0, 2, 0, &vals(32, |_| 999));
    core.unregister(1).unwrap();
    let new = job(1, 0x2222, 32, 0, 4, 2);
    core.create(new.clone()).unwrap();
    assert!(feed(&mut core, addr(1, 0), &delayed).is_empty());
    assert_eq!(
        core.slot_set(2, 0).unwrap().1,
        0,
        "not a first contribution"
    );
    assert!(feed(
        &mut core,
        addr(1, 0),
        &data(&new, 0, 2, 0, &vals(32, |_| 7))
    )
    .is_empty());
    let out = feed(
        &mut core,
        addr(1, 1),
        &data(&new, 1, 2, 0, &vals(32, |_| 5)),
    );
    assert_eq!(out.len(), 2);
    assert_eq!(lanes_of(&out[0].1), vec![12; 32], "7 + 5, not 999 + 5");
    let jc = *core.counters().job(1).unwrap();
    assert_eq!(jc.drops[DropReason::BadEpoch as usize], 1);
    assert_eq!(jc.drops[DropReason::Duplicate as usize], 0);
    // The same through `create` replacing the job in place (no unregister in between).
    let newer = job(1, 0x3333, 32, 0, 4, 2);
    let pending = data(&new, 0, 3, 0, &vals(32, |_| 999));
    core.create(newer.clone()).unwrap();
    assert!(feed(&mut core, addr(1, 0), &pending).is_empty());
    feed(
        &mut core,
        addr(1, 0),
        &data(&newer, 0, 3, 0, &vals(32, |_| 7)),
    );
    let out = feed(
        &mut core,
        addr(1, 1),
        &data(&newer, 1, 3, 0, &vals(32, |_| 5)),
    );
    assert_eq!(lanes_of(&out[0].1), vec![12; 32]);
}

#[test]
fn off_path_injection_is_bad_source() {
    let j = job(1, 7, 32, 0, 4, 2);
    let mut core = core_with(&[&j], 4);
    let attacker: SocketAddr = "10.0.1.1:4001".parse().unwrap(); // rank 0's IP, other port
    let elsewhere: SocketAddr = "192.0.2.66:4000".parse().unwrap();
    for from in [attacker, elsewhere, addr(1, 1)] {
        // Right job, epoch, rank 0's slot and round: only the source is wrong (rank 1's
        // address is a registered one, but not rank 0's).
        assert!(feed(&mut core, from, &data(&j, 0, 1, 0, &vals(32, |_| 666))).is_empty());
        assert!(feed(&mut core, from, &probe(&j, 0, 1, 0)).is_empty());
    }
    let c = core.counters();
    assert_eq!(c.job(1).unwrap().drops[DropReason::BadSource as usize], 6);
    assert_eq!((c.packets_out, c.job(1).unwrap().data_in), (0, 0));
    let (round, count, bitmap, lanes) = core.slot_set(1, 0).unwrap();
    assert_eq!(
        (round, count, bitmap, lanes[0]),
        (0, 0, 0, 0),
        "no register changed"
    );
    // The real worker is unaffected.
    feed(&mut core, addr(1, 0), &data(&j, 0, 1, 0, &vals(32, |_| 1)));
    let out = feed(&mut core, addr(1, 1), &data(&j, 1, 1, 0, &vals(32, |_| 2)));
    assert_eq!(lanes_of(&out[0].1), vec![3; 32]);
}

#[test]
fn forged_result_and_status_are_bad_kind() {
    let j = job(1, 7, 32, 0, 4, 2);
    let mut core = core_with(&[&j], 4);
    let mut r = header(Kind::Result, Op::Add, &j, 0, 1, 0, 32);
    r.count = 2;
    r.bitmap = 0b11;
    let mut s = header(Kind::Status, Op::Add, &j, 1, 1, 0, 0);
    s.count = 2;
    assert!(feed(&mut core, addr(1, 0), &raw(&r, &vals(32, |_| 5))).is_empty());
    assert!(feed(&mut core, addr(1, 1), &raw(&s, &[])).is_empty());
    let c = core.counters();
    assert_eq!(c.job(1).unwrap().drops[DropReason::BadKind as usize], 2);
    assert_eq!(core.slot_set(1, 0).unwrap().1, 0);
}

#[test]
fn lane_counts_outside_the_choices() {
    let j = job(1, 7, 64, 0, 4, 2);
    let mut core = core_with(&[&j], 4);
    let from = addr(1, 0);
    // 48 lanes (not a choice) with a consistent length: the job exists → bad_lanes.
    feed(&mut core, from, &data(&j, 0, 0, 0, &vals(48, |_| 1)));
    // 2048 lanes (a choice, not the job's) → bad_lanes.
    feed(&mut core, from, &data(&j, 0, 0, 0, &vals(2048, |_| 1)));
    // 48 lanes for a job that does not exist → unknown_job (the job check comes first).
    let mut other = j.clone();
    other.id = 2;
    feed(&mut core, from, &data(&other, 0, 0, 0, &vals(48, |_| 1)));
    // DATA with 0 lanes, PROBE with lanes, a length that disagrees with the lane field →
    // malformed.
    feed(&mut core, from, &data(&j, 0, 0, 0, &[]));
    feed(
        &mut core,
        from,
        &pkt(Kind::Probe, Op::Add, &j, 0, 0, 0, &[1]),
    );
    let good = data(&j, 0, 0, 0, &vals(64, |_| 1));
    feed(&mut core, from, &good[..good.len() - 4]);
    let c = core.counters();
    assert_eq!(c.job(1).unwrap().drops[DropReason::BadLanes as usize], 2);
    assert_eq!(c.drops[DropReason::UnknownJob as usize], 1);
    assert_eq!(c.drops[MALFORMED], 3);
    // A switch with a smaller capability refuses the job outright.
    let mut small = SwitchCore::try_new_shard(4, 0, 1, 256).unwrap();
    let mut big = j.clone();
    big.lanes = 512;
    assert!(matches!(small.create(big), Err(RegisterError::Invalid(_))));
    // And its registers hold at most 256 lanes: a 512-lane DATA for a 256-lane job is bad_lanes.
    let j256 = job(1, 7, 256, 0, 4, 1);
    small.create(j256.clone()).unwrap();
    feed(
        &mut small,
        addr(1, 0),
        &data(&j256, 0, 0, 0, &vals(512, |_| 1)),
    );
    assert_eq!(
        small.counters().job(1).unwrap().drops[DropReason::BadLanes as usize],
        1
    );
}

#[test]
fn every_drop_reason_is_counted() {
    let j = job(5, 0xabcd, 32, 4, 4, 2);
    let mut core = core_with(&[&j], 16);
    let v = vals(32, |l| l as u32);
    let from = addr(5, 0);
    let good = data(&j, 0, 4, 0, &v);
    // 0 malformed (global).
    feed(&mut core, from, &good[..good.len() - 1]);
    // 1 unknown job (global).
    let mut other = j.clone();
    other.id = 6;
    feed(&mut core, from, &data(&other, 0, 4, 0, &v));
    // 2 bad epoch.
    let mut bad = j.clone();
    bad.epoch ^= 1;
    feed(&mut core, from, &data(&bad, 0, 4, 0, &v));
    // 3 bad rank.
    feed(&mut core, from, &data(&j, 2, 4, 0, &v));
    // 9 bad source (rank 1 from rank 0's address).
    feed(&mut core, from, &data(&j, 1, 4, 0, &v));
    // 4 bad slot (below and above the range).
    feed(&mut core, from, &data(&j, 0, 3, 0, &v));
    feed(&mut core, from, &data(&j, 0, 8, 0, &v));
    // 5 bad lanes.
    feed(&mut core, from, &data(&j, 0, 4, 0, &vals(64, |_| 0)));
    // 6 bad kind.
    feed(
        &mut core,
        from,
        &pkt(Kind::Result, Op::Add, &j, 0, 4, 0, &v),
    );
    feed(
        &mut core,
        from,
        &pkt(Kind::Status, Op::Add, &j, 0, 4, 0, &[]),
    );
    // 7 duplicate.
    feed(&mut core, from, &good);
    feed(&mut core, from, &good);
    // 8 stale.
    feed(&mut core, from, &data(&j, 0, 5, 3, &v));
    feed(&mut core, from, &data(&j, 0, 5, 1, &v));
    let c = core.counters();
    assert_eq!(c.drops, [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(c.job(5).unwrap().drops, [0, 0, 1, 1, 2, 1, 2, 1, 1, 1]);
    assert_eq!(c.packets_in, 14);
    assert_eq!(c.packets_out, 0);
    assert_eq!(c.job(5).unwrap().data_in, 2);
}

/// A packet that fails several checks is counted under the first in the ingress order:
/// malformed → unknown_job → bad_epoch → bad_rank → bad_source → bad_slot → bad_kind →
/// bad_lanes.
#[test]
fn ingress_order_counts_the_first_failing_check() {
    let j = job(5, 0xabcd, 32, 4, 4, 2);
    let mut core = core_with(&[&j], 16);
    let stranger: SocketAddr = "192.0.2.1:1".parse().unwrap();
    let base = |kind: Kind, lanes: u16| header(kind, Op::Add, &j, 0, 4, 0, lanes);
    let cases: Vec<(Header, SocketAddr, Option<DropReason>)> = vec![
        // malformed (flags) + unknown job
        (
            Header {
                job: 9,
                flags: 1,
                ..base(Kind::Data, 32)
            },
            stranger,
            None,
        ),
        // unknown job + bad epoch + bad rank + bad source
        (
            Header {
                job: 9,
                epoch: 1,
                rank: 7,
                ..base(Kind::Data, 32)
            },
            stranger,
            None,
        ),
        // bad epoch + bad rank + bad source + bad slot + bad kind + bad lanes
        (
            Header {
                epoch: 1,
                rank: 7,
                slot: 0,
                ..base(Kind::Result, 64)
            },
            stranger,
            Some(DropReason::BadEpoch),
        ),
        // bad rank + bad source + bad slot
        (
            Header {
                rank: 7,
                slot: 0,
                ..base(Kind::Data, 32)
            },
            stranger,
            Some(DropReason::BadRank),
        ),
        // bad source + bad slot + bad kind
        (
            Header {
                slot: 0,
                ..base(Kind::Result, 32)
            },
            stranger,
            Some(DropReason::BadSource),
        ),
        // bad slot + bad kind + bad lanes
        (
            Header {
                slot: 0,
                ..base(Kind::Result, 64)
            },
            addr(5, 0),
            Some(DropReason::BadSlot),
        ),
        // bad kind + bad lanes
        (
            base(Kind::Result, 64),
            addr(5, 0),
            Some(DropReason::BadKind),
        ),
    ];
    let mut want_job = [0u64; DropReason::COUNT];
    for (h, from, reason) in &cases {
        let lanes = vec![1; h.lanes as usize];
        assert!(feed(&mut core, *from, &raw(h, &lanes)).is_empty());
        if let Some(r) = reason {
            want_job[*r as usize] += 1;
        }
    }
    let c = core.counters();
    let mut want_global = [0u64; DropReason::COUNT];
    want_global[MALFORMED] = 1;
    want_global[DropReason::UnknownJob as usize] = 1;
    assert_eq!(c.drops, want_global);
    assert_eq!(c.job(5).unwrap().drops, want_job);
}

#[test]
fn ip_options_are_counted_malformed() {
    let j = job(1, 7, 32, 0, 4, 1);
    let mut core = core_with(&[&j], 4);
    core.drop_ip_options();
    let c = core.counters();
    assert_eq!((c.packets_in, c.drops[MALFORMED], c.packets_out), (1, 1, 0));
    // Through a sharded core too (the I/O layer reports them there).
    let sc = ShardedCore::new(4, 2, 64).unwrap();
    sc.drop_ip_options(&data(&j, 0, 1, 0, &vals(32, |_| 1)));
    sc.drop_ip_options(b"x");
    let c = sc.counters();
    assert_eq!((c.packets_in, c.drops[MALFORMED]), (2, 2));
}

#[test]
fn jobs_are_isolated() {
    let a = job(1, 11, 32, 0, 4, 2);
    let b = job(2, 22, 64, 4, 4, 3);
    let mut core = core_with(&[&a, &b], 8);
    // Job a's packet aimed at job b's slot: bad_slot for a, b's registers untouched.
    feed(&mut core, addr(1, 0), &data(&a, 0, 5, 0, &vals(32, |_| 9)));
    assert_eq!(core.slot_set(5, 0).unwrap().1, 0);
    // Job a's epoch under job b's id: bad_epoch for b.
    let mut forged = a.clone();
    forged.id = 2;
    feed(
        &mut core,
        addr(2, 0),
        &data(&forged, 0, 5, 0, &vals(64, |_| 9)),
    );
    // Interleave completions of both.
    for r in 0..2u8 {
        feed(
            &mut core,
            addr(1, r as usize),
            &data(&a, r, 1, 0, &vals(32, |_| 1)),
        );
    }
    let mut out = Vec::new();
    for r in 0..3u8 {
        out = feed(
            &mut core,
            addr(2, r as usize),
            &data(&b, r, 5, 0, &vals(64, |_| 2)),
        );
    }
    assert_eq!(out.len(), 3);
    assert!(out
        .iter()
        .all(|(d, _)| d.ip().to_string().starts_with("10.0.2.")));
    assert_eq!(lanes_of(&out[0].1), vec![6; 64]);
    let c = core.counters();
    let (ca, cb) = (c.job(1).unwrap(), c.job(2).unwrap());
    assert_eq!(ca.drops[DropReason::BadSlot as usize], 1);
    assert_eq!(cb.drops[DropReason::BadEpoch as usize], 1);
    assert_eq!((ca.completions, cb.completions), (1, 1));
    // Unregistering a leaves b working and a unknown.
    core.unregister(1).unwrap();
    feed(&mut core, addr(1, 0), &data(&a, 0, 1, 1, &vals(32, |_| 1)));
    assert_eq!(core.counters().drops[DropReason::UnknownJob as usize], 1);
    let out = feed(&mut core, addr(2, 0), &data(&b, 0, 5, 0, &vals(64, |_| 2)));
    assert_eq!(out.len(), 1, "b still answers retransmissions");
    assert!(core.unregister(1).is_err());
}

#[test]
fn create_rules_and_reset() {
    let mut core = SwitchCore::new(16);
    let a = job(1, 1, 32, 0, 8, 2);
    core.create(a.clone()).unwrap();
    let v = vals(32, |l| l as u32);
    // Drive slot 3 to round 5.
    for q in 0..=5 {
        for r in 0..2 {
            feed(&mut core, addr(1, r), &data(&a, r as u8, 3, q, &v));
        }
    }
    assert_eq!(core.slot_set(3, 1).unwrap().0, 5);
    // Overlap with another job.
    let b = job(2, 1, 32, 7, 4, 2);
    assert!(matches!(
        core.create(b),
        Err(RegisterError::Overlap { other: 1, .. })
    ));
    // Invalid: out of pool, bad lanes, no workers, too many workers, epoch 0, duplicate
    // addresses.
    for bad in [
        job(3, 1, 32, 10, 7, 2),
        job(3, 1, 48, 8, 2, 2),
        job(3, 1, 32, 8, 2, 0),
        job(3, 1, 32, 8, 2, 33),
        job(3, 0, 32, 8, 2, 2),
        {
            let mut d = job(3, 1, 32, 8, 2, 2);
            d.workers[1].addr = d.workers[0].addr;
            d
        },
    ] {
        assert!(
            matches!(core.create(bad.clone()), Err(RegisterError::Invalid(_))),
            "{bad:?}"
        );
    }
    // Re-creating job 1 (new epoch, same id) replaces it: registers reset, counters restart.
    let a2 = job(1, 2, 32, 0, 8, 2);
    core.create(a2.clone()).unwrap();
    for set in 0..2 {
        let (round, count, bitmap, _) = core.slot_set(3, set).unwrap();
        assert_eq!((round, count, bitmap), (0, 0, 0));
    }
    assert_eq!(core.counters().job(1).unwrap().data_in, 0);
    assert_eq!(core.job(1).unwrap().epoch, 2);
    feed(&mut core, addr(1, 0), &data(&a2, 0, 3, 0, &v));
    let out = feed(&mut core, addr(1, 1), &data(&a2, 1, 3, 0, &v));
    assert_eq!(out.len(), 2);
    assert_eq!(lanes_of(&out[0].1), vals(32, |l| 2 * l as u32));
    // Another job takes the slots after job 1 leaves: reset again.
    core.unregister(1).unwrap();
    let c = job(9, 9, 32, 0, 8, 1);
    core.create(c.clone()).unwrap();
    assert_eq!(core.slot_set(3, 0).unwrap().1, 0);
}

#[test]
fn register_memory_is_bounded() {
    assert!(matches!(
        SwitchCore::try_new_shard(4_000_000_000, 0, 1, 2048),
        Err(CoreError::TooLarge { .. })
    ));
    assert!(matches!(
        ShardedCore::new(65_537, 4, 2048),
        Err(CoreError::TooLarge { .. })
    ));
    assert!(ShardedCore::new(65_536, 4, 2048).is_ok(), "exactly 1 GiB");
    assert!(matches!(
        ShardedCore::new(16, 1, 100),
        Err(CoreError::MaxLanes(100))
    ));
    assert!(matches!(
        ShardedCore::new(0, 1, 64),
        Err(CoreError::NoSlots)
    ));
}

#[test]
fn sharded_core_routes_by_slot() {
    let sc = ShardedCore::new(10, 3, 64).unwrap();
    let j = job(1, 1, 32, 0, 10, 2);
    sc.create(j.clone()).unwrap();
    let v = vals(32, |l| l as u32);
    let mut outs = 0;
    for slot in 0..10 {
        for r in 0..2u8 {
            sc.handle(
                addr(1, r as usize),
                &data(&j, r, slot, 0, &v),
                &mut |_, _| outs += 1,
            );
        }
    }
    assert_eq!(outs, 20);
    let c = sc.counters();
    assert_eq!(c.packets_in, 20);
    assert_eq!(c.jobs.len(), 1);
    assert_eq!(c.job(1).unwrap().completions, 10);
    // Each shard saw only its slots.
    for s in 0..3 {
        let n = sc.shard(s).counters().job(1).unwrap().completions;
        assert_eq!(n, (0..10).filter(|x| x % 3 == s as u32).count() as u64);
    }
    // A shard driven directly with a foreign slot counts bad_slot.
    let mut sh = sc.shard(1);
    sh.handle(addr(1, 0), &data(&j, 0, 0, 1, &v), &mut |_, _| {});
    assert_eq!(
        sh.counters().job(1).unwrap().drops[DropReason::BadSlot as usize],
        1
    );
    drop(sh);
    sc.unregister(1).unwrap();
    assert!(sc.counters().jobs.is_empty());
}

#[test]
fn single_worker_job_completes_immediately() {
    let j = job(1, 1, 32, 0, 2, 1);
    let mut core = core_with(&[&j], 2);
    for q in 0..4 {
        let out = feed(&mut core, addr(1, 0), &data(&j, 0, 1, q, &vals(32, |_| q)));
        assert_eq!(out.len(), 1);
        assert_eq!(lanes_of(&out[0].1), vec![q; 32]);
    }
}
