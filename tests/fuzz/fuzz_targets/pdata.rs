//! P-DATA reassembly into DIMSE messages under the size limit and receive budget. The work is
//! `pacsd::fuzzing::pdata`; a panic outside the decoder boundary aborts, as it does in the node.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pacsd::dataset::install_panic_hook();
    pacsd::fuzzing::pdata(data);
});
