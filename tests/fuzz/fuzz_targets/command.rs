//! Command set decoding (PS3.7 E.1). The work is `pacsd::fuzzing::command`; a panic outside
//! the decoder boundary aborts, as it does in the node.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pacsd::dataset::install_panic_hook();
    pacsd::fuzzing::command(data);
});
