//! Typed errors of the codec.
//!
//! Every failure is reported as a value so that callers (the worker agent, the collectives, the
//! CLI) can count it, retry with a larger sketch or fall back, instead of receiving a silently
//! wrong gradient.

use thiserror::Error;

/// Everything that can go wrong while quantizing, encoding, merging or decoding.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    /// A NaN or ±Inf was found in the input; such values are never encoded because no fixed
    /// point scale can represent them and a training step with them is already broken.
    #[error("non-finite input value at position {position}")]
    NonFinite {
        /// Position of the first non-finite value found.
        position: usize,
    },
    /// A value is larger than the agreed global exponent allows, so its fixed-point value could
    /// overflow the lane when summed. The caller used an exponent that is not the MAX over
    /// all workers.
    #[error("value at position {position} exceeds the range of global exponent {exponent}")]
    OutOfRange {
        /// Position of the offending value.
        position: usize,
        /// Global exponent the fixed-point scale was built for.
        exponent: u32,
    },
    /// The fixed-point parameters are unusable (exponent out of range, zero workers, too many
    /// workers for the lane).
    #[error("invalid fixed-point parameters: {0}")]
    InvalidFixedPoint(String),
    /// The codec parameters are unusable (dimension too large, zero cells, bad hash count...).
    #[error("invalid codec parameters: {0}")]
    InvalidParams(String),
    /// Two encodings (or a slice handed in) do not have the shape the parameters require.
    #[error("shape mismatch: {what}: expected {expected}, got {got}")]
    ShapeMismatch {
        /// Which part mismatched (index words, cells, dense output, ...).
        what: &'static str,
        /// Length the parameters require.
        expected: usize,
        /// Length that was provided.
        got: usize,
    },
    /// Two encodings built with different parameters cannot be merged.
    #[error("cannot merge encodings built with different parameters")]
    ParamsMismatch,
    /// A sparse input has an index outside the dimension.
    #[error("sparse index {index} out of range for dimension {dim}")]
    IndexOutOfRange {
        /// Offending index.
        index: u64,
        /// Dimension of the tensor.
        dim: u64,
    },
    /// Peeling could not resolve every candidate: the sketch was too small for the number of
    /// candidates (or unlucky). Nothing is guessed; the caller must retry with more cells.
    #[error(
        "decode stalled: {unresolved} of {candidates} candidates unresolved with {cells} cells"
    )]
    Stalled {
        /// Candidates left unresolved when peeling stopped.
        unresolved: usize,
        /// Candidates reported by the aggregated index.
        candidates: usize,
        /// Cells in the sketch.
        cells: usize,
    },
    /// Peeling resolved every candidate but some cells kept a nonzero residue: a contributor
    /// wrote a key the index does not report, or the data were corrupted in flight.
    #[error("inconsistent encoding: {nonzero_cells} cells keep a nonzero residue after peeling")]
    Inconsistent {
        /// Number of cells with a nonzero residue.
        nonzero_cells: usize,
    },
    /// More encodings were merged than the fixed-point scale was built for, so sums may have
    /// wrapped around the lane.
    #[error(
        "{contributions} contributions merged but the fixed-point scale is for {workers} workers"
    )]
    TooManyContributions {
        /// Contributions counted in the aggregate.
        contributions: u32,
        /// Workers of the [`crate::FixedPoint`].
        workers: u32,
    },
    /// A decoded sum is larger than the contributors could have produced: the lane wrapped
    /// (too many contributions, or a scale that does not match the data).
    #[error("decoded sum {sum} exceeds the largest possible |sum| {limit}")]
    SumOutOfRange {
        /// The decoded (sign-extended) sum.
        sum: i64,
        /// `contributions · per_worker_limit`.
        limit: i128,
    },
    /// The index reports more candidates than the sketch has cells (a saturated index):
    /// peeling cannot succeed, so decoding stops before doing the work.
    #[error("index reports {candidates} candidates for {cells} cells; cannot peel")]
    Saturated {
        /// Candidates found so far (at least `cells + 1`).
        candidates: usize,
        /// Cells in the sketch.
        cells: usize,
    },
    /// Peeling resolved every candidate but the check lane (a seed-derived weighted sum of
    /// all values) disagrees: contributions were made with different parameters (seed,
    /// tensor id, layout) or corrupted.
    #[error(
        "check lane mismatch after peeling: encodings do not share parameters or were corrupted"
    )]
    CheckFailed,
    /// A worker holds a nonzero at a key the aggregated index does not report (union-rank
    /// rounds): its value has no lane.
    #[error("key {key} is not in the aggregated index")]
    NotInIndex {
        /// The key.
        key: u32,
    },
}

impl CodecError {
    /// A short snake_case name, stable for JSON reports and counters.
    pub fn name(&self) -> &'static str {
        match self {
            CodecError::NonFinite { .. } => "non_finite_input",
            CodecError::OutOfRange { .. } => "out_of_range",
            CodecError::InvalidFixedPoint(_) => "invalid_fixed_point",
            CodecError::InvalidParams(_) => "invalid_params",
            CodecError::ShapeMismatch { .. } => "shape_mismatch",
            CodecError::ParamsMismatch => "params_mismatch",
            CodecError::IndexOutOfRange { .. } => "index_out_of_range",
            CodecError::Stalled { .. } => "decode_failed",
            CodecError::Inconsistent { .. } => "inconsistent",
            CodecError::TooManyContributions { .. } => "too_many_contributions",
            CodecError::SumOutOfRange { .. } => "sum_out_of_range",
            CodecError::Saturated { .. } => "saturated",
            CodecError::CheckFailed => "check_failed",
            CodecError::NotInIndex { .. } => "not_in_index",
        }
    }
}
