//! The aggregation packet parser (`wire::Packet::new_checked`, `wire::Header::parse`) against
//! an independent statement of the format's validity rules (docs/wire.md), plus round trips.

use crate::{sig, variant, Harness};
use sketchreduce_wire::packet::{build, HEADER_LEN, LANE_BYTES, VERSION};
use sketchreduce_wire::{Header, Kind, Op, Packet, LANE_CHOICES};

/// See the module documentation.
#[derive(Debug, Default)]
pub struct PacketHarness;

/// The validity rules of docs/wire.md, read straight from the bytes: length = 32 + 4·lanes,
/// version 2, kind 1..=4, op 0..=2, set ≤ 1, lanes present exactly for DATA and RESULT, and
/// for DATA and PROBE flags = 0 and set = round & 1.
fn valid_by_spec(b: &[u8]) -> bool {
    if b.len() < HEADER_LEN {
        return false;
    }
    let be16 = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    let be32 = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let (kind, op, lanes, set, flags, round) = (b[1], b[2], be16(6), b[16], be16(18), be32(20));
    let has_lanes = kind == 1 || kind == 2;
    let request = kind == 1 || kind == 3;
    b.len() == HEADER_LEN + LANE_BYTES * lanes as usize
        && b[0] == VERSION
        && (1..=4).contains(&kind)
        && op <= 2
        && set <= 1
        && has_lanes == (lanes > 0)
        && (!request || (flags == 0 && u32::from(set) == round & 1))
}

fn header(kind: Kind, lanes: u16, round: u32) -> Header {
    Header {
        kind,
        op: Op::Add,
        rank: 3,
        job: 7,
        lanes,
        epoch: 0x1234_5678,
        slot: 42,
        set: (round & 1) as u8,
        count: 0,
        flags: 0,
        round,
        offset: 9,
        bitmap: 0,
    }
}

impl Harness for PacketHarness {
    fn seeds(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for (kind, lanes) in [
            (Kind::Data, 32),
            (Kind::Data, 64),
            (Kind::Result, 32),
            (Kind::Probe, 0),
            (Kind::Status, 0),
        ] {
            let h = header(kind, lanes, 5);
            let mut buf = vec![0; h.packet_len()];
            let lanes: Vec<u32> = (0..lanes as u32).collect();
            if build(&h, &lanes, &mut buf).is_ok() {
                out.push(buf);
            }
        }
        out
    }

    fn dictionary(&self) -> Vec<Vec<u8>> {
        let mut d: Vec<Vec<u8>> = vec![vec![VERSION], vec![1], vec![2], vec![3], vec![4]];
        d.extend(LANE_CHOICES.iter().map(|l| l.to_be_bytes().to_vec()));
        d
    }

    fn max_len(&self) -> usize {
        HEADER_LEN + 2100 * LANE_BYTES
    }

    fn run(&mut self, input: &[u8]) -> u64 {
        let spec = valid_by_spec(input);
        let p = match Packet::new_checked(input) {
            Ok(p) => p,
            Err(e) => {
                assert!(!spec, "spec-valid packet refused by new_checked: {e}");
                return sig(1, variant(&e));
            }
        };
        // Accessors stay in bounds and agree with each other.
        let lanes: Vec<u32> = p.lanes().collect();
        assert_eq!(lanes.len(), p.lane_count());
        assert_eq!(p.lane_bytes().len(), lanes.len() * LANE_BYTES);
        let mut dst = vec![0; p.lane_count()];
        assert!(p.read_lanes(&mut dst).is_ok());
        assert_eq!(dst, lanes);
        if let Some(&last) = lanes.last() {
            assert_eq!(p.lane(lanes.len() - 1), last);
        }
        match Header::parse(&p) {
            Err(e) => {
                assert!(!spec, "spec-valid packet refused by Header::parse: {e}");
                sig(2, variant(&e))
            }
            Ok(h) => {
                assert!(
                    spec,
                    "Header::parse accepted a packet the spec refuses: {h:?}"
                );
                // Rebuilding from the parsed header and lanes gives back the same bytes.
                let mut buf = vec![0u8; h.packet_len()];
                let n = build(&h, &lanes, &mut buf).expect("build a parsed packet");
                assert_eq!(&buf[..n], input, "parse/build round trip");
                let reply_ok = h.check_reply().is_ok();
                sig(
                    sig(3, h.kind as u64),
                    (h.op as u64) << 8 | (reply_ok as u64) << 16 | (h.lanes > 0) as u64,
                )
            }
        }
    }
}
