//! The HA pair in network namespaces (scripts/ha-lab.sh): nodes a and b, a witness w and a
//! client c on one bridge, the service IP 10.77.0.100 moving between a and b. The client
//! runs in c (a thread that entered c's network namespace) and only ever talks to the
//! service IP. Needs root; PACSD_SKIP_NETNS=1 skips (and says so).

// `serial()` is held for a whole test on purpose (one pair at a time); each test's future
// runs on its own thread, so holding it across awaits cannot deadlock.
#![allow(clippy::await_holding_lock)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dicom_dictionary_std::uids;
use pacsd::ha::driver::Status;
use pacsd::net::scu::{ProposedContext, ScuAssociation, ScuOptions};
use pacsd::synth::Spec;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_pacsd");
const SERVICE: &str = "10.77.0.100:11112";

struct Lab {
    name: String,
    dir: tempfile::TempDir,
    nodes: Vec<(String, Option<Child>)>,
    witness: Option<Child>,
}

/// How the lab's nodes are set up beyond the common configuration.
#[derive(Clone, Default)]
struct Setup {
    /// `heartbeat_ms`, `lease_ms`, `margin_ms` (the defaults when None).
    timing: Option<(u64, u64, u64)>,
    /// Render previews (work for both nodes' CPUs under load).
    previews: bool,
    /// The third replica's location, instead of a directory (an HDFS in the lab).
    third_replica: Option<String>,
}

fn lab(name: &str) -> Option<Lab> {
    lab_with(name, Setup::default())
}

fn lab_with(name: &str, setup: Setup) -> Option<Lab> {
    if std::env::var("PACSD_SKIP_NETNS").as_deref() == Ok("1") {
        eprintln!("SKIPPED: network namespace test (PACSD_SKIP_NETNS=1)");
        return None;
    }
    let out = Command::new("bash")
        .arg(script("ha-lab.sh"))
        .args(["down", name])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = Command::new("bash")
        .arg(script("ha-lab.sh"))
        .args(["up", name])
        .output()
        .unwrap();
    assert_succeeded(
        &out,
        "the HA lab needs root and iproute2 (PACSD_SKIP_NETNS=1 skips)",
    );
    let dir = tempfile::tempdir().unwrap();
    let mut l = Lab {
        name: name.into(),
        dir,
        nodes: Vec::new(),
        witness: None,
    };
    for (me, peer, host) in [("a", "b", 2), ("b", "a", 3)] {
        l.write_config(me, peer, host, &setup);
        l.nodes.push((me.into(), None));
    }
    Some(l)
}

impl Lab {
    fn config(&self, node: &str) -> PathBuf {
        self.dir.path().join(format!("{node}.toml"))
    }

    fn write_config(&self, me: &str, _peer: &str, host: u8, setup: &Setup) {
        let d = self.dir.path();
        let peer_host = if host == 2 { 3 } else { 2 };
        std::fs::create_dir_all(d.join(me)).unwrap();
        // The pair's shared heartbeat key (both members name the same file).
        std::fs::write(d.join("ha.key"), [0x5a; 32]).unwrap();
        let replicas: Vec<String> = (1..=3)
            .map(|i| match (&setup.third_replica, i) {
                (Some(url), 3) => format!("\"{url}\""),
                _ => format!("\"{}\"", d.join(format!("r{i}")).display()),
            })
            .collect();
        std::fs::write(
            self.config(me),
            format!(
                "[node]\nbind = \"10.77.0.{host}\"\nport = 11112\n\n[timeouts]\nshutdown_secs = 2.0\n\n\
                 [index]\npath = \"{index}\"\n\n[storage]\nreplicas = [{replicas}]\nrepair_interval_secs = 1.0\n\n\
                 [access]\nunknown_ae_services = [\"echo\", \"store\", \"find\", \"get\"]\nunknown_ae_hosts = [\"0.0.0.0/0\"]\n\n\
                 [preview]\nenabled = {previews}\n\n\
                 [ha]\nnode_id = \"{me}\"\n{timing}\
                 links = [{{ bind = \"10.77.0.{host}:7400\", peer = \"10.77.0.{peer_host}:7400\" }}]\n\
                 replication_bind = \"10.77.0.{host}:7401\"\npeer_replication = \"10.77.0.{peer_host}:7401\"\n\
                 arbiter = \"witness://10.77.0.4:7402\"\n\
                 service_ip = \"10.77.0.100/24\"\ninterface = \"eth0\"\n\
                 key_file = \"{key}\"\n",
                key = d.join("ha.key").display(),
                index = d.join(me).join("index.sqlite").display(),
                replicas = replicas.join(", "),
                previews = setup.previews,
                timing = setup.timing.map_or(String::new(), |(h, l, m)| format!(
                    "heartbeat_ms = {h}\nlease_ms = {l}\nmargin_ms = {m}\n"
                )),
            ),
        )
        .unwrap();
    }

    fn start_witness(&mut self) {
        let child = Command::new("ip")
            .args(["netns", "exec", &format!("{}-w", self.name), BIN])
            .args(witness_args("10.77.0.4:7402", self.dir.path()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.witness = Some(child);
        // Ready once it listens (checked from inside the lab).
        let ns = format!("{}-c", self.name);
        let up = in_netns(&ns, || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect("10.77.0.4:7402").is_err() {
                if Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            true
        });
        assert!(up.join().unwrap(), "witness did not start");
    }

    fn start(&mut self, node: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{node}.log")))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &format!("{}-{node}", self.name), BIN])
            .args(["serve", "--config"])
            .arg(self.config(node))
            .env("RUST_LOG", "pacsd=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let slot = self.nodes.iter_mut().find(|(n, _)| n == node).unwrap();
        slot.1 = Some(child);
    }

    /// Wait for `node`'s process to exit by itself.
    fn wait_exit(&mut self, node: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let slot = self.nodes.iter_mut().find(|(n, _)| n == node).unwrap();
        let Some(child) = slot.1.as_mut() else {
            return true;
        };
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                slot.1 = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn signal(&self, node: &str, sig: &str) {
        let pid = self
            .nodes
            .iter()
            .find(|(n, _)| n == node)
            .and_then(|(_, c)| c.as_ref())
            .expect("running")
            .id();
        assert!(
            Command::new("kill")
                .args([sig, &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
    }

    fn status(&self, node: &str) -> Option<Status> {
        ha_status(&self.config(node))
    }

    fn primary(&self) -> Option<String> {
        ["a", "b"].into_iter().find_map(|n| {
            self.status(n)
                .filter(|s| {
                    s.role == "primary" && s.holds_service_ip && s.replication_lag == Some(0)
                })
                .map(|_| n.to_string())
        })
    }

    fn isolate(&self, on: bool) {
        let out = Command::new("bash")
            .arg(script("ha-lab.sh"))
            .args(["isolate", &self.name, if on { "on" } else { "off" }])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }

    fn logs(&self) -> String {
        ["a", "b"]
            .iter()
            .map(|n| {
                format!(
                    "--- {n}.log\n{}",
                    std::fs::read_to_string(self.dir.path().join(format!("{n}.log")))
                        .unwrap_or_default()
                )
            })
            .collect()
    }

    /// Up and settled: a primary holding the service IP with its standby caught up.
    fn settle(&mut self) -> String {
        self.start_witness();
        self.start("a");
        // a is up (it answers its control socket) before b starts.
        assert!(
            wait_for(Duration::from_secs(20), || self.status("a").is_some()),
            "a answers"
        );
        self.start("b");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(p) = self.primary() {
                let other = if p == "a" { "b" } else { "a" };
                if self.status(other).is_some_and(|s| s.role == "standby") {
                    return p;
                }
            }
            assert!(
                Instant::now() < deadline,
                "lab did not settle\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, c) in &mut self.nodes {
            if let Some(c) = c {
                let _ = Command::new("kill")
                    .args(["-CONT", &c.id().to_string()])
                    .status();
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if let Some(w) = &mut self.witness {
            let _ = w.kill();
            let _ = w.wait();
        }
        let _ = Command::new("bash")
            .arg(script("ha-lab.sh"))
            .args(["down", &self.name])
            .output();
    }
}

/// Run `f` on a thread inside network namespace `ns` (with its own runtime).
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = Path::new("/var/run/netns").join(ns);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("netns file");
        // SAFETY: setns on this thread only, with a valid namespace fd.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
}

fn opts(timeout: Duration) -> ScuOptions {
    scu_to(SERVICE, "LABCLIENT", timeout)
}

/// What the client saw: each instance it was told was stored, with when, and failures.
#[derive(Debug, Default)]
struct Seen {
    acked: Vec<(Spec, Instant)>,
    /// Every attempt that stored nothing: no association, or a C-STORE not acknowledged.
    failed: Vec<Instant>,
    /// Of those, the C-STOREs sent on an association and not acknowledged (a failure
    /// status, no answer, or the association lost under them).
    store_failed: Vec<Instant>,
}

/// Store one instance per association to the service IP while `go()` says so, counting
/// acknowledgements in `acked`; an association that cannot be had is tried again after
/// 10 ms (as a modality retries).
async fn store_while(study: u32, first: u32, go: impl Fn() -> bool, acked: &AtomicUsize) -> Seen {
    enum Outcome {
        Acked,
        NoAssociation,
        NotAcked,
    }
    let mut seen = Seen::default();
    let mut n = first;
    while go() {
        let spec = Spec::ct(study, 1, n, 16);
        n += 1;
        let ctx = ProposedContext {
            abstract_syntax: uids::CT_IMAGE_STORAGE.into(),
            transfer_syntaxes: vec![uids::EXPLICIT_VR_LITTLE_ENDIAN.into()],
        };
        let outcome = match ScuAssociation::connect(&opts(Duration::from_secs(2)), &[ctx]).await {
            Err(_) => Outcome::NoAssociation,
            Ok(mut a) => {
                let id = a.contexts()[0].id;
                let st = tokio::time::timeout(
                    Duration::from_secs(3),
                    a.store(id, &spec.sop_class, &spec.sop_uid, &encode(&spec)),
                )
                .await;
                let _ = a.release().await;
                match st {
                    Ok(Ok(st)) if st.is_success() => Outcome::Acked,
                    _ => Outcome::NotAcked,
                }
            }
        };
        match outcome {
            Outcome::Acked => {
                seen.acked.push((spec, Instant::now()));
                acked.fetch_add(1, Ordering::SeqCst);
            }
            failure => {
                seen.failed.push(Instant::now());
                if matches!(failure, Outcome::NotAcked) {
                    seen.store_failed.push(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    seen
}

/// A client in the lab's client namespace storing one instance per association through the
/// service IP until stopped. Tests wait for its progress (acknowledgements), never for a
/// fixed time: "the client is storing" is at least N acknowledged, "service is back" is N
/// more after the fault.
struct Client {
    handle: Option<std::thread::JoinHandle<Seen>>,
    acked: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Client {
    /// Instances acknowledged before a test injects its fault, and after it to show that
    /// service is back: enough to be sure stores flow (about a second in the lab).
    const FLOWING: usize = 20;

    /// Start storing study `study` from instance 1 and wait until stores flow.
    fn flowing(lab: &Lab, study: u32) -> Client {
        let c = Client::start(lab, study, 1);
        c.wait_more(lab, Client::FLOWING, Duration::from_secs(30));
        c
    }

    /// Start storing study `study` from instance number `first`.
    fn start(lab: &Lab, study: u32, first: u32) -> Client {
        let acked = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopped) = (acked.clone(), stop.clone());
        let handle = in_netns(&format!("{}-c", lab.name), move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(store_while(
                    study,
                    first,
                    move || !stopped.load(Ordering::SeqCst),
                    &count,
                ))
        });
        Client {
            handle: Some(handle),
            acked,
            stop,
        }
    }

    fn acked(&self) -> usize {
        self.acked.load(Ordering::SeqCst)
    }

    /// Wait until `more` instances beyond those acknowledged so far are acknowledged.
    fn wait_more(&self, lab: &Lab, more: usize, limit: Duration) {
        let target = self.acked() + more;
        lab.wait_until(&format!("{target} instances acknowledged"), limit, |_| {
            self.acked() >= target
        });
    }

    /// Wait for `FLOWING` more acknowledgements (service is up), then stop; what it saw.
    fn finish(mut self, lab: &Lab) -> Seen {
        self.wait_more(lab, Self::FLOWING, Duration::from_secs(30));
        self.stop()
    }

    /// Stop now; what it saw.
    fn stop(&mut self) -> Seen {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().expect("stopped once").join().unwrap()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // A test that fails mid-way does not leave a client storing into the next one.
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Every acknowledged instance is found and retrieved through the service IP.
fn assert_all_kept(lab: &Lab, acked: Vec<Spec>) {
    let kept = in_netns(&format!("{}-c", lab.name), move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                // The client's ARP entry moves with the gratuitous ARP a few ms after the new
                // primary took the address; until then a killed node's namespace (which keeps
                // the address) refuses. A client reconnects, and so does this check.
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    match check_kept(&opts(Duration::from_secs(20)), &acked).await {
                        Err(e) if e.contains("connecting to") && Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        other => return other,
                    }
                }
            })
    })
    .join()
    .unwrap();
    if let Err(e) = kept {
        panic!("{e}\n{}", lab.logs());
    }
}

/// The longest time without a success from `from` to `to` (counted from the last success
/// before `from` up to the first one after `to`).
fn longest_gap(seen: &Seen, from: Instant, to: Instant) -> Duration {
    let times: Vec<Instant> = seen.acked.iter().map(|(_, t)| *t).collect();
    let start = times
        .iter()
        .filter(|t| **t <= from)
        .max()
        .copied()
        .unwrap_or(from);
    let end = times
        .iter()
        .filter(|t| **t > to)
        .min()
        .copied()
        .unwrap_or(to);
    let mut inside: Vec<Instant> = times
        .into_iter()
        .filter(|t| *t > start && *t < end)
        .collect();
    inside.sort();
    let mut last = start;
    let mut longest = Duration::ZERO;
    for t in inside.into_iter().chain([end]) {
        longest = longest.max(t - last);
        last = t;
    }
    longest
}

/// The longest time between two successes around `fault`.
fn gap(seen: &Seen, fault: Instant) -> Duration {
    let before = seen
        .acked
        .iter()
        .map(|(_, t)| *t)
        .filter(|t| *t <= fault)
        .max()
        .unwrap_or(fault);
    let after = seen
        .acked
        .iter()
        .map(|(_, t)| *t)
        .filter(|t| *t > fault)
        .min()
        .expect("a success after the fault");
    after - before
}

/// Settle the pair, store until stores flow, kill the primary and store on until they flow
/// again: the first primary's name, what the client saw, and the service gap.
fn crash_under_load(lab: &mut Lab, study: u32) -> (String, Seen, Duration) {
    let first = lab.settle();
    let c = Client::flowing(lab, study);
    let fault = Instant::now();
    lab.signal(&first, "-KILL");
    let seen = c.finish(lab);
    let g = gap(&seen, fault);
    (first, seen, g)
}

#[test]
fn crash_failover_moves_the_service_ip_and_keeps_every_acknowledged_instance() {
    let _serial = serial();
    let Some(mut lab) = lab("hcr") else { return };
    let (first, seen, g) = crash_under_load(&mut lab, 501);
    eprintln!(
        "crash failover: service gap {g:?}, {} acknowledged, {} failed client operations",
        seen.acked.len(),
        seen.failed.len()
    );
    let second = if first == "a" { "b" } else { "a" };
    let s = lab.status(second).unwrap();
    assert!(s.role.starts_with("primary") && s.holds_service_ip, "{s:?}");
    assert_all_kept(&lab, seen.acked.into_iter().map(|(s, _)| s).collect());
}

/// The pair with its third replica on a real HDFS (a MiniDFSCluster in the lab's witness
/// namespace, reached over the bridge at 10.77.0.4): the primary is killed under load, the
/// standby takes over, and every acknowledged instance is kept, on HDFS too.
#[cfg(feature = "hdfs")]
#[test]
fn crash_failover_with_a_replica_on_hdfs() {
    let _serial = serial();
    let Some(mut lab) = lab("hdf") else { return };
    let dfs = MiniDfs::start_in(Some(("hdf-w", "10.77.0.4")), 1, false);
    let setup = Setup {
        third_replica: Some(dfs.replica("lab/r3")),
        ..Setup::default()
    };
    for (me, peer, host) in [("a", "b", 2), ("b", "a", 3)] {
        lab.write_config(me, peer, host, &setup);
    }
    let (_, seen, g) = crash_under_load(&mut lab, 521);
    eprintln!(
        "crash failover with an HDFS replica: service gap {g:?}, {} acknowledged, {} failed \
         ({} C-STOREs not acknowledged)",
        seen.acked.len(),
        seen.failed.len(),
        seen.store_failed.len()
    );
    let acked: Vec<Spec> = seen.acked.into_iter().map(|(s, _)| s).collect();
    assert!(!acked.is_empty());
    assert_all_kept(&lab, acked.clone());
    // The objects reach HDFS as well: a C-STORE is answered at the local quorum and the HDFS
    // write goes on in the background, queued for repair until it is done, so what the killed
    // primary had not finished writing there is copied by the new primary's repair worker.
    // Listed through the HDFS replica alone, from the client's namespace (the HDFS client's
    // threads start there).
    let url = dfs.replica("lab/r3");
    let ns = format!("{}-c", lab.name);
    let on_hdfs = || {
        let (url, acked) = (url.clone(), acked.clone());
        in_netns(&ns, move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let hdfs = pacsd::storage::Location::parse(&url)
                    .unwrap()
                    .open()
                    .unwrap();
                use futures::StreamExt;
                let listed: Vec<String> = hdfs
                    .list(None)
                    .filter_map(|m| async move { m.ok().map(|m| m.location.to_string()) })
                    .collect()
                    .await;
                acked
                    .iter()
                    .filter(|s| {
                        listed
                            .iter()
                            .any(|k| k.ends_with(&format!("/{}.dcm", s.sop_uid)))
                    })
                    .count()
            })
        })
        .join()
        .unwrap()
    };
    let first_look = on_hdfs();
    let all = wait_for(Duration::from_secs(90), || on_hdfs() == acked.len());
    eprintln!(
        "{first_look} of {} acknowledged instances on HDFS right after the takeover; all of \
         them {}",
        acked.len(),
        if all {
            "within 90 s"
        } else {
            "NOT within 90 s"
        }
    );
    assert!(
        all,
        "every acknowledged instance reaches HDFS ({} of {})\n{}",
        on_hdfs(),
        acked.len(),
        lab.logs()
            .lines()
            .filter(|l| l.contains("WARN"))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The HTTP status of `GET path` on the service IP's HTTP port, from the client's namespace
/// (0: no answer).
fn http_via_service_ip(lab: &Lab, path: &'static str) -> u16 {
    in_netns(&format!("{}-c", lab.name), move || {
        let addr: std::net::SocketAddr = "10.77.0.100:8104".parse().unwrap();
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => http_status(s, "10.77.0.100", path, None),
            Err(_) => 0,
        }
    })
    .join()
    .unwrap()
}

#[test]
fn planned_switchover_moves_the_service_ip() {
    let _serial = serial();
    let Some(mut lab) = lab("hsw") else { return };
    let first = lab.settle();
    // DICOMweb follows the primary role: on the service IP, served by the primary.
    assert_eq!(http_via_service_ip(&lab, "/readyz"), 200);
    let c = Client::flowing(&lab, 502);
    let fault = Instant::now();
    let out = Command::new(BIN)
        .args(["ha", "switchover", "--config"])
        .arg(lab.config(&first))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let seen = c.finish(&lab);
    let g = gap(&seen, fault);
    eprintln!(
        "switchover: service gap {g:?}, {} acknowledged, {} failed client operations",
        seen.acked.len(),
        seen.failed.len()
    );
    let second = if first == "a" { "b" } else { "a" };
    assert!(lab.status(second).unwrap().holds_service_ip);
    assert!(!lab.status(&first).unwrap().holds_service_ip);
    // ... and now by the new primary (the old one released the address with its listeners).
    assert_eq!(http_via_service_ip(&lab, "/readyz"), 200);
    assert_all_kept(&lab, seen.acked.into_iter().map(|(s, _)| s).collect());
}

#[test]
fn a_cut_link_between_the_nodes_makes_no_second_primary() {
    let _serial = serial();
    let Some(mut lab) = lab("hsp") else { return };
    let first = lab.settle();
    let c = Client::flowing(&lab, 503);
    lab.isolate(true);
    // While cut: sample both nodes; never two serving primaries in one epoch, and the
    // service IP held by at most one node at a time... except for the moment a superseded
    // primary takes to notice (it can no longer acknowledge anything by then).
    let until = Instant::now() + Duration::from_secs(3);
    let mut primaries = BTreeSet::new();
    while Instant::now() < until {
        let (sa, sb) = (lab.status("a").unwrap(), lab.status("b").unwrap());
        for s in [&sa, &sb] {
            if s.role.starts_with("primary") {
                primaries.insert((s.epoch, s.node.clone()));
            }
        }
        if sa.role.starts_with("primary") && sb.role.starts_with("primary") {
            assert_ne!(sa.epoch, sb.epoch, "two primaries in one epoch");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let epochs: Vec<u64> = primaries.iter().map(|(e, _)| *e).collect();
    let unique: BTreeSet<u64> = epochs.iter().copied().collect();
    assert_eq!(
        epochs.len(),
        unique.len(),
        "an epoch with two primaries: {primaries:?}"
    );
    lab.isolate(false);
    let seen = c.finish(&lab);
    eprintln!(
        "link cut: primaries seen {primaries:?}, {} acknowledged, {} failed client operations",
        seen.acked.len(),
        seen.failed.len()
    );
    let _ = first;
    assert_all_kept(&lab, seen.acked.into_iter().map(|(s, _)| s).collect());
}

/// Epochs in which more than one node logged that it served as primary.
fn double_primary_epochs(lab: &Lab) -> Vec<u64> {
    let mut served: std::collections::BTreeMap<u64, BTreeSet<String>> = Default::default();
    for n in ["a", "b"] {
        let log =
            std::fs::read_to_string(lab.dir.path().join(format!("{n}.log"))).unwrap_or_default();
        for line in log.lines().filter(|l| l.contains("primary: serving")) {
            if let Some(e) = line
                .split("epoch=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|e| e.parse().ok())
            {
                served.entry(e).or_default().insert(n.to_string());
            }
        }
    }
    served
        .into_iter()
        .filter(|(_, nodes)| nodes.len() > 1)
        .map(|(e, _)| e)
        .collect()
}

fn quantiles(mut v: Vec<Duration>) -> String {
    v.sort();
    let q = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    format!(
        "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        q(0.5).as_secs_f64() * 1e3,
        q(0.99).as_secs_f64() * 1e3,
        v.last().unwrap().as_secs_f64() * 1e3
    )
}

/// scripts/bench-failover.sh: N crash failovers (kill -9 of the primary) and N planned
/// switchovers with a client storing through the service IP all along; prints the service
/// gaps, failed client operations, acknowledged-but-lost instances and epochs with two
/// primaries. Run with `--ignored`; PACSD_FAILOVERS sets N (default 20).
#[test]
#[ignore = "benchmark: run by scripts/bench-failover.sh"]
fn failover_benchmark() {
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Fault {
        Crash,
        Switchover,
        StopPrimary,
        StopStandby,
    }
    let _serial = serial();
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let n: usize = env("PACSD_FAILOVERS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    // PACSD_HA_TIMING=heartbeat/lease/margin in ms (the defaults otherwise).
    let timing = env("PACSD_HA_TIMING").map(|t| {
        let v: Vec<u64> = t.split('/').map(|x| x.parse().expect("ms")).collect();
        (v[0], v[1], v[2])
    });
    // PACSD_LOAD_SECS > 0: previews on, ingest and CPU burners all along, and first that
    // many seconds under load with no fault, counting epochs claimed (false takeovers).
    let load_secs: u64 = env("PACSD_LOAD_SECS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let faults = env("PACSD_FAULTS").unwrap_or("crash,switchover,stop-primary,stop-standby".into());
    let Some(mut lab) = lab_with(
        "hbench",
        Setup {
            timing,
            previews: load_secs > 0,
            ..Setup::default()
        },
    ) else {
        return;
    };
    let mut primary = lab.settle();
    let mut acked = Vec::new();
    let load = (load_secs > 0).then(|| Load::start(&lab));
    let mut false_takeovers = None;
    if load.is_some() {
        let before: Vec<u64> = ["a", "b"]
            .iter()
            .map(|n| lab.status(n).unwrap().epoch)
            .collect();
        std::thread::sleep(Duration::from_secs(load_secs));
        let after: Vec<u64> = ["a", "b"]
            .iter()
            .map(|n| lab.status(n).map_or(0, |s| s.epoch))
            .collect();
        let claimed = after.iter().max().unwrap() - before.iter().max().unwrap();
        false_takeovers = Some(claimed);
        // A false takeover moved the primary: go on from wherever it is now.
        if claimed > 0 {
            lab.wait_until(
                "settled after a false takeover",
                Duration::from_secs(30),
                |l| l.primary().is_some(),
            );
            primary = lab.primary().unwrap();
        }
    }
    let mut next_study = 600;
    let mut run = |lab: &mut Lab, primary: &mut String, fault: Fault| -> (Duration, usize, usize) {
        next_study += 1;
        let c = Client::start(lab, next_study, 1);
        c.wait_more(lab, Client::FLOWING, Duration::from_secs(30));
        let at = Instant::now();
        let other = if primary == "a" { "b" } else { "a" };
        match fault {
            Fault::Crash => lab.signal(primary, "-KILL"),
            Fault::StopPrimary => lab.signal(primary, "-TERM"),
            Fault::StopStandby => lab.signal(other, "-TERM"),
            Fault::Switchover => {
                let out = Command::new(BIN)
                    .args(["ha", "switchover", "--config"])
                    .arg(lab.config(primary))
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{}", text(&out));
            }
        }
        let seen = c.finish(lab);
        let g = gap(&seen, at);
        let failed = seen.failed.len();
        let store_failed = seen.store_failed.len();
        acked.push(seen.acked.into_iter().map(|(s, _)| s).collect::<Vec<_>>());
        // The stopped node rejoins as standby and catches up before the next round.
        let (stopped, next_primary) = match fault {
            Fault::Crash | Fault::StopPrimary => (Some(primary.clone()), other),
            Fault::StopStandby => (Some(other.to_string()), primary.as_str()),
            Fault::Switchover => (None, other),
        };
        let next_primary = next_primary.to_string();
        if let Some(node) = stopped {
            assert!(
                lab.wait_exit(&node, Duration::from_secs(15)),
                "{node} did not stop\n{}",
                lab.logs()
            );
            lab.start(&node);
        }
        let standby = if next_primary == "a" { "b" } else { "a" };
        let deadline = Instant::now() + Duration::from_secs(30);
        while lab.primary().as_deref() != Some(next_primary.as_str())
            || lab.status(standby).is_none_or(|s| s.role != "standby")
            || lab.status(&next_primary).is_none_or(|s| s.solo)
        {
            assert!(Instant::now() < deadline, "did not settle\n{}", lab.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
        *primary = next_primary;
        (g, failed, store_failed)
    };
    let mut rows = Vec::new();
    for (fault, name, label) in [
        (Fault::Crash, "crash", "crash (kill -9 primary)"),
        (Fault::Switchover, "switchover", "planned switchover     "),
        (
            Fault::StopPrimary,
            "stop-primary",
            "SIGTERM to the primary ",
        ),
        (
            Fault::StopStandby,
            "stop-standby",
            "SIGTERM to the standby ",
        ),
    ] {
        if !faults.split(',').any(|f| f == name) {
            continue;
        }
        let (mut gaps, mut failed, mut store_failed) = (Vec::new(), 0, 0);
        for _ in 0..n {
            let (g, f, sf) = run(&mut lab, &mut primary, fault);
            gaps.push(g);
            failed += f;
            store_failed += sf;
        }
        rows.push((label, gaps, failed, store_failed));
    }
    let loaded = load.map(|l| l.stop());
    if let Some(studies) = &loaded {
        acked.extend(studies.iter().cloned());
    }
    let total: usize = acked.iter().map(Vec::len).sum();
    for batch in acked {
        assert_all_kept(&lab, batch);
    }
    let doubles = double_primary_epochs(&lab);
    println!(
        "failover benchmark, {n} of each, client storing through the service IP; timing (heartbeat/lease/margin ms) {}:",
        timing.map_or("default".to_string(), |(h, l, m)| format!("{h}/{l}/{m}"))
    );
    if let (Some(claimed), Some(studies)) = (false_takeovers, &loaded) {
        println!(
            "  under load ({LOAD_CLIENTS} ingest clients of {LOAD_SIZE}x{LOAD_SIZE} CT with previews, {LOAD_BURNERS} CPU burners; {} instances stored by them): epochs claimed in {load_secs} s with no fault: {claimed}",
            studies.iter().map(Vec::len).sum::<usize>()
        );
    }
    for (label, gaps, failed, store_failed) in rows {
        println!(
            "  {label}: service gap {}; failed client operations {failed} (of them C-STOREs sent and not acknowledged: {store_failed})",
            quantiles(gaps)
        );
    }
    println!(
        "  acknowledged instances {total}, acknowledged but lost 0 (every one found and retrieved)"
    );
    println!("  epochs with two primaries: {}", doubles.len());
    assert!(doubles.is_empty(), "epochs with two primaries: {doubles:?}");
}

/// Ingest clients storing through the service IP in the lab.
const LOAD_CLIENTS: u32 = 3;
/// Their images' rows and columns (16-bit CT: 128 KiB each, with previews to render; at
/// 512 the lab wrote 38 GB in one setting).
const LOAD_SIZE: u16 = 256;
/// Processes spinning on the CPU beside the nodes (the machines have 2 cores).
const LOAD_BURNERS: usize = 2;

/// Background load for the timing benchmark: ingest through the service IP (with previews
/// rendered by the nodes) and processes that only burn CPU.
struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<std::thread::JoinHandle<Vec<Spec>>>,
    burners: Vec<Child>,
}

impl Load {
    fn start(lab: &Lab) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..LOAD_CLIENTS)
            .map(|i| {
                let stop = stop.clone();
                in_netns(&format!("{}-c", lab.name), move || {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap()
                        .block_on(load_client(900 + i, stop))
                })
            })
            .collect();
        let burners = (0..LOAD_BURNERS)
            .map(|_| {
                Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .spawn()
                    .unwrap()
            })
            .collect();
        Load {
            stop,
            clients,
            burners,
        }
    }

    /// Stop it; what the ingest clients were told was stored, by series.
    fn stop(mut self) -> Vec<Vec<Spec>> {
        self.stop.store(true, Ordering::SeqCst);
        for b in &mut self.burners {
            let _ = b.kill();
            let _ = b.wait();
        }
        let mut series: BTreeMap<String, Vec<Spec>> = BTreeMap::new();
        for c in self.clients.drain(..) {
            for spec in c.join().unwrap() {
                series
                    .entry(spec.series_uid.clone())
                    .or_default()
                    .push(spec);
            }
        }
        series.into_values().collect()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for b in &mut self.burners {
            let _ = b.kill();
            let _ = b.wait();
        }
    }
}

/// Instances per series of a load client (a C-FIND answers at most `query.max_results`,
/// 10,000, so the check that every one was kept looks at one series at a time).
const LOAD_SERIES: u32 = 1000;

/// Store CT images of `study` on one association after another until `stop`.
async fn load_client(study: u32, stop: Arc<AtomicBool>) -> Vec<Spec> {
    let mut acked = Vec::new();
    let mut n = 1;
    while !stop.load(Ordering::SeqCst) {
        let ctx = ProposedContext {
            abstract_syntax: uids::CT_IMAGE_STORAGE.into(),
            transfer_syntaxes: vec![uids::EXPLICIT_VR_LITTLE_ENDIAN.into()],
        };
        let Ok(mut a) = ScuAssociation::connect(&opts(Duration::from_secs(2)), &[ctx]).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let id = a.contexts()[0].id;
        for _ in 0..20 {
            let spec = Spec::ct(study, 1 + n / LOAD_SERIES, n, LOAD_SIZE);
            n += 1;
            match tokio::time::timeout(
                Duration::from_secs(5),
                a.store(id, &spec.sop_class, &spec.sop_uid, &encode(&spec)),
            )
            .await
            {
                Ok(Ok(st)) if st.is_success() => acked.push(spec),
                _ => break,
            }
        }
        let _ = a.release().await;
    }
    acked
}

impl Lab {
    fn other(node: &str) -> &'static str {
        if node == "a" { "b" } else { "a" }
    }

    fn kill_witness(&mut self) {
        if let Some(mut w) = self.witness.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }

    fn wait_until(&self, what: &str, limit: Duration, mut f: impl FnMut(&Lab) -> bool) {
        let deadline = Instant::now() + limit;
        while !f(self) {
            assert!(Instant::now() < deadline, "{what}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_primary_paused_past_its_lease_does_not_serve_when_it_resumes() {
    let _serial = serial();
    let Some(mut lab) = lab("hstop") else { return };
    let first = lab.settle();
    let second = Lab::other(&first);
    let c = Client::flowing(&lab, 504);
    lab.signal(&first, "-STOP");
    lab.wait_until("the standby takes over", Duration::from_secs(10), |l| {
        l.status(second)
            .is_some_and(|s| s.role.starts_with("primary") && s.holds_service_ip)
    });
    // The new primary serves while the old one is still paused.
    c.wait_more(&lab, Client::FLOWING, Duration::from_secs(30));
    lab.signal(&first, "-CONT");
    lab.wait_until(
        "the resumed node steps down",
        Duration::from_secs(10),
        |l| {
            l.status(&first)
                .is_some_and(|s| s.role == "standby" && !s.holds_service_ip)
        },
    );
    let seen = c.finish(&lab);
    assert!(lab.status(second).unwrap().holds_service_ip);
    assert!(double_primary_epochs(&lab).is_empty());
    assert_all_kept(&lab, seen.acked.into_iter().map(|(s, _)| s).collect());
}

#[test]
fn a_crashed_standby_catches_up_while_the_primary_serves_on() {
    let _serial = serial();
    let Some(mut lab) = lab("hsby") else { return };
    let first = lab.settle();
    let second = Lab::other(&first);
    let c = Client::flowing(&lab, 505);
    lab.signal(second, "-KILL");
    lab.wait_until("the primary goes on alone", Duration::from_secs(10), |l| {
        l.status(&first).is_some_and(|s| s.role == "primary (solo)")
    });
    // The primary serves alone for a while: the standby has something to catch up on.
    c.wait_more(&lab, Client::FLOWING, Duration::from_secs(30));
    lab.start(second);
    lab.wait_until("the standby catches up", Duration::from_secs(20), |l| {
        l.primary().as_deref() == Some(first.as_str())
            && l.status(second).is_some_and(|s| s.role == "standby")
    });
    let seen = c.finish(&lab);
    assert!(
        seen.failed.len() < 5,
        "the primary served on: {} failed",
        seen.failed.len()
    );
    let acked: Vec<Spec> = seen.acked.into_iter().map(|(s, _)| s).collect();
    // The caught-up standby has everything: fail over to it and check through the IP.
    lab.signal(&first, "-KILL");
    lab.wait_until(
        "the caught-up standby takes over",
        Duration::from_secs(10),
        |l| l.status(second).is_some_and(|s| s.holds_service_ip),
    );
    assert_all_kept(&lab, acked);
}

#[test]
fn with_the_witness_down_the_pair_serves_on_and_fails_over_once_it_returns() {
    let _serial = serial();
    let Some(mut lab) = lab("hwit") else { return };
    let first = lab.settle();
    let second = Lab::other(&first);
    lab.kill_witness();
    let mut c = Client::flowing(&lab, 506);
    let seen = c.stop();
    assert!(
        seen.failed.is_empty() && !seen.acked.is_empty(),
        "paired: no arbiter needed"
    );
    let mut acked: Vec<Spec> = seen.acked.into_iter().map(|(s, _)| s).collect();
    lab.signal(&first, "-KILL");
    // Longer than the lease: a takeover would have happened by the end of it.
    assert!(
        holds_for_blocking(Duration::from_millis(1500), || {
            lab.status(second)
                .is_some_and(|s| !s.role.starts_with("primary"))
        }),
        "no takeover without the arbiter\n{}",
        lab.logs()
    );
    lab.start_witness();
    lab.wait_until(
        "takeover once the witness is back",
        Duration::from_secs(10),
        |l| l.status(second).is_some_and(|s| s.holds_service_ip),
    );
    let seen = Client::start(&lab, 506, 10_000).finish(&lab);
    acked.extend(seen.acked.into_iter().map(|(s, _)| s));
    assert_all_kept(&lab, acked);
}

impl Lab {
    /// `pacsd ha <args> --config <node>`; its output, asserting it succeeded.
    fn ha(&self, node: &str, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .arg("ha")
            .args(args)
            .arg("--config")
            .arg(self.config(node))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pacsd ha {args:?} on {node}: {}\n{}",
            text(&out),
            self.logs()
        );
        text(&out)
    }

    /// `primary` serves with `standby` in step behind it, ready to take over.
    fn paired(&self, primary: &str, standby: &str) -> bool {
        self.primary().as_deref() == Some(primary)
            && self
                .status(primary)
                .is_some_and(|s| s.standby_ready == Some(true))
            && self.status(standby).is_some_and(|s| s.role == "standby")
    }

    /// A planned restart of `node` with `pacsd ha stop` (where an upgrade would put its new
    /// binary in place), then until it is the standby of `primary` again.
    fn planned_restart(&mut self, node: &str, primary: &str) {
        let said = self.ha(node, &["stop"]);
        assert!(said.contains("stopped"), "{said}");
        assert!(
            self.wait_exit(node, Duration::from_secs(5)),
            "{}",
            self.logs()
        );
        self.start(node);
        self.wait_until(
            &format!("{node} back as the standby of {primary}"),
            Duration::from_secs(30),
            |l| l.paired(primary, node),
        );
    }
}

#[test]
fn a_rolling_restart_under_load_fails_no_c_store_and_loses_nothing() {
    let _serial = serial();
    let Some(mut lab) = lab("hroll") else { return };
    let first = lab.settle();
    let second = Lab::other(&first);
    let c = Client::flowing(&lab, 507);
    // The README's procedure: the standby first, then a switchover, then the old primary.
    let mut steps = Vec::new();
    let at = Instant::now();
    lab.planned_restart(second, &first);
    steps.push(("restart of the standby", at, Instant::now()));
    let at = Instant::now();
    lab.ha(&first, &["switchover"]);
    lab.wait_until("the switchover", Duration::from_secs(30), |l| {
        l.paired(second, &first)
    });
    steps.push(("switchover", at, Instant::now()));
    let at = Instant::now();
    lab.planned_restart(&first, second);
    steps.push(("restart of the old primary", at, Instant::now()));
    let seen = c.finish(&lab);
    for (step, from, to) in &steps {
        eprintln!(
            "rolling restart, {step} ({:?}): longest time without a stored instance {:?}",
            *to - *from,
            longest_gap(&seen, *from, *to)
        );
    }
    eprintln!(
        "rolling restart: {} stored, {} attempts without an association, {} C-STOREs not acknowledged",
        seen.acked.len(),
        seen.failed.len() - seen.store_failed.len(),
        seen.store_failed.len()
    );
    assert!(
        seen.store_failed.is_empty(),
        "C-STOREs sent and not acknowledged at {:?} (steps {steps:?})\n{}",
        seen.store_failed,
        lab.logs()
    );
    assert!(lab.status(second).unwrap().holds_service_ip);
    assert!(double_primary_epochs(&lab).is_empty());
    assert_all_kept(&lab, seen.acked.into_iter().map(|(s, _)| s).collect());
}
