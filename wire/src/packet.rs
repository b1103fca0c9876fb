//! The aggregation header: 32 bytes, big-endian, fixed offsets, followed by `lanes` 32-bit
//! big-endian lanes. See `docs/wire.md` for the table this module implements.

use thiserror::Error;

/// Protocol version carried in every packet.
pub const VERSION: u8 = 1;
/// Bytes of the fixed header.
pub const HEADER_LEN: usize = 32;
/// Bytes per lane.
pub const LANE_BYTES: usize = 4;

/// Byte ranges of every header field; the single source of the layout (the P4 generator reads
/// [`FIELDS`] to emit the P4 header type).
pub mod field {
    use core::ops::Range;
    /// Protocol version ([`super::VERSION`]).
    pub const VERSION: Range<usize> = 0..1;
    /// Message kind ([`super::Kind`]).
    pub const KIND: Range<usize> = 1..2;
    /// Combining operation ([`super::Op`]).
    pub const OP: Range<usize> = 2..3;
    /// Sender's rank within the job.
    pub const RANK: Range<usize> = 3..4;
    /// Job id.
    pub const JOB: Range<usize> = 4..6;
    /// Number of 32-bit lanes after the header.
    pub const LANES: Range<usize> = 6..8;
    /// Job token (a shared secret against stray traffic, not cryptography).
    pub const TOKEN: Range<usize> = 8..12;
    /// Absolute slot index in the switch's pool.
    pub const SLOT: Range<usize> = 12..16;
    /// Shadow-copy set, 0 or 1 (`round & 1`).
    pub const SET: Range<usize> = 16..17;
    /// Contributions seen (RESULT, STATUS); 0 in requests.
    pub const COUNT: Range<usize> = 17..18;
    /// Reserved, 0.
    pub const FLAGS: Range<usize> = 18..20;
    /// Round number of this slot's use (serial-number arithmetic, wraps).
    pub const ROUND: Range<usize> = 20..24;
    /// The chunk's offset in the job's stream, in chunks.
    pub const OFFSET: Range<usize> = 24..28;
    /// Workers-seen bitmap (RESULT, STATUS); 0 in requests.
    pub const BITMAP: Range<usize> = 28..32;
}

/// (P4 name, bit width) of every header field in wire order, for the P4 generator.
pub const FIELDS: [(&str, usize); 14] = [
    ("version", 8),
    ("kind", 8),
    ("op", 8),
    ("rank", 8),
    ("job", 16),
    ("lanes", 16),
    ("token", 32),
    ("slot", 32),
    ("set", 8),
    ("count", 8),
    ("flags", 16),
    ("round", 32),
    ("offset", 32),
    ("bitmap", 32),
];

/// Errors from checking a datagram against the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WireError {
    /// Shorter than the header, or than the header plus the lanes it announces.
    #[error("truncated packet: {len} bytes, need {need}")]
    Truncated {
        /// Bytes received.
        len: usize,
        /// Bytes the header requires.
        need: usize,
    },
    /// Bytes beyond the announced lanes.
    #[error("packet has {extra} trailing bytes")]
    Trailing {
        /// Extra bytes.
        extra: usize,
    },
    /// Unknown version.
    #[error("unsupported version {0}")]
    Version(u8),
    /// Unknown kind.
    #[error("unknown kind {0}")]
    Kind(u8),
    /// Unknown op.
    #[error("unknown op {0}")]
    Op(u8),
    /// Set is neither 0 nor 1.
    #[error("set must be 0 or 1, got {0}")]
    Set(u8),
    /// A PROBE or STATUS that carries lanes, or a DATA or RESULT with none.
    #[error("kind {kind:?} cannot carry {lanes} lanes")]
    LaneCount {
        /// Kind of the packet.
        kind: Kind,
        /// Lanes announced.
        lanes: u16,
    },
}

/// What a packet asks for or reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Worker → switch: a contribution to a slot.
    Data = 1,
    /// Switch → worker: a completed slot's aggregate.
    Result = 2,
    /// Worker → switch: "which ranks has this slot seen?" (no lanes).
    Probe = 3,
    /// Switch → worker: answer to a probe; `count`, `bitmap`, `round` describe the slot set.
    Status = 4,
}

impl Kind {
    /// Parses a kind byte.
    pub fn from_u8(v: u8) -> Result<Self, WireError> {
        match v {
            1 => Ok(Kind::Data),
            2 => Ok(Kind::Result),
            3 => Ok(Kind::Probe),
            4 => Ok(Kind::Status),
            other => Err(WireError::Kind(other)),
        }
    }

    /// Whether packets of this kind carry lanes.
    pub fn has_lanes(self) -> bool {
        matches!(self, Kind::Data | Kind::Result)
    }
}

/// How the switch combines a contribution with the slot's lanes. All are operations a P4
/// target can do on `bit<32>`: wrapping add, bitwise or, unsigned max.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    /// Wrapping 32-bit addition (value sketches, dense fixed-point sums).
    Add = 0,
    /// Bitwise OR (nonzero indexes: bitmaps and Bloom filters).
    Or = 1,
    /// Unsigned maximum (exponent agreement for block floating point).
    Max = 2,
}

impl Op {
    /// Parses an op byte.
    pub fn from_u8(v: u8) -> Result<Self, WireError> {
        match v {
            0 => Ok(Op::Add),
            1 => Ok(Op::Or),
            2 => Ok(Op::Max),
            other => Err(WireError::Op(other)),
        }
    }

    /// Combines one lane. This function is the whole arithmetic of the switch.
    #[inline]
    pub fn apply(self, acc: u32, v: u32) -> u32 {
        match self {
            Op::Add => acc.wrapping_add(v),
            Op::Or => acc | v,
            Op::Max => acc.max(v),
        }
    }
}

/// A validated header (the smoltcp-style "repr" of [`Packet`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// Message kind.
    pub kind: Kind,
    /// Combining operation.
    pub op: Op,
    /// Sender's rank (requests) or 0 (replies).
    pub rank: u8,
    /// Job id.
    pub job: u16,
    /// Number of lanes following the header.
    pub lanes: u16,
    /// Job token.
    pub token: u32,
    /// Absolute slot index.
    pub slot: u32,
    /// Shadow set, 0 or 1.
    pub set: u8,
    /// Contributions seen (replies).
    pub count: u8,
    /// Round number of this use of the slot.
    pub round: u32,
    /// Chunk offset in the job's stream.
    pub offset: u32,
    /// Workers-seen bitmap (replies).
    pub bitmap: u32,
}

impl Header {
    /// Total datagram length for this header's lane count.
    pub fn packet_len(&self) -> usize {
        HEADER_LEN + self.lanes as usize * LANE_BYTES
    }

    /// Writes the header into `buf` (which must hold at least [`HEADER_LEN`] bytes).
    ///
    /// # Panics
    /// If `buf` is shorter than the header: buffers are sized by the caller from
    /// [`Header::packet_len`], so this is a programming error, not input.
    pub fn emit(&self, buf: &mut [u8]) {
        let b = &mut buf[..HEADER_LEN];
        b[field::VERSION.start] = VERSION;
        b[field::KIND.start] = self.kind as u8;
        b[field::OP.start] = self.op as u8;
        b[field::RANK.start] = self.rank;
        b[field::JOB].copy_from_slice(&self.job.to_be_bytes());
        b[field::LANES].copy_from_slice(&self.lanes.to_be_bytes());
        b[field::TOKEN].copy_from_slice(&self.token.to_be_bytes());
        b[field::SLOT].copy_from_slice(&self.slot.to_be_bytes());
        b[field::SET.start] = self.set;
        b[field::COUNT.start] = self.count;
        b[field::FLAGS].copy_from_slice(&[0, 0]);
        b[field::ROUND].copy_from_slice(&self.round.to_be_bytes());
        b[field::OFFSET].copy_from_slice(&self.offset.to_be_bytes());
        b[field::BITMAP].copy_from_slice(&self.bitmap.to_be_bytes());
    }
}

/// A zero-copy view of one datagram: header plus lanes. Construct with [`Packet::new_checked`]
/// for untrusted input; the accessors then cannot go out of bounds.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

#[inline]
fn be16(b: &[u8], r: core::ops::Range<usize>) -> u16 {
    u16::from_be_bytes([b[r.start], b[r.start + 1]])
}

#[inline]
fn be32(b: &[u8], r: core::ops::Range<usize>) -> u32 {
    u32::from_be_bytes([b[r.start], b[r.start + 1], b[r.start + 2], b[r.start + 3]])
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it; use only on buffers this process built.
    pub fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps a buffer after checking its length against the header and lane count, and the
    /// version, kind, op and set fields. Every other field is any value.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Packet { buffer };
        p.check()?;
        Ok(p)
    }

    fn check(&self) -> Result<(), WireError> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated {
                len: b.len(),
                need: HEADER_LEN,
            });
        }
        let need = HEADER_LEN + be16(b, field::LANES) as usize * LANE_BYTES;
        if b.len() < need {
            return Err(WireError::Truncated { len: b.len(), need });
        }
        if b.len() > need {
            return Err(WireError::Trailing {
                extra: b.len() - need,
            });
        }
        if b[field::VERSION.start] != VERSION {
            return Err(WireError::Version(b[field::VERSION.start]));
        }
        let kind = Kind::from_u8(b[field::KIND.start])?;
        Op::from_u8(b[field::OP.start])?;
        if b[field::SET.start] > 1 {
            return Err(WireError::Set(b[field::SET.start]));
        }
        let lanes = be16(b, field::LANES);
        if kind.has_lanes() != (lanes > 0) {
            return Err(WireError::LaneCount { kind, lanes });
        }
        Ok(())
    }

    /// Parses the header into its validated form.
    pub fn header(&self) -> Header {
        let b = self.buffer.as_ref();
        Header {
            // Checked in `new_checked`; a bad byte in an unchecked buffer maps to Data/Add.
            kind: Kind::from_u8(b[field::KIND.start]).unwrap_or(Kind::Data),
            op: Op::from_u8(b[field::OP.start]).unwrap_or(Op::Add),
            rank: b[field::RANK.start],
            job: be16(b, field::JOB),
            lanes: be16(b, field::LANES),
            token: be32(b, field::TOKEN),
            slot: be32(b, field::SLOT),
            set: b[field::SET.start],
            count: b[field::COUNT.start],
            round: be32(b, field::ROUND),
            offset: be32(b, field::OFFSET),
            bitmap: be32(b, field::BITMAP),
        }
    }

    /// Number of lanes.
    pub fn lane_count(&self) -> usize {
        be16(self.buffer.as_ref(), field::LANES) as usize
    }

    /// The raw big-endian lane bytes.
    pub fn lane_bytes(&self) -> &[u8] {
        let n = self.lane_count() * LANE_BYTES;
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + n]
    }

    /// Lane `i` as a host integer.
    #[inline]
    pub fn lane(&self, i: usize) -> u32 {
        let o = HEADER_LEN + i * LANE_BYTES;
        be32(self.buffer.as_ref(), o..o + LANE_BYTES)
    }

    /// Iterates over the lanes as host integers.
    pub fn lanes(&self) -> impl Iterator<Item = u32> + '_ {
        self.lane_bytes()
            .chunks_exact(LANE_BYTES)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }

    /// Copies the lanes into `dst` (host order); `dst.len()` must equal the lane count.
    pub fn read_lanes(&self, dst: &mut [u32]) {
        for (d, c) in dst
            .iter_mut()
            .zip(self.lane_bytes().chunks_exact(LANE_BYTES))
        {
            *d = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        }
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the header fields (the buffer must already have the right length).
    pub fn set_header(&mut self, h: &Header) {
        h.emit(self.buffer.as_mut());
    }

    /// Sets lane `i`.
    #[inline]
    pub fn set_lane(&mut self, i: usize, v: u32) {
        let o = HEADER_LEN + i * LANE_BYTES;
        self.buffer.as_mut()[o..o + LANE_BYTES].copy_from_slice(&v.to_be_bytes());
    }

    /// Writes `src` (host order) into the lanes.
    pub fn write_lanes(&mut self, src: &[u32]) {
        let n = self.lane_count().min(src.len()) * LANE_BYTES;
        let dst = &mut self.buffer.as_mut()[HEADER_LEN..HEADER_LEN + n];
        for (c, v) in dst.chunks_exact_mut(LANE_BYTES).zip(src) {
            c.copy_from_slice(&v.to_be_bytes());
        }
    }
}

/// Builds a complete datagram (header + lanes) into `buf`, returning its length. `lanes.len()`
/// must equal `header.lanes`; `buf` must hold `header.packet_len()` bytes.
pub fn build(header: &Header, lanes: &[u32], buf: &mut [u8]) -> usize {
    debug_assert_eq!(lanes.len(), header.lanes as usize);
    let len = header.packet_len();
    let mut p = Packet::new_unchecked(&mut buf[..len]);
    p.set_header(header);
    p.write_lanes(lanes);
    len
}

/// Serial-number comparison of rounds (RFC 1982 style, the same expression the P4 program
/// uses): `Less` if `a` is older than `b`, treating differences of 2^31 or more as wrapped.
pub fn round_cmp(a: u32, b: u32) -> core::cmp::Ordering {
    let d = a.wrapping_sub(b);
    if d == 0 {
        core::cmp::Ordering::Equal
    } else if d & 0x8000_0000 != 0 {
        core::cmp::Ordering::Less
    } else {
        core::cmp::Ordering::Greater
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(kind: Kind, lanes: u16) -> Header {
        Header {
            kind,
            op: Op::Or,
            rank: 3,
            job: 0x0102,
            lanes,
            token: 0xdead_beef,
            slot: 77,
            set: 1,
            count: 0,
            round: 0xffff_fffe,
            offset: 12345,
            bitmap: 0,
        }
    }

    #[test]
    fn fields_tile_the_header() {
        let mut end = 0;
        let ranges = [
            field::VERSION,
            field::KIND,
            field::OP,
            field::RANK,
            field::JOB,
            field::LANES,
            field::TOKEN,
            field::SLOT,
            field::SET,
            field::COUNT,
            field::FLAGS,
            field::ROUND,
            field::OFFSET,
            field::BITMAP,
        ];
        for (r, (_, bits)) in ranges.iter().zip(FIELDS.iter()) {
            assert_eq!(r.start, end);
            assert_eq!(r.len() * 8, *bits);
            end = r.end;
        }
        assert_eq!(end, HEADER_LEN);
    }

    #[test]
    fn roundtrip_with_lanes() {
        let h = sample(Kind::Data, 4);
        let lanes = [1, 0xffff_ffff, 0x8000_0000, 42];
        let mut buf = vec![0u8; h.packet_len()];
        let n = build(&h, &lanes, &mut buf);
        assert_eq!(n, 32 + 16);
        // Offsets from docs/wire.md.
        assert_eq!(&buf[4..6], &[0x01, 0x02]);
        assert_eq!(&buf[8..12], &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(&buf[32..36], &[0, 0, 0, 1]);
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.header(), h);
        assert_eq!(p.lanes().collect::<Vec<_>>(), lanes);
    }

    #[test]
    fn rejects_malformed() {
        let h = sample(Kind::Data, 2);
        let mut buf = vec![0u8; h.packet_len()];
        build(&h, &[5, 6], &mut buf);
        assert!(matches!(
            Packet::new_checked(&buf[..39]),
            Err(WireError::Truncated { len: 39, need: 40 })
        ));
        assert!(matches!(
            Packet::new_checked(&buf[..10]),
            Err(WireError::Truncated { .. })
        ));
        let mut long = buf.clone();
        long.push(0);
        assert!(matches!(
            Packet::new_checked(&long[..]),
            Err(WireError::Trailing { extra: 1 })
        ));
        let mut bad = buf.clone();
        bad[0] = 2;
        assert_eq!(
            Packet::new_checked(&bad[..]).unwrap_err(),
            WireError::Version(2)
        );
        let mut bad = buf.clone();
        bad[1] = 9;
        assert_eq!(
            Packet::new_checked(&bad[..]).unwrap_err(),
            WireError::Kind(9)
        );
        let mut bad = buf.clone();
        bad[2] = 3;
        assert_eq!(Packet::new_checked(&bad[..]).unwrap_err(), WireError::Op(3));
        let mut bad = buf.clone();
        bad[16] = 2;
        assert_eq!(
            Packet::new_checked(&bad[..]).unwrap_err(),
            WireError::Set(2)
        );
        let probe = sample(Kind::Probe, 0);
        let mut pb = vec![0u8; probe.packet_len()];
        build(&probe, &[], &mut pb);
        assert!(Packet::new_checked(&pb[..]).is_ok());
        let empty_data = sample(Kind::Data, 0);
        build(&empty_data, &[], &mut pb);
        assert!(matches!(
            Packet::new_checked(&pb[..]),
            Err(WireError::LaneCount { .. })
        ));
    }

    #[test]
    fn ops_and_rounds() {
        assert_eq!(Op::Add.apply(u32::MAX, 2), 1);
        assert_eq!(Op::Or.apply(0b1010, 0b0110), 0b1110);
        assert_eq!(Op::Max.apply(0x8000_0000, 5), 0x8000_0000);
        use core::cmp::Ordering::*;
        assert_eq!(round_cmp(5, 5), Equal);
        assert_eq!(round_cmp(4, 5), Less);
        assert_eq!(round_cmp(0, u32::MAX), Greater);
        assert_eq!(round_cmp(u32::MAX, 0), Less);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                let h = p.header();
                proptest::prop_assert_eq!(h.packet_len(), bytes.len());
                let mut again = vec![0u8; h.packet_len()];
                let lanes: Vec<u32> = p.lanes().collect();
                build(&h, &lanes, &mut again);
                // Everything but the reserved flags round-trips.
                again[18] = bytes[18];
                again[19] = bytes[19];
                proptest::prop_assert_eq!(again, bytes);
            }
        }
    }
}
