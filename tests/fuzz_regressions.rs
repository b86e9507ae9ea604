//! Every input that once crashed or exhausted a fuzz target (tests/fuzz/regressions/<target>/)
//! is replayed through the same code (`pacsd::fuzzing`) with the node's panic policy: it must
//! return, within bounded memory, without a panic escaping the decoder boundary.

mod common;

use std::path::Path;

#[test]
fn inputs_that_once_failed_a_fuzz_target_are_handled() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/regressions");
    let mut replayed = 0;
    for (name, run) in pacsd::fuzzing::TARGETS {
        let dir = root.join(name);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let input = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&input));
            assert!(outcome.is_ok(), "{name}: {} panicked", path.display());
            replayed += 1;
        }
    }
    assert!(replayed >= 3, "only {replayed} regression inputs found");
    // The process's peak memory stays far from what the old failures allocated (2.7-4.3 GB).
    let peak = common::peak_rss_of("self");
    assert!(peak < 512 << 20, "peak RSS {peak} bytes");
}
