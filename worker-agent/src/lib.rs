//! Worker agent (work in progress).
