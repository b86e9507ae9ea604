//! Part 10 files as storage returns them, rendered to a preview. The work is `pacsd::fuzzing::part10`; a panic outside
//! the decoder boundary aborts, as it does in the node.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pacsd::dataset::install_panic_hook();
    pacsd::fuzzing::part10(data);
});
