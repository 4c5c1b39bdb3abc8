//! cnnc's runtime: the reference executor (the correctness oracle), parameter initialization,
//! weights files, data loading and the training loop.

pub mod atomic;
pub mod augment;
pub mod backend;
pub mod bench;
pub mod data;
pub mod detect;
pub mod dist;
pub mod evaluate;
pub mod executor;
pub mod frozen;
pub mod import;
pub mod interp;
pub mod loader;
pub mod metric;
pub mod mtcnn;
pub mod onnx;
pub mod optim;
pub mod params;
pub mod plot;
pub mod predict;
pub mod preprocess;
pub mod reference;
pub mod style;
pub mod train;
pub mod visualize;
pub mod weights;
