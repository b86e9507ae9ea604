//! HA replication frames as a peer on the replication port sends them. The work is `pacsd::fuzzing::ha_frame`; a panic outside
//! the decoder boundary aborts, as it does in the node.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pacsd::dataset::install_panic_hook();
    pacsd::fuzzing::ha_frame(data);
});
