//! The standard library: `.cnn` files under `stdlib/`, embedded in the binary so that
//! `use std.resnet.bottleneck` works wherever cnnc runs.

/// Every standard module: its name (`use std.NAME...`) and its text.
pub const MODULES: &[(&str, &str)] = &[
    ("layers", include_str!("../../stdlib/layers.cnn")),
    ("lenet", include_str!("../../stdlib/lenet.cnn")),
    ("alexnet", include_str!("../../stdlib/alexnet.cnn")),
    ("vgg", include_str!("../../stdlib/vgg.cnn")),
    ("resnet", include_str!("../../stdlib/resnet.cnn")),
    ("inception", include_str!("../../stdlib/inception.cnn")),
];

/// The text of standard module `name`.
pub fn source(name: &str) -> Option<&'static str> {
    MODULES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}
