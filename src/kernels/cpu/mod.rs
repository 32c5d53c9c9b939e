//! The fused CPU ops: custom candle ops with their own backward passes over host slices, their
//! AVX-512 twins chosen at run time, the bf16 matrix kernel and the in-place optimizer update.

pub(crate) mod adamw;
pub mod attention;
pub mod bf16_gemm;
pub(crate) mod linear;
pub mod matrix;
pub mod ops;
pub(crate) mod simd;
