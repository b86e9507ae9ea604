//! The data set pre-scan and parse in every encoding a peer can choose. The work is `pacsd::fuzzing::dataset`; a panic outside
//! the decoder boundary aborts, as it does in the node.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pacsd::dataset::install_panic_hook();
    pacsd::fuzzing::dataset(data);
});
