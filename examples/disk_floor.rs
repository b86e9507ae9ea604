//! What this disk allows for the flushes of pacsd's durability contract, with nothing else in
//! the way (used by scripts/bench-ingest.sh as the floor under its pacsd figures).
//!
//! Usage: disk_floor DIR OUT      (DIR must not exist; it is left for the caller to remove:
//!        removing its files at once would slow what the disk does next, see bench-ingest.sh)
//!
//! 1. The unit: one durable file, as a local replica writes an object (create, write, fsync,
//!    rename, fsync the directory), 300 times per size; median, p10 and p90 printed.
//! 2. The contract's floor for one C-STORE: the copies on every replica (one or three) and the
//!    index commit (an append of 1.5 KB to a log file and its fsync, what SQLite's WAL does for
//!    a row) started together and all waited for; objects one after another on each stream,
//!    the copies after the first dropped from the page cache once durable when pacsd does so
//!    (objects over `DEFER_FLUSH_UP_TO`: `Storage::uncache`),
//!    one or four streams (associations) at once; each commit is its own (not grouped). No
//!    parsing, hashing or network: no way of keeping the contract can beat this rate on this
//!    disk. Printed, and written to OUT as `corpus replicas streams objects/s` lines.
//!
//! Threads, not Python: a first version in Python measured less than pacsd itself reaches
//! with three replicas (its threads wait for the interpreter lock between syscalls).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Objects per measurement, over all streams.
const OBJECTS: usize = 400;
/// An index row as the WAL appends it (a page and a half).
const ROW: usize = 1_500;

fn durable(dir: &Path, name: &str, data: &[u8], uncache: bool) {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .expect("create");
    f.write_all(data).expect("write");
    f.sync_all().expect("fsync");
    if uncache {
        use std::os::fd::AsRawFd;
        // SAFETY: an open descriptor; the call only advises the kernel.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
    drop(f);
    fs::rename(&tmp, dir.join(name)).expect("rename");
    File::open(dir)
        .and_then(|d| d.sync_all())
        .expect("fsync dir");
}

fn commit(log: &File, row: &[u8]) {
    (&*log).write_all(row).expect("append");
    log.sync_all().expect("fsync log");
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn unit(root: &Path, size: usize) {
    let dir = root.join(format!("unit-{size}"));
    fs::create_dir_all(&dir).expect("mkdir");
    let data = pseudo_random(size, size as u64);
    let mut ms: Vec<f64> = (0..300)
        .map(|i| {
            let t = Instant::now();
            durable(&dir, &i.to_string(), &data, false);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q) as usize];
    println!(
        "one durable file, {} KB: median {:.2} ms, p10 {:.2}, p90 {:.2}",
        size / 1000,
        at(0.5),
        at(0.1),
        at(0.9)
    );
}

fn floor(root: &Path, size: usize, replicas: usize, streams: usize) -> f64 {
    let base = root.join(format!("r{replicas}-s{streams}-{size}"));
    let dirs: Vec<PathBuf> = (0..replicas)
        .map(|r| base.join(format!("replica{r}")))
        .collect();
    for d in &dirs {
        fs::create_dir_all(d).expect("mkdir");
    }
    let log = OpenOptions::new()
        .append(true)
        .create(true)
        .open(base.join("index-wal"))
        .expect("log");
    let data = pseudo_random(size, 7);
    let row = pseudo_random(ROW, 11);
    let per_stream = OBJECTS / streams;
    let t = Instant::now();
    std::thread::scope(|s| {
        for stream in 0..streams {
            let (dirs, data, row, log) = (&dirs, &data, &row, &log);
            s.spawn(move || {
                for i in 0..per_stream {
                    let name = format!("{stream}-{i}");
                    std::thread::scope(|one| {
                        for (r, d) in dirs.iter().enumerate() {
                            let name = &name;
                            let uncache = r > 0 && data.len() > pacsd::storage::DEFER_FLUSH_UP_TO;
                            one.spawn(move || durable(d, name, data, uncache));
                        }
                        commit(log, row);
                    });
                }
            });
        }
    });
    (per_stream * streams) as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, root, out] = &args[..] else {
        eprintln!("usage: disk_floor DIR OUT");
        std::process::exit(2);
    };
    let root = Path::new(root);
    assert!(!root.exists(), "{} exists", root.display());
    unit(root, 9_000);
    unit(root, 525_000);
    let mut lines = String::new();
    for (corpus, size) in [("ct", 525_000), ("small", 9_000)] {
        for replicas in [1, 3] {
            for streams in [1, 4] {
                let rate = floor(root, size, replicas, streams);
                println!(
                    "contract floor, {corpus} ({} KB), {replicas} replica(s), {streams} stream(s): {rate:.0} objects/s",
                    size / 1000
                );
                lines.push_str(&format!("{corpus} {replicas} {streams} {rate:.1}\n"));
            }
        }
    }
    fs::write(out, lines).expect("write OUT");
}
