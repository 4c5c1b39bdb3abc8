//! Feeds arbitrary bytes to the parser and checker: every input must end in success or
//! diagnostics, never a panic. Run with `cargo fuzz run check` from the repository root.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let c = cnnc_compiler::compile_source("fuzz.cnn", None, data);
    for d in c.diagnostics() {
        let _ = d.render(&c.program.sources, false);
        let _ = d.to_json(&c.program.sources);
    }
    assert!(c.internal.is_empty(), "verifier failed: {:?}", c.internal);
});
