//! Slot state machine tests against docs/wire.md, through `SwitchCore::handle`.

use std::net::SocketAddr;

use sketchreduce_switch::{RegisterError, Registered, ShardedCore, SwitchCore};
use sketchreduce_wire::packet::build;
use sketchreduce_wire::{DropReason, Header, JobSpec, Kind, Op, Packet, WorkerSpec};

fn addr(job: u16, rank: usize) -> SocketAddr {
    format!("10.0.{job}.{}:4000", rank + 1).parse().unwrap()
}

fn job(id: u16, token: u32, lanes: u16, base: u32, count: u32, n: usize) -> JobSpec {
    JobSpec {
        id,
        token,
        lanes,
        slot_base: base,
        slot_count: count,
        workers: (0..n).map(|r| WorkerSpec::at(addr(id, r))).collect(),
    }
}

#[allow(clippy::too_many_arguments)]
fn pkt(kind: Kind, op: Op, j: &JobSpec, rank: u8, slot: u32, round: u32, lanes: &[u32]) -> Vec<u8> {
    let h = Header {
        kind,
        op,
        rank,
        job: j.id,
        lanes: lanes.len() as u16,
        token: j.token,
        slot,
        set: (round & 1) as u8,
        count: 0,
        round,
        offset: 1000 + slot,
        bitmap: 0,
    };
    let mut buf = vec![0u8; h.packet_len()];
    build(&h, lanes, &mut buf);
    buf
}

fn data(j: &JobSpec, rank: u8, slot: u32, round: u32, lanes: &[u32]) -> Vec<u8> {
    pkt(Kind::Data, Op::Add, j, rank, slot, round, lanes)
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
    Packet::new_checked(d).unwrap().header()
}

fn job_drops(core: &SwitchCore, id: u16) -> [u64; 9] {
    core.counters()
        .jobs
        .iter()
        .find(|(i, _)| *i == id)
        .map(|(_, c)| c.drops)
        .unwrap()
}

fn vals(lanes: usize, f: impl Fn(usize) -> u32) -> Vec<u32> {
    (0..lanes).map(f).collect()
}

#[test]
fn aggregates_in_any_order_and_multicasts() {
    let j = job(1, 7, 32, 0, 4, 3);
    for order in [[0u8, 1, 2], [2, 0, 1], [1, 2, 0]] {
        let mut core = SwitchCore::new(8);
        core.register(j.clone()).unwrap();
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
            assert_eq!(h.slot, 2);
            assert_eq!(h.round, 0);
            assert_eq!(h.offset, 1002);
            assert_eq!(h.rank, order[2], "header of the completing packet");
            assert_eq!(lanes_of(d), vals(32, |l| 6000 + 3 * l as u32));
        }
        let c = core.counters();
        assert_eq!(c.packets_in, 3);
        assert_eq!(c.packets_out, 3);
        let jc = c.jobs[0].1;
        assert_eq!(jc.data_in, 3);
        assert_eq!(jc.completions, 1);
        assert_eq!(jc.results_multicast, 3);
    }
}

#[test]
fn ops_wrap_or_max() {
    let j = job(1, 7, 32, 0, 4, 2);
    let mut core = SwitchCore::new(4);
    core.register(j.clone()).unwrap();
    let a = vals(32, |l| if l == 0 { u32::MAX } else { 0x0F0 + l as u32 });
    let b = vals(32, |l| if l == 0 { 2 } else { 0x00F });
    feed(
        &mut core,
        addr(1, 0),
        &pkt(Kind::Data, Op::Add, &j, 0, 0, 0, &a),
    );
    let out = feed(
        &mut core,
        addr(1, 1),
        &pkt(Kind::Data, Op::Add, &j, 1, 0, 0, &b),
    );
    let l = lanes_of(&out[0].1);
    assert_eq!(l[0], 1, "wrapping add");
    assert_eq!(l[1], 0x0F0 + 1 + 0x00F);
    feed(
        &mut core,
        addr(1, 0),
        &pkt(Kind::Data, Op::Or, &j, 0, 1, 0, &a),
    );
    let out = feed(
        &mut core,
        addr(1, 1),
        &pkt(Kind::Data, Op::Or, &j, 1, 1, 0, &b),
    );
    assert_eq!(lanes_of(&out[0].1)[1], (0x0F0 + 1) | 0x00F);
    feed(
        &mut core,
        addr(1, 0),
        &pkt(Kind::Data, Op::Max, &j, 0, 2, 0, &a),
    );
    let out = feed(
        &mut core,
        addr(1, 1),
        &pkt(Kind::Data, Op::Max, &j, 1, 2, 0, &b),
    );
    let l = lanes_of(&out[0].1);
    assert_eq!(l[0], u32::MAX);
    assert_eq!(l[1], 0x0F1);
}

#[test]
fn duplicates_before_and_after_completion() {
    let j = job(1, 7, 32, 0, 4, 2);
    let mut core = SwitchCore::new(4);
    core.register(j.clone()).unwrap();
    let v0 = vals(32, |l| l as u32);
    let v1 = vals(32, |l| 100 * l as u32);
    let p0 = data(&j, 0, 1, 0, &v0);
    assert!(feed(&mut core, addr(1, 0), &p0).is_empty());
    // Retransmission before completion: nothing changes.
    assert!(feed(&mut core, addr(1, 0), &p0).is_empty());
    assert_eq!(job_drops(&core, 1)[DropReason::Duplicate as usize], 1);
    let out = feed(&mut core, addr(1, 1), &data(&j, 1, 1, 0, &v1));
    assert_eq!(out.len(), 2);
    let want = vals(32, |l| 101 * l as u32);
    assert_eq!(
        lanes_of(&out[0].1),
        want,
        "the duplicate was not added twice"
    );
    // Retransmission after completion: the stored result, unicast to the sender (from any
    // address: the switch answers the source).
    let from: SocketAddr = "192.0.2.9:555".parse().unwrap();
    let out = feed(&mut core, from, &data(&j, 1, 1, 0, &v1));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, from);
    assert_eq!(hdr(&out[0].1).kind, Kind::Result);
    assert_eq!(hdr(&out[0].1).count, 2);
    assert_eq!(hdr(&out[0].1).bitmap, 0b11);
    assert_eq!(lanes_of(&out[0].1), want);
    let c = core.counters().jobs[0].1;
    assert_eq!(c.results_unicast, 1);
    assert_eq!(c.completions, 1);
    assert_eq!(c.data_in, 2);
}

#[test]
fn shadow_sets_across_rounds_and_stale() {
    let j = job(1, 7, 32, 0, 1, 2);
    let mut core = SwitchCore::new(1);
    core.register(j.clone()).unwrap();
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
fn serial_round_wraparound() {
    let j = job(1, 7, 32, 0, 1, 2);
    let mut core = SwitchCore::new(1);
    core.register(j.clone()).unwrap();
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
    let mut core = SwitchCore::new(1);
    core.register(j.clone()).unwrap();
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
fn probe_reports_status_and_changes_nothing() {
    let j = job(3, 9, 64, 10, 4, 3);
    let mut core = SwitchCore::new(16);
    core.register(j.clone()).unwrap();
    let v = vals(64, |l| l as u32);
    feed(&mut core, addr(3, 2), &data(&j, 2, 12, 0, &v));
    let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let probe = pkt(Kind::Probe, Op::Add, &j, 1, 12, 0, &[]);
    let out = feed(&mut core, from, &probe);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, from);
    assert_eq!(out[0].1.len(), 32);
    let h = hdr(&out[0].1);
    assert_eq!(h.kind, Kind::Status);
    assert_eq!(
        (h.round, h.count, h.bitmap, h.rank, h.lanes),
        (0, 1, 0b100, 1, 0)
    );
    assert_eq!(core.counters().jobs[0].1.probes, 1);
    assert_eq!(core.slot_set(12, 0).unwrap().1, 1);
}

#[test]
fn every_drop_reason_is_counted() {
    let j = job(5, 0xabcd, 32, 4, 4, 2);
    let mut core = SwitchCore::new(16);
    core.register(j.clone()).unwrap();
    let v = vals(32, |l| l as u32);
    let from = addr(5, 0);
    let good = data(&j, 0, 4, 0, &v);
    // 0 malformed (global).
    feed(&mut core, from, &good[..good.len() - 1]);
    // 1 unknown job (global).
    let mut other = j.clone();
    other.id = 6;
    feed(&mut core, from, &data(&other, 0, 4, 0, &v));
    // 2 bad token.
    let mut bad = j.clone();
    bad.token ^= 1;
    feed(&mut core, from, &data(&bad, 0, 4, 0, &v));
    // 3 bad rank.
    feed(&mut core, from, &data(&j, 2, 4, 0, &v));
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
    assert_eq!(c.drops, [1, 1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(c.jobs[0].1.drops, [0, 0, 1, 1, 2, 1, 2, 1, 1]);
    assert_eq!(c.packets_in, 13);
    assert_eq!(c.packets_out, 0);
    assert_eq!(c.jobs[0].1.data_in, 2);
}

#[test]
fn jobs_are_isolated() {
    let a = job(1, 11, 32, 0, 4, 2);
    let b = job(2, 22, 64, 4, 4, 3);
    let mut core = SwitchCore::new(8);
    core.register(a.clone()).unwrap();
    core.register(b.clone()).unwrap();
    // Job a's packet aimed at job b's slot: bad_slot for a, b's registers untouched.
    feed(&mut core, addr(1, 0), &data(&a, 0, 5, 0, &vals(32, |_| 9)));
    assert_eq!(core.slot_set(5, 0).unwrap().1, 0);
    // Job a's token under job b's id: bad_token for b.
    let mut forged = a.clone();
    forged.id = 2;
    feed(
        &mut core,
        addr(1, 0),
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
    let ca = c.jobs.iter().find(|(i, _)| *i == 1).unwrap().1;
    let cb = c.jobs.iter().find(|(i, _)| *i == 2).unwrap().1;
    assert_eq!(ca.drops[DropReason::BadSlot as usize], 1);
    assert_eq!(cb.drops[DropReason::BadToken as usize], 1);
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
fn registration_rules_and_reset() {
    let mut core = SwitchCore::new(16);
    let a = job(1, 1, 32, 0, 8, 2);
    assert_eq!(core.register(a.clone()).unwrap(), Registered::New);
    // Identical again: accepted, nothing reset.
    let v = vals(32, |l| l as u32);
    feed(&mut core, addr(1, 0), &data(&a, 0, 3, 0, &v));
    assert_eq!(core.register(a.clone()).unwrap(), Registered::Existing);
    assert_eq!(core.slot_set(3, 0).unwrap().1, 1);
    // Different spec under the same id.
    let mut a2 = a.clone();
    a2.token = 2;
    assert!(matches!(core.register(a2), Err(RegisterError::Conflict(1))));
    // Overlap.
    let b = job(2, 1, 32, 7, 4, 2);
    assert!(matches!(
        core.register(b),
        Err(RegisterError::Overlap { other: 1, .. })
    ));
    // Invalid: out of pool, bad lanes, no workers, too many workers.
    assert!(matches!(
        core.register(job(3, 1, 32, 10, 7, 2)),
        Err(RegisterError::Invalid(_))
    ));
    assert!(matches!(
        core.register(job(3, 1, 48, 8, 2, 2)),
        Err(RegisterError::Invalid(_))
    ));
    assert!(matches!(
        core.register(job(3, 1, 32, 8, 2, 0)),
        Err(RegisterError::Invalid(_))
    ));
    assert!(matches!(
        core.register(job(3, 1, 32, 8, 2, 33)),
        Err(RegisterError::Invalid(_))
    ));
    // Drive slot 3 to round 5, then re-register the job (after unregistering): the slot's
    // registers are reset and round 0 works again.
    for q in 1..=5 {
        for r in 0..2 {
            feed(&mut core, addr(1, r), &data(&a, r as u8, 3, q, &v));
        }
    }
    assert_eq!(core.slot_set(3, 1).unwrap().0, 5);
    core.unregister(1).unwrap();
    // Another job takes the slots, then leaves; then job 1 comes back.
    let c = job(9, 9, 32, 0, 8, 1);
    core.register(c.clone()).unwrap();
    core.unregister(9).unwrap();
    core.register(a.clone()).unwrap();
    for set in 0..2 {
        let (round, count, bitmap, _) = core.slot_set(3, set).unwrap();
        assert_eq!((round, count, bitmap), (0, 0, 0));
    }
    feed(&mut core, addr(1, 0), &data(&a, 0, 3, 0, &v));
    let out = feed(&mut core, addr(1, 1), &data(&a, 1, 3, 0, &v));
    assert_eq!(out.len(), 2);
    assert_eq!(lanes_of(&out[0].1), vals(32, |l| 2 * l as u32));
}

#[test]
fn sharded_core_routes_by_slot() {
    let sc = ShardedCore::new(10, 3);
    let j = job(1, 1, 32, 0, 10, 2);
    sc.register(j.clone()).unwrap();
    assert_eq!(sc.register(j.clone()).unwrap(), Registered::Existing);
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
    assert_eq!(c.jobs[0].1.completions, 10);
    // Each shard saw only its slots.
    for s in 0..3 {
        let n = sc.shard(s).counters().jobs[0].1.completions;
        assert_eq!(n, (0..10).filter(|x| x % 3 == s as u32).count() as u64);
    }
    // A shard driven directly with a foreign slot counts bad_slot.
    let mut sh = sc.shard(1);
    sh.handle(addr(1, 0), &data(&j, 0, 0, 1, &v), &mut |_, _| {});
    assert_eq!(
        sh.counters().jobs[0].1.drops[DropReason::BadSlot as usize],
        1
    );
    drop(sh);
    sc.unregister(1).unwrap();
    assert!(sc.counters().jobs.is_empty());
}

#[test]
fn single_worker_job_completes_immediately() {
    let j = job(1, 1, 32, 0, 2, 1);
    let mut core = SwitchCore::new(2);
    core.register(j.clone()).unwrap();
    for q in 0..4 {
        let out = feed(&mut core, addr(1, 0), &data(&j, 0, 1, q, &vals(32, |_| q)));
        assert_eq!(out.len(), 1);
        assert_eq!(lanes_of(&out[0].1), vec![q; 32]);
    }
}
