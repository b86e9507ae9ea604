//! The HA pair as real processes on loopback: two `pacsd serve` nodes (127.0.N.2 and
//! 127.0.N.3, one /24 of the loopback range per test) sharing three replica directories and
//! an arbiter (a directory, or `pacsd witness`), and a client that keeps storing while
//! nodes are killed, paused, switched over or restarted. After every scenario, every
//! instance the client got a Success for is found by C-FIND on the primary and retrieved
//! from it with C-GET.
//!
//! These tests address the nodes directly (the client tries the other node when one does
//! not answer). Moving one service IP between them is tested in network namespaces by
//! scripts/ha-lab.sh.

// `serial()` is held for a whole test on purpose (one pair at a time); each test's future
// runs on its own thread, so holding it across awaits cannot deadlock.
#![allow(clippy::await_holding_lock)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dicom_dictionary_std::uids;
use pacsd::ha::driver::Status;
use pacsd::net::scu::{ProposedContext, ScuAssociation, ScuOptions};
use pacsd::synth::Spec;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_pacsd");

struct Member {
    name: &'static str,
    ip: String,
    /// Its ports on `ip`, each found free when the pair was made: DICOM, HTTP, heartbeat,
    /// replication.
    port: u16,
    http_port: u16,
    beat_port: u16,
    repl_port: u16,
    config: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    starts: u32,
}

impl Member {
    fn start(&mut self) {
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "pacsd=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(ok.success(), "kill {sig} {pid}");
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn status(&self) -> Option<Status> {
        ha_status(&self.config)
    }

    /// Whether this member serves as primary now (paired or solo).
    fn is_primary(&self) -> bool {
        self.status().is_some_and(|s| s.role.starts_with("primary"))
    }

    fn scu(&self) -> ScuOptions {
        scu_to(
            format!("{}:{}", self.ip, self.port),
            "HACLIENT",
            Duration::from_secs(3),
        )
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.kill();
    }
}

struct Pair {
    dir: tempfile::TempDir,
    a: Member,
    b: Member,
    witness: Option<Child>,
    /// The witness's address (127.0.N.4 and a free port), when there is one.
    witness_addr: String,
}

/// A TCP port free on `ip` now (the pair's addresses are the test's own, so nothing else
/// takes it before the member binds it).
fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A UDP port free on `ip` now (heartbeats).
fn free_udp_port(ip: &str) -> u16 {
    std::net::UdpSocket::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `arbiter`: None for a shared directory, Some(port) for a witness on 127.0.N.4:port.
fn pair(net: u8, witness: bool) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The pair's shared heartbeat key (both members name the same file).
    std::fs::write(d.join("ha.key"), [0x5a; 32]).unwrap();
    let ip = |h: u8| format!("127.0.{net}.{h}");
    let witness_addr = format!("{}:{}", ip(4), free_port(&ip(4)));
    let arbiter = if witness {
        format!("witness://{witness_addr}")
    } else {
        d.join("arbiter").display().to_string()
    };
    let replicas: Vec<String> = (1..=3)
        .map(|i| format!("\"{}\"", d.join(format!("r{i}")).display()))
        .collect();
    // Each member's ports: DICOM, HTTP, heartbeat, replication.
    let ports = |h: u8| {
        [
            free_port(&ip(h)),
            free_port(&ip(h)),
            free_udp_port(&ip(h)),
            free_port(&ip(h)),
        ]
    };
    let (pa, pb) = (ports(2), ports(3));
    let member = |name: &'static str, me: u8, mine: [u16; 4], peer: u8, theirs: [u16; 4]| {
        let config = d.join(format!("{name}.toml"));
        std::fs::create_dir_all(d.join(name)).unwrap();
        std::fs::write(
            &config,
            format!(
                "[node]\nbind = \"{me_ip}\"\nport = {dicom}\n\n[http]\nport = {http}\n\n\
                 [timeouts]\nshutdown_secs = 2.0\n\n\
                 [index]\npath = \"{index}\"\n\n[storage]\nreplicas = [{replicas}]\n\n\
                 [access]\nunknown_ae_services = [\"echo\", \"store\", \"find\", \"get\"]\n\n\
                 [preview]\nenabled = false\n\n\
                 [ha]\nnode_id = \"{name}\"\n\
                 links = [{{ bind = \"{me_ip}:{beat}\", peer = \"{peer_ip}:{peer_beat}\" }}]\n\
                 replication_bind = \"{me_ip}:{repl}\"\npeer_replication = \"{peer_ip}:{peer_repl}\"\n\
                 arbiter = \"{arbiter}\"\nkey_file = \"{key}\"\n",
                key = d.join("ha.key").display(),
                dicom = mine[0],
                http = mine[1],
                beat = mine[2],
                repl = mine[3],
                peer_beat = theirs[2],
                peer_repl = theirs[3],
                me_ip = ip(me),
                peer_ip = ip(peer),
                index = d.join(name).join("index.sqlite").display(),
                replicas = replicas.join(", "),
            ),
        )
        .unwrap();
        Member {
            name,
            ip: ip(me),
            port: mine[0],
            http_port: mine[1],
            beat_port: mine[2],
            repl_port: mine[3],
            config,
            child: None,
            log: d.join(format!("{name}.log")),
            starts: 0,
        }
    };
    let mut p = Pair {
        a: member("a", 2, pa, 3, pb),
        b: member("b", 3, pb, 2, pa),
        witness: None,
        witness_addr,
        dir,
    };
    if witness {
        p.start_witness();
    }
    p
}

impl Pair {
    /// Both members started (a first, so it becomes primary) and settled.
    fn started(net: u8, witness: bool) -> Pair {
        let mut p = pair(net, witness);
        p.a.start();
        // a is primary before b starts. Answering its control socket is not
        // enough: a node that has just started listens for a peer before it
        // claims, and a b started inside that window may claim first.
        assert!(
            p.a.becomes(Duration::from_secs(20), |s| s.role.starts_with("primary")),
            "a becomes primary alone: {:?}\n{}",
            p.a.status(),
            p.logs()
        );
        p.b.start();
        let Some((primary, _)) = p.settled(Duration::from_secs(20)) else {
            // (a flake seen once here, not diagnosed for want of these)
            panic!(
                "pair settles: a {:?}, b {:?}\n{}",
                p.a.status(),
                p.b.status(),
                p.logs()
            );
        };
        assert_eq!(primary.name, "a", "the first node up becomes primary");
        p
    }

    fn start_witness(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("witness.log"))
            .unwrap();
        let child = Command::new(BIN)
            .args(witness_args(&self.witness_addr, self.dir.path()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.witness = Some(child);
        // Ready when it answers.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&self.witness_addr).is_err() {
            assert!(Instant::now() < deadline, "witness did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill_witness(&mut self) {
        if let Some(mut w) = self.witness.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }

    /// Both members as `[primary, standby]` once one is a paired primary and the other its
    /// caught-up standby.
    fn settled(&self, limit: Duration) -> Option<(&Member, &Member)> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let (Some(sa), Some(sb)) = (self.a.status(), self.b.status()) {
                let paired = |p: &Status, s: &Status| {
                    p.role == "primary"
                        && s.role == "standby"
                        && p.replication_lag == Some(0)
                        && s.epoch == p.epoch
                };
                if paired(&sa, &sb) {
                    return Some((&self.a, &self.b));
                }
                if paired(&sb, &sa) {
                    return Some((&self.b, &self.a));
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    fn logs(&self) -> String {
        let read = |m: &Member| std::fs::read_to_string(&m.log).unwrap_or_default();
        let witness = std::fs::read_to_string(self.dir.path().join("witness.log"));
        format!(
            "--- a.log\n{}\n--- b.log\n{}\n--- witness.log\n{}",
            read(&self.a),
            read(&self.b),
            witness.unwrap_or_default()
        )
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.kill_witness();
    }
}

/// A client that stores instance after instance, one association each, to whichever node
/// answers (first `prefer`), and remembers what it was told was stored.
struct Client {
    next: u32,
    study: u32,
    acked: Vec<Spec>,
    failed: u32,
}

impl Client {
    fn new(study: u32) -> Client {
        Client {
            next: 1,
            study,
            acked: Vec::new(),
            failed: 0,
        }
    }

    async fn store_one(&mut self, targets: &[ScuOptions]) {
        let spec = Spec::ct(self.study, 1, self.next, 16);
        self.next += 1;
        let data = encode(&spec);
        for t in targets {
            let ctx = ProposedContext {
                abstract_syntax: uids::CT_IMAGE_STORAGE.into(),
                transfer_syntaxes: vec![uids::EXPLICIT_VR_LITTLE_ENDIAN.into()],
            };
            let Ok(Ok(mut assoc)) =
                tokio::time::timeout(Duration::from_secs(2), ScuAssociation::connect(t, &[ctx]))
                    .await
            else {
                continue;
            };
            let id = assoc.contexts()[0].id;
            let st = tokio::time::timeout(
                Duration::from_secs(5),
                assoc.store(id, &spec.sop_class, &spec.sop_uid, &data),
            )
            .await;
            let _ = assoc.release().await;
            if let Ok(Ok(st)) = st
                && st.is_success()
            {
                self.acked.push(spec);
                return;
            }
        }
        self.failed += 1;
    }

    /// Store until `n` more instances are acknowledged (within `CLIENT_PATIENCE`).
    async fn store_acked(&mut self, n: usize, targets: &[ScuOptions]) {
        let want = self.acked.len() + n;
        let deadline = Instant::now() + CLIENT_PATIENCE;
        while self.acked.len() < want {
            assert!(
                Instant::now() < deadline,
                "{} of {n} stores acknowledged in {CLIENT_PATIENCE:?} ({} failed)",
                n + self.acked.len() - want,
                self.failed
            );
            self.store_one(targets).await;
        }
    }

    /// Keep storing, through whatever the pair is going through, until `reached` holds
    /// (within `CLIENT_PATIENCE`), then until 3 more instances are acknowledged after it.
    async fn store_until(&mut self, targets: &[ScuOptions], reached: impl Fn() -> bool) {
        let deadline = Instant::now() + CLIENT_PATIENCE;
        while !reached() {
            assert!(
                Instant::now() < deadline,
                "not reached in {CLIENT_PATIENCE:?}"
            );
            self.store_one(targets).await;
        }
        self.store_acked(3, targets).await;
    }
}

/// How long a client keeps trying for what it waits for (a takeover takes the lease and its
/// margin, a few seconds; this is the bound on a loaded machine, not the expectation).
const CLIENT_PATIENCE: Duration = Duration::from_secs(60);

/// Every acknowledged instance is found by C-FIND on `node` and retrieved by C-GET.
async fn assert_all_kept(node: &Member, acked: &[Spec], logs: &str) {
    let mut opts = node.scu();
    opts.timeout = Duration::from_secs(20);
    if let Err(e) = check_kept(&opts, acked).await {
        panic!("on {}: {e}\n{logs}", node.name);
    }
}

fn both(p: &Pair) -> Vec<ScuOptions> {
    vec![p.a.scu(), p.b.scu()]
}

/// A settled pair (`Pair::started`), both its members as targets, and a client storing
/// study `study`.
fn started_with_client(n: u8, witness: bool, study: u32) -> (Pair, Vec<ScuOptions>, Client) {
    let p = Pair::started(n, witness);
    let targets = both(&p);
    (p, targets, Client::new(study))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_primary_mid_stream_loses_nothing_acknowledged() {
    let _serial = serial();
    let (mut p, targets, mut client) = started_with_client(41, false, 301);
    client.store_acked(6, &targets).await;
    p.a.signal("-KILL");
    // Stores go on through the failover and after it.
    client.store_until(&targets, || p.b.is_primary()).await;
    let sb = p.b.status().unwrap();
    assert!(sb.role.starts_with("primary") && sb.epoch == 2, "{sb:?}");
    assert_all_kept(&p.b, &client.acked, &p.logs()).await;

    // The old primary rejoins as standby, catches up, and the pair is whole again.
    p.a.kill();
    p.a.start();
    let (primary, standby) = p.settled(Duration::from_secs(20)).expect("rejoined");
    assert_eq!((primary.name, standby.name), ("b", "a"), "no preemption");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_switchover_moves_the_primary_without_losing_writes() {
    let _serial = serial();
    let (p, targets, mut client) = started_with_client(42, false, 302);
    client.store_acked(3, &targets).await;
    let (ok, said) = p.a.ha(&["switchover"]);
    assert!(ok, "{said}");
    client.store_until(&targets, || p.b.is_primary()).await;
    let (primary, standby) = p.settled(Duration::from_secs(10)).expect("settled");
    assert_eq!((primary.name, standby.name), ("b", "a"));
    assert_all_kept(&p.b, &client.acked, &p.logs()).await;
    // Switching over from the standby is refused.
    let (ok, said) = p.a.ha(&["switchover"]);
    assert!(!ok && said.contains("not the primary"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_standby_catches_up_and_the_primary_goes_on_alone_meanwhile() {
    let _serial = serial();
    let (mut p, targets, mut client) = started_with_client(43, false, 303);
    client.store_acked(3, &targets).await;
    p.b.signal("-KILL");
    client
        .store_until(&targets, || p.a.status().is_some_and(|s| s.solo))
        .await;
    let sa = p.a.status().unwrap();
    assert_eq!(sa.role, "primary (solo)", "{sa:?}");
    assert!(sa.epoch >= 2, "going on alone takes a new epoch: {sa:?}");
    p.b.kill();
    p.b.start();
    let (primary, standby) = p.settled(Duration::from_secs(20)).expect("caught up");
    assert_eq!((primary.name, standby.name), ("a", "b"));
    let sb = standby.status().unwrap();
    assert_eq!(sb.seq, primary.status().unwrap().seq);
    // The caught-up standby has everything: fail over to it and look there.
    client.store_acked(3, &targets).await;
    p.a.signal("-KILL");
    assert!(wait_for(Duration::from_secs(10), || p.b.is_primary()));
    assert_all_kept(&p.b, &client.acked, &p.logs()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_primary_does_not_serve_after_it_resumes() {
    let _serial = serial();
    let (p, targets, mut client) = started_with_client(44, false, 304);
    client.store_acked(3, &targets).await;
    // Paused for well over the lease: the standby takes over.
    p.a.signal("-STOP");
    client.store_until(&targets, || p.b.is_primary()).await;
    p.a.signal("-CONT");
    // On resuming, a sees the higher epoch and steps down; it never acknowledges again.
    assert!(
        p.a.becomes(Duration::from_secs(5), |s| s.role == "standby"),
        "{}",
        p.logs()
    );
    let only_a = vec![p.a.scu()];
    let mut probe = Client::new(404);
    for _ in 0..3 {
        probe.store_one(&only_a).await;
    }
    assert!(
        probe.acked.is_empty(),
        "the old primary acknowledged a write"
    );
    client.store_acked(3, &targets).await;
    assert_all_kept(&p.b, &client.acked, &p.logs()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_witness_down_the_pair_serves_on_and_fails_over_once_it_returns() {
    let _serial = serial();
    let (mut p, targets, mut client) = started_with_client(45, true, 305);
    // Forged claims at the witness (the epoch that once locked both nodes out, unsigned and
    // signed with another key, in a configured node's name): refused, nothing granted.
    for line in [
        r#"{"op":"claim","epoch":18446744073709551615,"node":"b"}"#.to_string(),
        format!(
            r#"{{"req":"{{"op":"claim","epoch":2,"node":"b"}}","node":"b","time":{},"mac":"{}"}}"#,
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
            "00".repeat(32)
        ),
    ] {
        use std::io::{BufRead, Write};
        let mut s = std::net::TcpStream::connect(&p.witness_addr).unwrap();
        s.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut answer = String::new();
        std::io::BufReader::new(s).read_line(&mut answer).unwrap();
        assert!(
            answer.contains("error") && !answer.contains("granted"),
            "{answer}"
        );
    }
    p.kill_witness();
    // A paired primary needs no arbiter: writes go on.
    client.store_acked(4, &targets).await;
    assert_eq!(client.failed, 0);
    // Without an arbiter no one may take over: the service stops rather than risk two
    // primaries...
    p.a.signal("-KILL");
    assert!(
        holds_for_blocking(Duration::from_millis(1500), || p
            .b
            .status()
            .is_none_or(|s| !s.role.starts_with("primary"))),
        "{:?}",
        p.b.status()
    );
    // ... and resumes as soon as the witness is back.
    p.start_witness();
    assert!(wait_for(Duration::from_secs(10), || p
        .b
        .status()
        .is_some_and(|s| s.role.starts_with("primary") && s.epoch == 2)));
    client.store_acked(3, &targets).await;
    assert_all_kept(&p.b, &client.acked, &p.logs()).await;
}

#[test]
fn a_store_that_cannot_grant_epochs_once_is_refused_at_start_up() {
    let _serial = serial();
    // `memory://` stores honour create-if-absent; a plain file in the way of the directory
    // cannot hold claims at all: both refusals must be clear errors, not a running node.
    let p = pair(46, false);
    std::fs::write(p.dir.path().join("arbiter"), b"not a directory").unwrap();
    let (ok, said) = p.a.pacsd(&["serve"]);
    assert!(!ok && said.contains("arbiter"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_a_solo_primary_acknowledged_survive_its_death_and_the_standbys_return() {
    let _serial = serial();
    // The double fault: the standby dies, the primary goes on alone (acknowledging writes
    // the standby never saw), then the primary dies and the old standby comes back.
    let (mut p, targets, mut client) = started_with_client(47, false, 307);
    client.store_acked(3, &targets).await;
    p.b.signal("-KILL");
    client
        .store_until(&targets, || p.a.status().is_some_and(|s| s.solo))
        .await;
    assert_eq!(p.a.status().unwrap().role, "primary (solo)");
    let solo_acked = client.acked.len();
    p.a.signal("-KILL");
    p.b.kill();
    p.b.start();
    assert!(
        p.b.becomes(Duration::from_secs(20), |s| s.role.starts_with("primary")),
        "{}",
        p.logs()
    );
    assert!(solo_acked > 0);
    assert_all_kept(&p.b, &client.acked, &p.logs()).await;
}

#[test]
fn garage_is_refused_as_arbiter_because_it_ignores_create_if_absent() {
    let _serial = serial();
    let Some(cluster) = S3Cluster::start_independent() else {
        return;
    };
    let p = pair(48, false);
    let url = cluster.replicas()[0].replace("/dicom?", "/arbiter?");
    let config = std::fs::read_to_string(&p.a.config).unwrap();
    let arbiter_line = config
        .lines()
        .find(|l| l.starts_with("arbiter = "))
        .unwrap()
        .to_string();
    std::fs::write(
        &p.a.config,
        config.replace(&arbiter_line, &format!("arbiter = \"{url}\"")),
    )
    .unwrap();
    let (ok, said) = p.a.pacsd(&["serve"]);
    assert!(
        !ok && said.contains("does not refuse a second create"),
        "{said}"
    );
}

/// Forged heartbeats sent from another address to both nodes: unauthenticated "primary
/// alive" beats of a higher epoch (they used to demote the primary, and to keep the standby
/// from taking over for as long as they came), beats sealed under another key, and a stretched
/// echo. Nothing changes: no role, no epoch; and when the primary dies while the forgery goes
/// on, the standby takes over as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_heartbeats_change_no_role_epoch_or_lease() {
    use pacsd::ha::heartbeat::{Beat, BeatKey};
    let _serial = serial();
    let p = Pair::started(49, false);
    let forger = std::net::UdpSocket::bind("127.0.49.9:0").unwrap();
    let (beat_a, beat_b) = (
        format!("{}:{}", p.a.ip, p.a.beat_port),
        format!("{}:{}", p.b.ip, p.b.beat_port),
    );
    let forged_beat = |node: &str| Beat {
        node: node.into(),
        primary: true,
        epoch: 99,
        seq: 1_000_000,
        token: 1,
        echo: Some(u64::MAX / 2),
        maintenance: false,
    };
    let wrong_key = BeatKey::new(&[0x11; 32]).unwrap();
    let forge = move |rounds: usize| {
        for i in 0..rounds {
            for (node, to) in [("b", beat_a.as_str()), ("a", beat_b.as_str())] {
                let plain = serde_json::to_vec(&forged_beat(node)).unwrap();
                let _ = forger.send_to(&plain, to);
                let sealed = wrong_key.seal(&forged_beat(node), u64::MAX - i as u64);
                let _ = forger.send_to(&sealed, to);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    forge(50);
    let (sa, sb) = (p.a.status().unwrap(), p.b.status().unwrap());
    assert!(sa.role.starts_with("primary") && sa.epoch == 1, "{sa:?}");
    assert!(sb.role == "standby" && sb.epoch == 1, "{sb:?}");
    assert!(p.settled(Duration::from_secs(5)).is_some(), "still paired");

    // The primary dies while the forgery goes on: the standby takes over all the same.
    p.a.signal("-KILL");
    let forging = std::thread::spawn(move || forge(250));
    let took_over = wait_for(Duration::from_secs(4), || {
        p.b.status()
            .is_some_and(|s| s.role.starts_with("primary") && s.epoch == 2)
    });
    assert!(took_over, "{:?}\n{}", p.b.status(), p.logs());
    assert!(p.logs().contains("heartbeat refused"), "{}", p.logs());
    forging.join().unwrap();
}

/// Frames as the replication link carries them: a 4-byte length, then JSON.
fn frame(json: &str) -> Vec<u8> {
    let mut v = (json.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(json.as_bytes());
    v
}

impl Member {
    /// The node's audit trail (`audit.log` beside its index).
    fn audit(&self) -> String {
        let dir = self.config.parent().unwrap().join(self.name);
        std::fs::read_to_string(dir.join("audit.log")).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replication_and_an_impostor_standby_change_nothing() {
    use std::io::{Read, Write};
    let _serial = serial();
    let mut p = Pair::started(50, false);
    let mut client = Client::new(5050);
    for _ in 0..3 {
        client.store_one(&[p.a.scu()]).await;
    }
    assert_eq!(client.acked.len(), 3);
    let before = (p.a.status().unwrap(), p.b.status().unwrap());

    // 1. Forged replication to the standby: from the primary's own address and from another
    //    one, the frames that once made it apply a record and take over.
    let forged = [
        frame(&format!(
            r#"{{"t":"challenge","nonce":"{}"}}"#,
            "ab".repeat(32)
        )),
        frame(&format!(r#"{{"t":"proof","mac":"{}"}}"#, "00".repeat(32))),
        frame(r#"{"t":"primary","node":"a","epoch":99}"#),
        frame(r#"{"t":"hand_over","epoch":99}"#),
    ]
    .concat();
    for from in ["127.0.50.2", "127.0.50.9"] {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(
                &format!("{from}:0")
                    .parse::<std::net::SocketAddr>()
                    .unwrap()
                    .into(),
            )
            .unwrap();
        if socket
            .connect(
                &format!("{}:{}", p.b.ip, p.b.repl_port)
                    .parse::<std::net::SocketAddr>()
                    .unwrap()
                    .into(),
            )
            .is_ok()
        {
            let mut s: std::net::TcpStream = socket.into();
            let _ = s.write_all(&forged);
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            assert!(
                !String::from_utf8_lossy(&got).contains("hello"),
                "the standby answered a forged primary"
            );
        }
    }
    // Nothing changes: no role, epoch or sequence moves for a while.
    let unchanged = |m: &Member, was: &Status| {
        m.status()
            .is_some_and(|s| s.role == was.role && s.epoch == was.epoch && s.seq == was.seq)
    };
    assert!(holds_for_blocking(Duration::from_millis(500), || {
        unchanged(&p.a, &before.0) && unchanged(&p.b, &before.1)
    }));
    let (sa, sb) = (p.a.status().unwrap(), p.b.status().unwrap());
    assert!(
        sa.role == "primary" && sa.epoch == before.0.epoch && sa.seq == before.0.seq,
        "{sa:?}"
    );
    assert!(
        sb.role == "standby" && sb.epoch == before.1.epoch && sb.seq == before.1.seq,
        "{sb:?}"
    );
    assert!(p.settled(Duration::from_secs(5)).is_some(), "still paired");
    // The one from elsewhere is refused at once and audited; the one from the primary's
    // address waits behind the real primary's connection and is never answered.
    let alerts = |m: &Member| m.audit().matches("csd-code=\"110126\"").count();
    assert!(
        wait_for(Duration::from_secs(5), || alerts(&p.b) >= 1),
        "{}",
        p.b.audit()
    );
    assert!(p.b.audit().contains("NetworkAccessPointID=\"127.0.50.9\""));

    // 2. An impostor standby: b dies, something else takes its replication address. The
    //    primary challenges it, gets no valid proof, and sends it nothing else: no snapshot,
    //    no record, and it does not count as a standby.
    p.b.kill();
    assert!(wait_for(Duration::from_secs(5), || p
        .a
        .status()
        .is_some_and(|s| s.solo)));
    let impostor = std::net::TcpListener::bind((p.b.ip.as_str(), p.b.repl_port)).unwrap();
    impostor.set_nonblocking(false).unwrap();
    let seen = std::thread::spawn(move || {
        let (mut s, _) = impostor.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut first = [0u8; 4];
        s.read_exact(&mut first).unwrap();
        let mut challenge = vec![0u8; u32::from_be_bytes(first) as usize];
        s.read_exact(&mut challenge).unwrap();
        let _ = s.write_all(&forged[..forged.len()]);
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        (String::from_utf8_lossy(&challenge).into_owned(), rest)
    });
    for _ in 0..2 {
        client.store_one(&[p.a.scu()]).await;
    }
    let (challenge, rest) = seen.join().unwrap();
    assert!(challenge.contains("challenge"), "{challenge}");
    assert!(
        rest.is_empty(),
        "the impostor was sent {} bytes after the challenge",
        rest.len()
    );
    let sa = p.a.status().unwrap();
    assert!(sa.solo && sa.role.starts_with("primary"), "{sa:?}");
    assert_eq!(client.acked.len(), 5);

    // 3. The real standby returns and catches up; the primary dies; nothing acknowledged is
    //    missing on the new primary.
    p.b.start();
    assert!(p.settled(Duration::from_secs(20)).is_some(), "{}", p.logs());
    p.a.signal("-KILL");
    assert!(
        p.b.becomes(Duration::from_secs(10), |s| s.role.starts_with("primary")),
        "{}",
        p.logs()
    );
    assert_all_kept(&p.b, &client.acked, &p.logs()).await;
    // The primary's audit trail has its own role changes.
    assert!(p.a.audit().contains("HA role change"), "{}", p.a.audit());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_a_paired_primary_hands_over_before_it_stops() {
    let _serial = serial();
    let (mut p, targets, mut client) = started_with_client(51, false, 5151);
    client.store_acked(3, &targets).await;
    let epoch = p.a.status().unwrap().epoch;
    // A planned stop (what systemctl stop sends): the standby takes over at once, not after
    // the lease + margin a crash costs.
    let stopped_at = Instant::now();
    p.a.signal("-TERM");
    assert!(
        wait_for(Duration::from_secs(5), || {
            p.b.status()
                .is_some_and(|s| s.role.starts_with("primary") && s.epoch > epoch)
        }),
        "{}",
        p.logs()
    );
    let took_over = stopped_at.elapsed();
    // a has exited by itself, after the hand-over.
    let exited = wait_for(Duration::from_secs(10), || {
        p.a.child.as_mut().unwrap().try_wait().unwrap().is_some()
    });
    assert!(exited, "{}", p.logs());
    let logs = p.logs();
    assert!(logs.contains("planned stop: handing over"), "{logs}");
    assert!(logs.contains("the standby took over: stopping"), "{logs}");
    assert!(
        !logs.contains("the standby did not take over in time"),
        "{logs}"
    );
    eprintln!("SIGTERM to the new primary serving: {took_over:?}");
    client.store_acked(3, &targets).await;
    assert_all_kept(&p.b, &client.acked, &p.logs()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_the_standby_tells_the_primary_which_goes_on_alone_at_once() {
    let _serial = serial();
    let (mut p, targets, mut client) = started_with_client(52, false, 5252);
    client.store_acked(3, &targets).await;
    p.b.signal("-TERM");
    assert!(
        p.a.becomes(Duration::from_secs(5), |s| s.solo),
        "{}",
        p.logs()
    );
    assert!(
        wait_for(Duration::from_secs(10), || p
            .b
            .child
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_some()),
        "the standby did not stop"
    );
    let logs = p.logs();
    assert!(logs.contains("the standby is stopping (planned)"), "{logs}");
    // Writes go on without it, and it catches up when it returns.
    client.store_acked(3, &targets).await;
    assert_eq!(client.failed, 0, "{logs}");
    p.b.start();
    assert!(p.settled(Duration::from_secs(20)).is_some(), "{}", p.logs());
    assert_all_kept(&p.a, &client.acked, &p.logs()).await;
}

impl Member {
    /// Whether this member's status satisfies `f` within `limit`.
    fn becomes(&self, limit: Duration, f: impl Fn(&Status) -> bool) -> bool {
        wait_for(limit, || self.status().is_some_and(|s| f(&s)))
    }

    /// `pacsd user <args>` on this member with `stdin` as its input: (succeeded, stdout and
    /// stderr).
    fn user(&self, args: &[&str], stdin: &str) -> (bool, String) {
        let mut child = Command::new(BIN)
            .arg("user")
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let mut input = child.stdin.take().unwrap();
            writeln!(input, "{stdin}").unwrap();
        }
        let out = child.wait_with_output().unwrap();
        (out.status.success(), text(&out))
    }

    /// The HTTP status of a QIDO-RS study search on this member, signed in by `auth`.
    async fn qido_status(
        &self,
        auth: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> u16 {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let url = format!("http://{}:{}/dicom-web/studies", self.ip, self.http_port);
        auth(client.get(url))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    /// `pacsd ha <args>` on this member: (succeeded, stdout and stderr).
    fn ha(&self, args: &[&str]) -> (bool, String) {
        self.pacsd(&[&["ha"], args].concat())
    }

    /// `pacsd <args> --config <this member's>` run to its end: (succeeded, its output).
    fn pacsd(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap();
        (out.status.success(), text(&out))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_in_maintenance_never_takes_over_and_stays_so_across_a_restart() {
    let _serial = serial();
    let (mut p, targets, mut client) = started_with_client(53, false, 5353);
    client.store_acked(3, &targets).await;

    let (ok, said) = p.b.ha(&["maintenance", "on"]);
    assert!(ok && said.contains("will not take over"), "{said}");
    assert!(
        wait_for(Duration::from_secs(5), || p.a.status().is_some_and(|s| {
            s.standby_ready == Some(false) && s.peer.is_some_and(|peer| peer.maintenance)
        })),
        "the primary does not see its standby in maintenance\n{}",
        p.logs()
    );
    // No switchover to it, and a planned stop of the primary would not hand over to it.
    let (ok, said) = p.a.ha(&["switchover"]);
    assert!(!ok && said.contains("maintenance"), "{said}");
    assert_eq!(p.a.status().unwrap().role, "primary");

    // A restart keeps it in maintenance (recorded beside its index).
    p.b.kill();
    p.b.start();
    assert!(
        p.b.becomes(Duration::from_secs(10), |s| s.maintenance
            && s.role == "standby"),
        "{}",
        p.logs()
    );
    assert!(p.settled(Duration::from_secs(20)).is_some(), "{}", p.logs());
    client.store_acked(3, &targets).await;

    // The primary dies: the standby in maintenance stays standby (a lease + margin is 0.5 s).
    p.a.kill();
    assert!(
        holds_for_blocking(Duration::from_secs(3), || p
            .b
            .status()
            .is_some_and(|s| s.role == "standby")),
        "{}",
        p.logs()
    );
    // Out of maintenance, it takes over.
    let (ok, said) = p.b.ha(&["maintenance", "off"]);
    assert!(ok, "{said}");
    assert!(
        p.b.becomes(Duration::from_secs(10), |s| s.role.starts_with("primary")),
        "{}",
        p.logs()
    );
    assert_all_kept(&p.b, &client.acked, &p.logs()).await;

    // Recorded while a node is down, it applies when that node starts.
    let (ok, said) = p.a.ha(&["maintenance", "on"]);
    assert!(ok && said.contains("not running"), "{said}");
    p.a.start();
    assert!(
        p.a.becomes(Duration::from_secs(10), |s| s.maintenance
            && s.role == "standby"),
        "{}",
        p.logs()
    );
    let logs = p.logs();
    assert!(
        logs.contains("in maintenance: this node will not become primary"),
        "{logs}"
    );
    assert!(logs.contains("the peer is in maintenance"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_switches_over_from_the_portal() {
    let _serial = serial();
    let p = Pair::started(54, false);
    // An admin account, added on the primary while it runs.
    let (added, said) = p.a.user(
        &["add", "chief", "--role", "admin"],
        "an admin's long password",
    );
    assert!(added, "{said}");
    let pw_dir = browser_kit();
    let out = screenshot_dir();
    let mut cmd = Command::new("node");
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/js/portal_switchover.mjs"
    ))
    .args([
        &pw_dir,
        &format!("http://{}:{}", p.a.ip, p.a.http_port),
        "chief",
        "an admin's long password",
    ])
    .arg(&out);
    let seen = json_of(cmd).await;
    assert!(seen.get("error").is_none(), "{seen:#}\n{}", p.logs());
    assert_eq!(seen["landedOn"], "/portal/operations");
    assert_eq!(seen["role"], "primary");
    assert_eq!(seen["confirmPage"], "/portal/operations/switchover");
    assert!(
        seen["answer"]
            .as_str()
            .unwrap()
            .starts_with("Switching over: handing over to the standby"),
        "{seen}"
    );
    let (primary, standby) = p.settled(Duration::from_secs(20)).expect("settled");
    assert_eq!((primary.name, standby.name), ("b", "a"), "{}", p.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_and_deletions_on_the_primary_are_the_standbys_after_a_takeover() {
    let _serial = serial();
    let mut p = Pair::started(55, false);
    const PW: &str = "a nurse's long password";
    // Changed on the primary: each answered once the standby has it.
    let (ok, said) = p.a.user(&["add", "nurse", "--role", "viewer"], PW);
    assert!(ok, "{said}");
    let (ok, said) = p.a.user(&["add", "locum", "--role", "viewer"], PW);
    assert!(ok, "{said}");
    let (ok, token) = p.a.user(&["token", "nurse", "--label", "viewer"], "");
    assert!(ok, "{token}");
    let token = token.trim().to_string();
    let (ok, locum_token) = p.a.user(&["token", "locum", "--label", "viewer"], "");
    assert!(ok, "{locum_token}");
    let locum_token = locum_token.trim().to_string();
    let (ok, said) = p.a.user(&["remove", "locum"], "");
    assert!(ok, "{said}");
    // The standby takes no change of its own: it would be missing on the primary.
    let (ok, said) = p.b.user(&["add", "intern", "--role", "viewer"], PW);
    assert!(!ok && said.contains("not the serving primary"), "{said}");

    // An instance deleted on the primary (answered once the standby has the deletion).
    let (ok, said) = p.a.user(&["add", "chief", "--role", "admin"], PW);
    assert!(ok, "{said}");
    let mut client = Client::new(5501);
    for _ in 0..3 {
        client.store_one(&[p.a.scu()]).await;
    }
    assert_eq!(client.acked.len(), 3, "{}", p.logs());
    let gone = client.acked[0].clone();
    let web = reqwest::Client::builder().no_proxy().build().unwrap();
    let instance = format!(
        "/dicom-web/studies/{}/series/{}/instances/{}",
        gone.study_uid, gone.series_uid, gone.sop_uid
    );
    let url = |m: &Member, path: &str| format!("http://{}:{}{path}", m.ip, m.http_port);
    let rsp = web
        .delete(url(&p.a, &instance))
        .basic_auth("chief", Some(PW))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status().as_u16(), 200, "{}", p.logs());
    // /metrics says what the HA driver says: a primary with a standby in step.
    let metrics = |m: &Member| {
        let (web, url) = (web.clone(), url(m, "/metrics"));
        async move {
            let rsp = web.get(url).basic_auth("chief", Some(PW)).send().await;
            let text = rsp.unwrap().text().await.unwrap();
            move |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            }
        }
    };
    let on_a = metrics(&p.a).await;
    assert_eq!(on_a("pacsd_ha_driver_up"), Some(1.0));
    assert_eq!(on_a("pacsd_ha_primary"), Some(1.0));
    assert_eq!(on_a("pacsd_ha_solo"), Some(0.0));
    assert_eq!(on_a("pacsd_ha_standby_ready"), Some(1.0));
    assert_eq!(on_a("pacsd_ha_replication_lag_rows"), Some(0.0));
    assert!(on_a("pacsd_ha_change_log_seq").is_some_and(|s| s >= 6.0));
    assert!(on_a("pacsd_ha_peer_heard_seconds").is_some_and(|s| s < 5.0));
    let epoch_a = on_a("pacsd_ha_epoch").expect("epoch");

    // Take-over by failure: the primary dies, b serves.
    p.a.kill();
    assert!(
        p.b.becomes(Duration::from_secs(20), |s| s.role.starts_with("primary")),
        "b takes over\n{}",
        p.logs()
    );
    let ok_status = |s: u16| s == 200 || s == 204;
    assert!(
        ok_status(p.b.qido_status(|r| r.basic_auth("nurse", Some(PW))).await),
        "the account added on a signs in on b\n{}",
        p.logs()
    );
    assert!(ok_status(p.b.qido_status(|r| r.bearer_auth(&token)).await));
    assert_eq!(
        p.b.qido_status(|r| r.basic_auth("locum", Some(PW))).await,
        401,
        "the account removed on a is gone on b"
    );
    assert_eq!(p.b.qido_status(|r| r.bearer_auth(&locum_token)).await, 401);
    let on_b = metrics(&p.b).await;
    assert_eq!(on_b("pacsd_ha_primary"), Some(1.0));
    assert_eq!(on_b("pacsd_ha_solo"), Some(1.0), "b serves alone");
    assert!(on_b("pacsd_ha_epoch").is_some_and(|e| e > epoch_a));
    assert_eq!(
        p.b.qido_status(|r| r.basic_auth("intern", Some(PW))).await,
        401
    );
    let listed = web
        .get(url(
            &p.b,
            &format!("/dicom-web/studies/{}/instances", gone.study_uid),
        ))
        .basic_auth("chief", Some(PW))
        .send()
        .await
        .unwrap();
    let listed: serde_json::Value = serde_json::from_str(&listed.text().await.unwrap()).unwrap();
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(2),
        "deleted on a, gone on b: {listed}"
    );
    assert_all_kept(&p.b, &client.acked[1..], &p.logs()).await;
    // And b, now primary, changes accounts itself.
    let (ok, said) = p.b.user(&["password", "nurse"], "a new long password");
    assert!(ok, "{said}");
}
