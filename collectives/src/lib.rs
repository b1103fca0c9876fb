//! Collectives (work in progress).
