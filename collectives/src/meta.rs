//! The per-rank header every operation starts with, and the verdict every rank draws from all
//! of them.
//!
//! Each rank sends its [`Meta`] to every other rank (a small ring all-gather) before any data
//! moves. Every rank then holds the same list of headers and computes the same [`verdict`], so
//! a disagreement (operation number, collective, shape, parameter layout, a non-finite value,
//! a rank that cannot take part) fails the operation on *every* rank at the same point and
//! names the rank concerned, always compared with rank 0.
//!
//! Adding a per-rank field: add it to [`Meta`], write it in [`Meta::encode`] and read it in
//! [`Meta::decode`] (same position), and combine it in [`verdict`] / [`Agreed`].

use crate::error::CollectiveError;

/// Version of the header layout (first byte); a peer with another version is refused.
const VERSION: u8 = 3;
/// Largest per-rank bitset ([`Meta::used`]) and problem text accepted from a peer.
const MAX_USED_BYTES: usize = 1 << 20;
const MAX_PROBLEM_BYTES: usize = 4096;

/// What a rank says about the operation it is about to run.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Meta {
    /// Operation number on this rank (1, 2, …): ranks out of step are caught here.
    pub seq: u64,
    /// [`crate::Collective`] code.
    pub collective: u8,
    /// [`crate::ReduceOp`] code (reductions only).
    pub op: u8,
    /// Requested [`crate::Algo`] code.
    pub algo: u8,
    /// 1 when the payload is a sparse vector.
    pub sparse: u8,
    /// Source rank of a broadcast.
    pub src: u64,
    /// Elements (dense), blocks (sparse) or bytes (broadcast, all-gather).
    pub len: u64,
    /// Values per block (1 for dense payloads).
    pub block: u64,
    /// Nonzero values of this rank's input.
    pub nnz: u64,
    /// Biased exponent of the largest |value|; `u32::MAX`: non-finite input at [`Self::bad`].
    pub exponent: u32,
    /// Median biased exponent of the nonzero values (0: none); picks the value width.
    pub e_med: u32,
    /// Dense element index of the first non-finite value.
    pub bad: u64,
    /// The caller's stable key of the operation (e.g. one per DDP bucket), if any.
    pub key: Option<u64>,
    /// A hash every rank must agree on (a DDP parameter layout, a tensor's shape and dtype);
    /// 0 when the operation has none.
    pub check: u64,
    /// A bitset OR-combined over ranks (a DDP bucket's "this rank has a gradient" bits).
    pub used: Vec<u8>,
    /// Why this rank cannot take part (it still sends its header so nobody waits for it).
    pub problem: Option<String>,
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    /// A length-prefixed byte string of at most `max` bytes (the length comes from a peer).
    fn bytes(&mut self, max: usize) -> Option<Vec<u8>> {
        let n = usize::try_from(self.u64()?).ok()?;
        if n > max {
            return None;
        }
        Some(self.take(n)?.to_vec())
    }
}

impl Meta {
    /// Longest encoded header: the fixed fields, the largest bitset and problem text (a peer's
    /// header exchange frame is refused beyond this before it is read).
    pub const MAX_ENCODED: usize = 1
        + 8
        + 4
        + 4 * 8
        + 4
        + 4
        + 8
        + 1
        + 8
        + 8
        + (8 + MAX_USED_BYTES)
        + 1
        + (8 + MAX_PROBLEM_BYTES);

    /// Wire form (little endian, length-prefixed variable fields).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(96 + self.used.len()));
        w.u8(VERSION);
        w.u64(self.seq);
        w.u8(self.collective);
        w.u8(self.op);
        w.u8(self.algo);
        w.u8(self.sparse);
        w.u64(self.src);
        w.u64(self.len);
        w.u64(self.block);
        w.u64(self.nnz);
        w.u32(self.exponent);
        w.u32(self.e_med);
        w.u64(self.bad);
        w.u8(self.key.is_some() as u8);
        w.u64(self.key.unwrap_or(0));
        w.u64(self.check);
        w.bytes(&self.used);
        let problem = self.problem.as_deref().unwrap_or("");
        let cut = floor_char_boundary(problem, MAX_PROBLEM_BYTES);
        w.u8(self.problem.is_some() as u8);
        w.bytes(&problem.as_bytes()[..cut]);
        w.0
    }

    /// Parses a peer's header; `None` if it is malformed (or of another version).
    pub fn decode(b: &[u8]) -> Option<Meta> {
        let mut r = Reader(b);
        if r.u8()? != VERSION {
            return None;
        }
        let mut m = Meta {
            seq: r.u64()?,
            collective: r.u8()?,
            op: r.u8()?,
            algo: r.u8()?,
            sparse: r.u8()?,
            src: r.u64()?,
            len: r.u64()?,
            block: r.u64()?,
            nnz: r.u64()?,
            exponent: r.u32()?,
            e_med: r.u32()?,
            bad: r.u64()?,
            ..Meta::default()
        };
        let has_key = r.u8()?;
        let key = r.u64()?;
        m.key = (has_key == 1).then_some(key);
        m.check = r.u64()?;
        m.used = r.bytes(MAX_USED_BYTES)?;
        let has_problem = r.u8()?;
        let problem = r.bytes(MAX_PROBLEM_BYTES)?;
        m.problem = (has_problem == 1).then(|| String::from_utf8_lossy(&problem).into_owned());
        r.0.is_empty().then_some(m)
    }
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    let mut i = max.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// What the ranks agreed on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Agreed {
    /// Global exponent (MAX over ranks).
    pub exponent: u32,
    /// Smallest nonzero [`Meta::e_med`] over ranks (0: no rank has nonzeros).
    pub e_med_min: u32,
    /// Σ over ranks of nonzero values.
    pub total_nnz: u64,
    /// Largest nonzero count of one rank (a lower bound on the union's size).
    pub max_nnz: u64,
    /// Every rank's nonzero count (bounds its sparse all-gather blob).
    pub nnz: Vec<u64>,
    /// OR over ranks of [`Meta::used`].
    pub used: Vec<u8>,
    /// Every rank's length (they differ only for a variable-length all-gather).
    pub lens: Vec<u64>,
}

/// A failed verdict: the error, and whether the ranks are out of step (the communicator must
/// then be poisoned) rather than in agreement that this one operation is refused.
pub(crate) struct Refusal {
    pub error: CollectiveError,
    pub out_of_step: bool,
}

fn refuse(error: CollectiveError) -> Refusal {
    Refusal {
        error,
        out_of_step: false,
    }
}

/// Which fields must be equal on every rank.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Rules {
    /// Every rank must send the same `len` (false for a variable-length all-gather).
    pub same_len: bool,
    /// What [`Meta::check`] covers, for the error message.
    pub check_what: &'static str,
    /// The world size (a broadcast source must be below it).
    pub world: usize,
}

/// The verdict every rank draws from all headers (`metas[r]` is rank r's). Deterministic in
/// `metas`, so every rank reaches the same one.
pub(crate) fn verdict(metas: &[Meta], rules: Rules) -> Result<Agreed, Refusal> {
    let Some(m0) = metas.first() else {
        return Err(refuse(CollectiveError::Mismatch("no headers".into())));
    };
    for (r, m) in metas.iter().enumerate() {
        if m.seq != m0.seq {
            return Err(Refusal {
                error: CollectiveError::Mismatch(format!(
                    "rank {r} is at operation #{} while rank 0 is at #{} (ranks started different numbers of operations)",
                    m.seq, m0.seq
                )),
                out_of_step: true,
            });
        }
    }
    if let Some((r, p)) = metas
        .iter()
        .enumerate()
        .find_map(|(r, m)| m.problem.as_ref().map(|p| (r, p)))
    {
        return Err(refuse(CollectiveError::Refused {
            rank: r,
            reason: p.clone(),
        }));
    }
    for (r, m) in metas.iter().enumerate().skip(1) {
        let field = |name: &str, a: String, b: String| {
            refuse(CollectiveError::Mismatch(format!(
                "rank {r} runs {name} {a} while rank 0 runs {b}"
            )))
        };
        if m.collective != m0.collective {
            return Err(field(
                "collective",
                collective_name(m.collective),
                collective_name(m0.collective),
            ));
        }
        if m.op != m0.op {
            return Err(field("reduce op", op_name(m.op), op_name(m0.op)));
        }
        if m.algo != m0.algo {
            return Err(field("algorithm", algo_name(m.algo), algo_name(m0.algo)));
        }
        if m.src != m0.src {
            return Err(field(
                "a broadcast from",
                format!("rank {}", m.src),
                format!("from rank {}", m0.src),
            ));
        }
        if m.key != m0.key {
            return Err(field(
                "key",
                format!("{:?}", m.key),
                format!("{:?}", m0.key),
            ));
        }
        if m.check != m0.check {
            return Err(refuse(CollectiveError::LayoutMismatch {
                rank: r,
                detail: format!(
                    "its {} (hash {:#018x}) differs from rank 0's (hash {:#018x})",
                    if rules.check_what.is_empty() {
                        "layout"
                    } else {
                        rules.check_what
                    },
                    m.check,
                    m0.check
                ),
            }));
        }
        if (rules.same_len && m.len != m0.len) || m.block != m0.block || m.sparse != m0.sparse {
            let shape = |m: &Meta| {
                format!(
                    "{} {} of {}",
                    m.len,
                    if m.sparse == 1 {
                        "sparse blocks"
                    } else {
                        "elements"
                    },
                    m.block
                )
            };
            return Err(refuse(CollectiveError::Mismatch(format!(
                "rank {r} has {} while rank 0 has {} (operation #{})",
                shape(m),
                shape(m0),
                m0.seq
            ))));
        }
    }
    if m0.collective == crate::reduce::Collective::Broadcast as u8 && m0.src as usize >= rules.world
    {
        return Err(refuse(CollectiveError::Input(format!(
            "broadcast source rank {} is not below world size {}",
            m0.src, rules.world
        ))));
    }
    if let Some((r, m)) = metas
        .iter()
        .enumerate()
        .find(|(_, m)| m.exponent == u32::MAX)
    {
        return Err(refuse(CollectiveError::NonFinite {
            rank: r,
            position: m.bad,
        }));
    }
    let mut used = vec![0u8; metas.iter().map(|m| m.used.len()).max().unwrap_or(0)];
    for m in metas {
        for (u, b) in used.iter_mut().zip(&m.used) {
            *u |= b;
        }
    }
    Ok(Agreed {
        exponent: metas.iter().map(|m| m.exponent).max().unwrap_or(0),
        e_med_min: metas
            .iter()
            .map(|m| m.e_med)
            .filter(|&e| e > 0)
            .min()
            .unwrap_or(0),
        total_nnz: metas.iter().map(|m| m.nnz).sum(),
        max_nnz: metas.iter().map(|m| m.nnz).max().unwrap_or(0),
        nnz: metas.iter().map(|m| m.nnz).collect(),
        used,
        lens: metas.iter().map(|m| m.len).collect(),
    })
}

fn collective_name(c: u8) -> String {
    crate::reduce::Collective::from_code(c)
        .map(|c| c.name().to_string())
        .unwrap_or_else(|| format!("code {c}"))
}

fn op_name(c: u8) -> String {
    crate::reduce::ReduceOp::from_code(c)
        .map(|o| format!("{o:?}"))
        .unwrap_or_else(|| format!("code {c}"))
}

fn algo_name(c: u8) -> String {
    crate::config::Algo::from_code(c)
        .map(|a| a.name().to_string())
        .unwrap_or_else(|| format!("code {c}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(seq: u64) -> Meta {
        Meta {
            seq,
            len: 10,
            block: 1,
            key: Some(7),
            check: 99,
            used: vec![0b01],
            ..Meta::default()
        }
    }

    #[test]
    fn max_encoded_is_the_largest_header() {
        let m = Meta {
            used: vec![0xff; MAX_USED_BYTES],
            problem: Some("p".repeat(2 * MAX_PROBLEM_BYTES)),
            key: Some(1),
            ..meta(1)
        };
        let b = m.encode();
        assert_eq!(b.len(), Meta::MAX_ENCODED);
        assert!(Meta::decode(&b).is_some());
    }

    #[test]
    fn round_trip_and_malformed() {
        let mut m = meta(3);
        m.problem = Some("bad dtype".into());
        assert_eq!(Meta::decode(&m.encode()), Some(m.clone()));
        let b = m.encode();
        assert_eq!(Meta::decode(&b[..b.len() - 1]), None);
        let mut long = b.clone();
        long.push(0);
        assert_eq!(Meta::decode(&long), None);
        let mut other = b;
        other[0] = 1;
        assert_eq!(Meta::decode(&other), None, "other version");
    }

    #[test]
    fn verdict_names_the_rank_compared_with_rank_0() {
        let rules = Rules {
            same_len: true,
            check_what: "parameter layout",
            world: 3,
        };
        let mut ms = vec![meta(1), meta(1), meta(1)];
        ms[2].used = vec![0b10];
        let a = verdict(&ms, rules).ok().unwrap();
        assert_eq!(a.used, vec![0b11]);
        ms[2].check = 5;
        let e = verdict(&ms, rules).err().unwrap();
        assert!(!e.out_of_step);
        assert!(
            matches!(&e.error, CollectiveError::LayoutMismatch { rank: 2, detail } if detail.contains("parameter layout")),
            "{}",
            e.error
        );
        ms[1].seq = 2;
        assert!(verdict(&ms, rules).err().unwrap().out_of_step);
    }
}
