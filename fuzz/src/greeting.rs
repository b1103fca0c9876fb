//! The rendezvous and ring-link greeting parsers (`sketchreduce_collectives::greeting`).
//!
//! An input is `[parser, parameter, frame…]`. Properties: nothing panics; a frame above its
//! limit is refused; with the secret, a greeting is accepted only if it is byte for byte one
//! the harness sealed with that secret for that nonce and position (so a mutation, a replay
//! under another nonce or a forged MAC never passes); without a secret, what a parser accepts
//! re-encodes to a frame it parses to the same value.

use crate::{sig, variant, Harness};
use sketchreduce_collectives::greeting::{
    Answer, Challenge, GreetingError, Hello, Link, Linked, MAX_GREETING, PROTOCOL,
};
use sketchreduce_collectives::Secret;
use std::collections::HashSet;
use std::net::SocketAddr;

/// See the module documentation.
#[derive(Debug)]
pub struct GreetingHarness {
    secret: Secret,
    /// The challenge nonce greetings are checked against.
    challenge: String,
    /// The hello's and link's nonce answers are checked against.
    nonce: String,
    /// (parser, answer position, frame) of everything sealed with the secret.
    authentic: HashSet<(u8, u64, Vec<u8>)>,
}

const NONCES: [&str; 3] = [
    "00112233445566778899aabbccddeeff",
    "ffeeddccbbaa99887766554433221100",
    "0123456789abcdef0123456789abcdef",
];

impl GreetingHarness {
    /// A harness with a fixed secret and nonces.
    pub fn new() -> Self {
        GreetingHarness {
            secret: Secret::new("fuzzing-secret-0123456789").expect("long enough"),
            challenge: NONCES[0].into(),
            nonce: NONCES[1].into(),
            authentic: HashSet::new(),
        }
    }

    fn answer_params(p: u8) -> (u64, usize) {
        (1 + (p & 1) as u64, 1 + (p >> 1) as usize % 8)
    }
}

impl Default for GreetingHarness {
    fn default() -> Self {
        Self::new()
    }
}

/// What a parser did: which error (its message names the check that failed) or which value.
fn outcome<T: std::fmt::Debug>(r: &Result<T, GreetingError>) -> u64 {
    match r {
        Ok(v) => sig(1, variant(v)),
        Err(e) => e
            .to_string()
            .bytes()
            .take_while(|c| !c.is_ascii_digit())
            .fold(2, |h, c| sig(h, c as u64)),
    }
}

fn input(parser: u8, param: u8, frame: &[u8]) -> Vec<u8> {
    [&[parser, param][..], frame].concat()
}

impl Harness for GreetingHarness {
    fn seeds(&mut self) -> Vec<Vec<u8>> {
        let k = self.secret.clone();
        let (ch, n) = (self.challenge.clone(), self.nonce.clone());
        let mut out = Vec::new();
        out.push(input(
            0,
            0,
            &Challenge {
                nonce: ch.clone(),
                auth: true,
            }
            .encode(),
        ));
        let hello = Hello {
            rank: 1,
            world: 3,
            fingerprint: 0x0123_4567_89ab_cdef,
            data_addr: "127.0.0.1:4000".parse().expect("address"),
            nonce: n.clone(),
            settings: "world_size=3 algo=ring lane=32".into(),
        };
        let link = Link {
            rank: 2,
            fingerprint: 7,
            session: NONCES[2].into(),
            nonce: n.clone(),
        };
        let mut sealed = |parser: u8, param: u8, seq: u64, with: &[u8], without: &[u8]| {
            self.authentic.insert((parser + 1, seq, with.to_vec()));
            out.push(input(parser, param, without));
            out.push(input(parser + 1, param, with));
        };
        sealed(1, 0, 0, &hello.seal(Some(&k), &ch), &hello.seal(None, &ch));
        sealed(5, 0, 0, &link.seal(Some(&k), &ch), &link.seal(None, &ch));
        let linked = Linked { rank: 3 };
        sealed(7, 0, 0, &linked.seal(Some(&k), &n), &linked.seal(None, &n));
        for world in [1usize, 3] {
            let addrs: Vec<SocketAddr> = (0..world)
                .map(|i| SocketAddr::from(([10, 0, 0, i as u8], 5000)))
                .collect();
            for a in [
                Answer::Wait,
                Answer::Ok {
                    session: NONCES[2].into(),
                    addrs,
                },
                Answer::Mismatch("rank 2's job config differs".into()),
                Answer::Timeout("ranks [1] never arrived".into()),
                Answer::Refused("no MAC".into()),
            ] {
                for seq in [1u64, 2] {
                    let param = (seq - 1) as u8 | ((world - 1) as u8) << 1;
                    sealed(
                        3,
                        param,
                        seq,
                        &a.seal(Some(&k), &n, seq),
                        &a.seal(None, &n, seq),
                    );
                }
            }
        }
        out
    }

    fn dictionary(&self) -> Vec<Vec<u8>> {
        let mut d: Vec<Vec<u8>> = [
            PROTOCOL,
            "\t",
            "CHALLENGE",
            "HELLO",
            "OK",
            "WAIT",
            "MISMATCH",
            "TIMEOUT",
            "REFUSED",
            "LINK",
            "LINKED",
            "BUSY",
            "127.0.0.1:1",
            "[::1]:2",
            "0",
            "1",
            "+1",
            "-1",
            "18446744073709551616",
            "é",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        d.extend(NONCES.iter().map(|n| n.as_bytes().to_vec()));
        d
    }

    fn max_len(&self) -> usize {
        2 * MAX_GREETING + 64
    }

    fn run(&mut self, input: &[u8]) -> u64 {
        let (parser, param) = (
            input.first().copied().unwrap_or(0) % 9,
            input.get(1).copied().unwrap_or(0),
        );
        let frame = input.get(2..).unwrap_or(&[]);
        let k = self.secret.clone();
        let with = parser % 2 == 0 && parser > 0;
        let secret = with.then_some(&k);
        let (ch, n) = (self.challenge.as_str(), self.nonce.as_str());
        let (seq, world) = Self::answer_params(param);
        let seq_key = if matches!(parser, 3 | 4) { seq } else { 0 };
        // `accepted`: whether the parser accepted; `refused`: an unauthenticated REFUSED.
        let (outcome, accepted, refusal) = match parser {
            0 => {
                let r = Challenge::parse(frame);
                if let Ok(c) = &r {
                    assert_eq!(Challenge::parse(&c.encode()).as_ref(), Ok(c));
                }
                (outcome(&r), r.is_ok(), false)
            }
            1 | 2 => {
                let r = Hello::open(frame, secret, ch);
                if let (Ok(h), None) = (&r, secret) {
                    assert_eq!(Hello::open(&h.seal(None, ch), None, ch).as_ref(), Ok(h));
                }
                (outcome(&r), r.is_ok(), false)
            }
            3 | 4 => {
                let r = Answer::open(frame, secret, n, seq, world);
                if let Ok(Answer::Ok { addrs, .. }) = &r {
                    assert_eq!(addrs.len(), world, "an OK lists one address per rank");
                }
                if let (Ok(a), None) = (&r, secret) {
                    let again = Answer::open(&a.seal(None, n, seq), None, n, seq, world);
                    assert_eq!(again.as_ref(), Ok(a));
                }
                let refusal = matches!(r, Ok(Answer::Refused(_)));
                (outcome(&r), r.is_ok(), refusal)
            }
            5 | 6 => {
                let r = Link::open(frame, secret, ch);
                if let (Ok(l), None) = (&r, secret) {
                    assert_eq!(Link::open(&l.seal(None, ch), None, ch).as_ref(), Ok(l));
                }
                (outcome(&r), r.is_ok(), false)
            }
            _ => {
                let r = Linked::open(frame, secret, n);
                if let (Ok(l), None) = (&r, secret) {
                    assert_eq!(Linked::open(&l.seal(None, n), None, n).as_ref(), Ok(l));
                }
                (outcome(&r), r.is_ok(), false)
            }
        };
        let limit = if matches!(parser, 3 | 4) {
            Answer::max_len(world)
        } else {
            MAX_GREETING
        };
        assert!(
            !(accepted && frame.len() > limit),
            "accepted {} bytes, limit {limit}",
            frame.len()
        );
        if with && accepted && !refusal {
            assert!(
                self.authentic
                    .contains(&(parser, seq_key, frame.to_vec())),
                "parser {parser} accepted a greeting that was never sealed with the secret for this nonce and position: {:?}",
                String::from_utf8_lossy(frame)
            );
        }
        sig(sig(parser as u64, outcome), accepted as u64)
    }
}
