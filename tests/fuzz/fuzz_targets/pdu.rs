//! PDUs off a socket and the command sets inside P-DATA. The work is `pacsd::fuzzing::pdu`; a panic outside
//! the decoder boundary aborts, as it does in the node.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pacsd::dataset::install_panic_hook();
    pacsd::fuzzing::pdu(data);
});
