//! Homomorphic, lossless count-sketch codec for sparse gradients.
//!
//! Workers [`Encoder::encode_dense`] their gradients with identical [`CodecParams`] (derived
//! from a seed and the tensor id by [`CodecParams::sized`]) and an identical [`FixedPoint`]
//! (from the MAX of [`max_exponent`]); the network combines encodings with only bitwise OR (the
//! index words) and wrapping integer addition (the sketch cells); any worker runs the
//! [`Decoder`] on the combined encoding and gets the exact integer sum, or a typed error such
//! as [`CodecError::Stalled`] — never a guessed value.
//!
//! ```
//! use sketchreduce_codec::*;
//! let grads = [vec![0.0, 1.5, 0.0, -2.0], vec![0.25, 0.0, 0.0, 2.0]];
//! let e = grads.iter().map(|g| max_exponent(g)).collect::<Result<Vec<_>, _>>()?;
//! let fixed = FixedPoint::new(*e.iter().max().unwrap(), 2, LaneWidth::W32)?;
//! let params = CodecParams::sized(7, 0, 4, LaneWidth::W32, &Sizing::new(3))?;
//! let mut enc = Encoder::<i32>::new(&params)?;
//! let mut total = enc.new_encoding();
//! let mut one = enc.new_encoding();
//! for g in &grads {
//!     enc.encode_dense(g, &fixed, &mut one)?;
//!     total.merge(&one)?;
//! }
//! let mut dec = Decoder::<i32>::new();
//! let out = dec.decode(&params, total.index_words(), total.sketch_cells())?;
//! let mut dense = vec![0.0; 4];
//! out.to_dense(&fixed, &mut dense)?;
//! assert_eq!(dense, vec![0.25, 1.5, 0.0, 0.0]);
//! # Ok::<(), CodecError>(())
//! ```

pub mod baselines;
pub mod decode;
mod dense;
pub mod error;
pub mod fixed;
mod hash;
pub mod index;
mod join;
pub mod npy;
pub mod params;
mod prefetch;
pub mod sizing;
pub mod sketch;
pub mod synth;
pub mod wide;

pub use baselines::{candidate_rank, dense_bytes, dense_encode, Coo, UnionRank};
pub use decode::{Decoded, DecodedSums, Decoder};
pub use error::CodecError;
pub use fixed::{exponent_of, exponent_range, max_exponent, FixedPoint, LaneWidth};
pub use index::{candidates_into, insert_keys};
pub use params::{CodecParams, IndexKind, Layout, CHECK_LANES};
pub use sizing::{
    sketch_cells_for, sketch_shape, IndexChoice, LayoutChoice, Sizing, SupportProfile,
};
pub use sketch::{merge_slices, EncodeStats, Encoder, Encoding, Lane};
pub use wide::{choose_value_bits, join_wide, split_wide, ValuePolicy};
