//! Homomorphic, lossless count-sketch codec (work in progress).
