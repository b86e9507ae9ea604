//! What this disk allows for the flushes of pacsd's durability contract, with nothing else in
//! the way (used by scripts/bench-ingest.sh as the floor under its pacsd figures).
//!
//! Usage: disk_floor DIR OUT      (DIR must not exist; it is left for the caller to remove:
//!        removing its files at once would slow what the disk does next, see bench-ingest.sh)
//!        disk_floor --compare DIR SIZE...   (the three ways below side by side, for
//!        `storage::DEFER_FLUSH_UP_TO`; SIZE in bytes; prints only)
//!
//! 1. The unit: one durable file, as a local replica writes an object (create, write, fsync,
//!    rename, fsync the directory), 300 times per size; median, p10 and p90 printed.
//! 2. The contract's floor for one C-STORE: the copies on every replica (one or three) and the
//!    index commit (an append of 1.5 KB to a log file, what SQLite's WAL does for a row), each
//!    object made durable in one of three ways, and the fastest counts:
//!    - `per-file`: each copy fsynced with its directory and the log fsynced, all started
//!      together and all waited for;
//!    - `syncfs`: the copies and the log written without a flush, then one syncfs of the file
//!      system (`Storage::flush_with`, what pacsd does for objects up to
//!      `DEFER_FLUSH_UP_TO`);
//!    - `direct`: the same, with the copies written around the page cache
//!      (`storage::direct::put`, what pacsd does for such objects over `direct::DIRECT_FROM`).
//!
//!    Every copy's cached pages are dropped once durable (`Storage::uncache`; pacsd itself
//!    leaves a small object's, which costs it less than dropping them); objects one after
//!    another on each stream, one or four streams (associations) at once; no commit shared
//!    between streams. No parsing, hashing or network: no way of keeping the
//!    contract with one flush per object can beat this rate on this disk. Printed, and written
//!    to OUT as `corpus replicas streams objects/s` lines.
//!
//! Threads, not Python: a first version in Python measured less than pacsd itself reaches
//! with three replicas (its threads wait for the interpreter lock between syscalls).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use object_store::PutPayload;
use pacsd::storage::Durability;
use pacsd::storage::direct::{self, Aligned};

/// Objects per measurement, over all streams.
const OBJECTS: usize = 400;
/// An index row as the WAL appends it (a page and a half).
const ROW: usize = 1_500;

/// One copy as a local replica writes it: create a temporary file, write, rename. `PerFile`:
/// the file fsynced before the rename (its cached pages then dropped if `uncache`) and the
/// directory after it, as a `Flushed` put; `Syncfs`: no flush, as a `Deferred` one.
fn copy(dir: &Path, name: &str, data: &[u8], way: Way, uncache: bool) -> PathBuf {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .expect("create");
    f.write_all(data).expect("write");
    if way == Way::PerFile {
        f.sync_all().expect("fsync");
        if uncache {
            forget(&f);
        }
    }
    drop(f);
    let to = dir.join(name);
    fs::rename(&tmp, &to).expect("rename");
    if way == Way::PerFile {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .expect("fsync dir");
    }
    to
}

fn commit(log: &File, row: &[u8], flush: bool) {
    (&*log).write_all(row).expect("append");
    if flush {
        log.sync_all().expect("fsync log");
    }
}

fn syncfs(dir: &Path) {
    use std::os::fd::AsRawFd;
    let d = File::open(dir).expect("open");
    // SAFETY: an open descriptor for the whole call.
    assert_eq!(unsafe { libc::syncfs(d.as_raw_fd()) }, 0, "syncfs");
}

/// Drop a durable file's cached pages (`Storage::uncache`).
fn forget(f: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: an open descriptor; the call only advises the kernel.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// CPU time of this process so far, in seconds.
fn cpu_seconds() -> f64 {
    let stat = fs::read_to_string("/proc/self/stat").expect("stat");
    let fields: Vec<&str> = stat[stat.rfind(')').expect("stat") + 2..]
        .split_whitespace()
        .collect();
    let ticks = |i: usize| fields[i].parse::<f64>().expect("ticks");
    (ticks(11) + ticks(12)) / 100.0
}

/// How an object's copies and its row are made durable (see the module's step 2).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Way {
    PerFile,
    Syncfs,
    Direct,
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
            copy(&dir, &i.to_string(), &data, Way::PerFile, false);
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

/// Objects per second and CPU milliseconds per object for `objects` objects of `size` bytes
/// on `replicas` replicas over `streams` streams, made durable the `way` given.
fn floor(
    root: &Path,
    size: usize,
    replicas: usize,
    streams: usize,
    way: Way,
    objects: usize,
) -> (f64, f64) {
    let base = root.join(format!("r{replicas}-s{streams}-{size}-{way:?}"));
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
    let aligned = Aligned::copy_of(&PutPayload::from(data.clone()));
    let row = pseudo_random(ROW, 11);
    let per_stream = objects / streams;
    let (t, cpu) = (Instant::now(), cpu_seconds());
    std::thread::scope(|s| {
        for stream in 0..streams {
            let (dirs, data, row, log, base) = (&dirs, &data, &row, &log, &base);
            let aligned = &aligned;
            s.spawn(move || {
                for i in 0..per_stream {
                    let name = format!("{stream}-{i}");
                    let name = &name;
                    match way {
                        Way::PerFile => std::thread::scope(|one| {
                            for d in dirs {
                                one.spawn(move || copy(d, name, data, Way::PerFile, true));
                            }
                            commit(log, row, true);
                        }),
                        Way::Syncfs => {
                            let copies = std::thread::scope(|one| {
                                let copies: Vec<_> = dirs
                                    .iter()
                                    .map(|d| one.spawn(move || copy(d, name, data, way, false)))
                                    .collect();
                                commit(log, row, false);
                                copies
                                    .into_iter()
                                    .map(|c| c.join().expect("copy"))
                                    .collect::<Vec<_>>()
                            });
                            syncfs(base);
                            for c in &copies {
                                forget(&File::open(c).expect("open"));
                            }
                        }
                        Way::Direct => {
                            std::thread::scope(|one| {
                                for d in dirs {
                                    one.spawn(move || {
                                        direct::put(&d.join(name), aligned, Durability::Deferred)
                                            .expect("direct write")
                                    });
                                }
                                commit(log, row, false);
                            });
                            syncfs(base);
                        }
                    }
                }
            });
        }
    });
    let n = (per_stream * streams) as f64;
    (
        n / t.elapsed().as_secs_f64(),
        (cpu_seconds() - cpu) * 1e3 / n,
    )
}

/// `--compare`: the three ways for each size, 3 replicas, 1 and 4 streams.
fn compare(root: &Path, sizes: &[usize]) {
    for &size in sizes {
        let objects = (200_000_000 / size).clamp(40, 400);
        for streams in [1, 4] {
            for way in [Way::PerFile, Way::Syncfs, Way::Direct] {
                let (rate, cpu) = floor(root, size, 3, streams, way, objects);
                println!(
                    "{size} bytes, 3 replicas, {streams} stream(s), {way:?}: {rate:.0} objects/s, CPU {cpu:.2} ms per object"
                );
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--compare") && args.len() > 3 {
        let root = Path::new(&args[2]);
        assert!(!root.exists(), "{} exists", root.display());
        let sizes: Vec<usize> = args[3..]
            .iter()
            .map(|s| s.parse().expect("SIZE in bytes"))
            .collect();
        return compare(root, &sizes);
    }
    let [_, root, out] = &args[..] else {
        eprintln!("usage: disk_floor DIR OUT | disk_floor --compare DIR SIZE...");
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
                let ways = [Way::PerFile, Way::Syncfs, Way::Direct]
                    .map(|w| floor(root, size, replicas, streams, w, OBJECTS).0);
                let rate = ways.iter().copied().fold(0.0, f64::max);
                println!(
                    "contract floor, {corpus} ({} KB), {replicas} replica(s), {streams} stream(s): {rate:.0} objects/s (per-file {:.0}, syncfs {:.0}, direct {:.0})",
                    size / 1000,
                    ways[0],
                    ways[1],
                    ways[2]
                );
                lines.push_str(&format!("{corpus} {replicas} {streams} {rate:.1}\n"));
            }
        }
    }
    fs::write(out, lines).expect("write OUT");
}
