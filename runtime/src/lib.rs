//! cnnc's runtime: the reference executor (the correctness oracle), parameter initialization,
//! weights files, data loading and the training loop.

pub mod executor;
pub mod params;
pub mod reference;
