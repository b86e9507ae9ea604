//! Shared test harness: an in-process node on 127.0.0.1:0 with its own temporary data
//! directory, DCMTK tools run with TCP_NODELAY=1, and synthetic DICOM files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pacsd::config::Config;
use pacsd::net::scu::{ProposedContext, ScuAssociation, ScuOptions};
use pacsd::node::{Node, RunningNode};

pub struct TestNode {
    pub node: RunningNode,
    pub config: Config,
    pub dir: tempfile::TempDir,
}

/// A config for a node whose data lives under `dir` (3 local replicas, port 0).
pub fn config_in(dir: &Path) -> Config {
    let mut c = Config::default();
    c.node.bind = "127.0.0.1".into();
    c.node.port = 0;
    c.http.port = 0;
    c.index.path = dir.join("index.sqlite");
    c.storage.replicas = (1..=3)
        .map(|i| dir.join(format!("replica-{i}")).display().to_string())
        .collect();
    c.timeouts.shutdown_secs = 5.0;
    // Previews add a .jpg beside each image and their own repair entries; the tests that
    // count files or queue entries are about objects, so only tests/preview.rs turns them on.
    c.preview.enabled = false;
    // Tests look at every replica right after an answer: a put waits for all three (up to
    // the grace) as it did before replicas could finish in the background, so that a slow
    // fsync on a loaded machine cannot fail them. Answering at the quorum is tested on its
    // own (src/storage, src/archive/store.rs, tests/hdfs.rs, tests/binary.rs).
    c.storage.straggler_patience_secs = pacsd::storage::STRAGGLER_GRACE.as_secs_f64();
    c
}

impl TestNode {
    pub async fn start() -> TestNode {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestNode {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = config_in(dir.path());
        tweak(&mut config);
        config.validate().expect("test config is valid");
        let node = Node::open(config.clone())
            .expect("open node")
            .spawn()
            .await
            .expect("spawn node");
        TestNode { node, config, dir }
    }

    /// A node started with `tweak`, with `accounts` (name, password, role) added; returns it
    /// and its DICOMweb base URL.
    pub async fn start_web(
        tweak: impl FnOnce(&mut Config),
        accounts: &[(&str, &str, &str)],
    ) -> (TestNode, String) {
        let n = TestNode::start_with(tweak).await;
        n.add_accounts(accounts).await;
        let base = n.dicomweb();
        (n, base)
    }

    pub fn port(&self) -> u16 {
        self.node.addr.port()
    }

    pub fn scu(&self, calling: &str) -> ScuOptions {
        scu_to(
            format!("127.0.0.1:{}", self.port()),
            calling,
            Duration::from_secs(20),
        )
    }

    pub fn replica_dir(&self, i: usize) -> PathBuf {
        PathBuf::from(&self.config.storage.replicas[i])
    }

    /// Every regular file under a replica directory.
    pub fn files_in_replica(&self, i: usize) -> Vec<PathBuf> {
        let dir = self.replica_dir(i);
        if !dir.is_dir() {
            return Vec::new();
        }
        pacsd::tools::collect_files(&[dir]).unwrap_or_default()
    }

    /// Make replica `i` unwritable: replace its directory with a plain file (as root,
    /// permission bits would not stop writes).
    pub fn break_replica(&self, i: usize) {
        let r = self.replica_dir(i);
        std::fs::remove_dir_all(&r).unwrap();
        std::fs::write(&r, b"not a directory").unwrap();
    }

    /// The stored object of an indexed instance, read back through the verified read path.
    pub async fn read_back(&self, sop_uid: &str) -> pacsd::storage::Verified {
        let inst = self.node.index.instance(sop_uid).await.unwrap().unwrap();
        self.node.storage.read(&inst.expected()).await.unwrap()
    }

    pub async fn instances(&self) -> u64 {
        self.node.index.counts().await.unwrap().instances
    }

    /// The indexed instance `sop_uid` (panics when it is not indexed).
    pub async fn stored(&self, sop_uid: &str) -> pacsd::index::StoredInstance {
        self.node
            .index
            .instance(sop_uid)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{sop_uid} is not indexed"))
    }

    /// Add HTTP accounts (name, password, rights as `pacsd account` takes them).
    pub async fn add_accounts(&self, accounts: &[(&str, &str, &str)]) {
        for (name, password, rights) in accounts {
            let rights = pacsd::index::account::Rights::parse(rights).unwrap();
            self.node
                .index
                .add_account(name, password, rights)
                .await
                .unwrap();
        }
    }

    /// The node's DICOMweb base URL.
    pub fn dicomweb(&self) -> String {
        let http = self.node.http_addr.expect("http listener");
        format!("http://127.0.0.1:{}/dicom-web", http.port())
    }

    /// The node's `/metrics` text, asked as `user` (an account with the admin right).
    pub async fn metrics(&self, user: &str, password: &str) -> String {
        let http = self.node.http_addr.expect("http listener");
        reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/metrics", http.port()))
            .basic_auth(user, Some(password))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Whether the repair queue is empty within `limit` (the repair worker healed it).
    /// `storage verify` of everything the node holds (bad copies are queued for repair).
    pub async fn verify(&self) -> pacsd::archive::maintenance::VerifySummary {
        pacsd::archive::maintenance::verify_all(&self.node.index, &self.node.storage, false)
            .await
            .expect("verify")
    }

    /// Wait (up to `limit`) until the repair queue is empty, then verify everything.
    pub async fn verify_once_repaired(
        &self,
        limit: Duration,
    ) -> pacsd::archive::maintenance::VerifySummary {
        assert!(
            self.repairs_drain(limit).await,
            "the repair queue did not drain within {limit:?}"
        );
        self.verify().await
    }

    pub async fn repairs_drain(&self, limit: Duration) -> bool {
        eventually(limit, async || {
            self.node.index.repair_queue().await.unwrap().is_empty()
        })
        .await
    }
}

/// The path of DCMTK's `tool`: the first one on PATH that says it is DCMTK's. pynetdicom
/// installs its own `storescu`, `findscu`, `getscu`, `movescu` and `echoscu`; when those come
/// first on the PATH they would shadow DCMTK's and the tests would drive the wrong client.
pub fn dcmtk_path(tool: &str) -> PathBuf {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static FOUND: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let cache = FOUND.get_or_init(Default::default);
    if let Some(p) = cache.lock().unwrap().get(tool) {
        return p.clone();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .filter(|p| p.is_file())
        .find(|p| {
            // DCMTK's tools print `$dcmtk: <tool> v3.x ... $` first for --version.
            Command::new(p)
                .arg("--version")
                .stdin(Stdio::null())
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("$dcmtk:"))
        })
        .unwrap_or_else(|| panic!("no DCMTK `{tool}` on PATH (apt-get install dcmtk)"));
    cache
        .lock()
        .unwrap()
        .insert(tool.to_string(), found.clone());
    found
}

/// Run a DCMTK tool with TCP_NODELAY=1 (its Nagle delay would dominate otherwise) and a
/// hard time limit.
pub fn dcmtk(tool: &str, args: &[&str]) -> Output {
    let mut child = Command::new(dcmtk_path(tool))
        .args(args)
        .env("TCP_NODELAY", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {tool} (is DCMTK installed?): {e}"));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{tool} {args:?} did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// DCMTK runs blocking; run it off the async runtime the node lives on.
pub async fn dcmtk_async(tool: &'static str, args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        dcmtk(tool, &refs)
    })
    .await
    .unwrap()
}

/// `echoscu` to the node's AE title on `port` (whether the node still serves).
pub async fn echo_node(port: u16) -> Output {
    dcmtk_async(
        "echoscu",
        vec![
            "-aec".into(),
            "PACSD".into(),
            "127.0.0.1".into(),
            port.to_string(),
        ],
    )
    .await
}

/// DCMTK `storescu +sd` of every file under `dir` to the node's AE title on `port`.
pub async fn storescu_dir(port: u16, dir: &Path) -> Output {
    storescu_paths(port, &["+sd"], &[dir]).await
}

/// DCMTK `storescu` with `options` (e.g. `+sd`) of `paths` to the node's AE title on `port`.
pub async fn storescu_paths(port: u16, options: &[&str], paths: &[&Path]) -> Output {
    let mut args: Vec<String> = vec!["-aec".into(), "PACSD".into()];
    args.extend(options.iter().map(|o| o.to_string()));
    args.extend(["127.0.0.1".into(), port.to_string()]);
    args.extend(paths.iter().map(|p| p.display().to_string()));
    dcmtk_async("storescu", args).await
}

/// Write at `path` a configuration for the `pacsd` maintenance commands (`storage verify`,
/// `preview`, ...): the index and replicas of `config`.
pub fn write_cli_config(config: &Config, path: &Path) {
    let replicas: Vec<String> = config
        .storage
        .replicas
        .iter()
        .map(|r| format!("\"{r}\""))
        .collect();
    std::fs::write(
        path,
        format!(
            "[index]\npath = \"{}\"\n\n[storage]\nreplicas = [{}]\n",
            config.index.path.display(),
            replicas.join(", ")
        ),
    )
    .unwrap();
}

/// Run a DCMTK converter (dcmcjpeg, dcmcrle, dcmcjpls, ...) as `tool flags... from to`.
pub fn dcmtk_convert(tool: &str, flags: &[&str], from: &Path, to: &Path) -> Output {
    let (from, to) = (from.display().to_string(), to.display().to_string());
    let mut args = flags.to_vec();
    args.extend([from.as_str(), to.as_str()]);
    dcmtk(tool, &args)
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Assert that a command succeeded and printed `expected` on its standard output.
#[track_caller]
pub fn assert_printed(out: &Output, expected: &str) {
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(expected),
        "expected success and `{expected}`: {}",
        text(out)
    );
}

/// Assert that a command succeeded; `what` says what its failure means.
#[track_caller]
pub fn assert_succeeded(out: &Output, what: &str) {
    assert!(out.status.success(), "{what}: {}", text(out));
}

/// Assert that a command failed; `what` names what must not have been accepted.
#[track_caller]
pub fn assert_failed(out: &Output, what: &str) {
    assert!(!out.status.success(), "{what}: {}", text(out));
}

/// Write `n` small synthetic CT files (64x64) of one study under `dir`.
pub fn small_corpus(dir: &Path, study: u32, n: u32) -> Vec<PathBuf> {
    corpus_of_size(dir, study, n, 64)
}

/// Write `n` synthetic CT files of `size` x `size` pixels of one study under `dir`.
pub fn corpus_of_size(dir: &Path, study: u32, n: u32, size: u16) -> Vec<PathBuf> {
    (1..=n)
        .map(|i| {
            let p = dir.join(format!("{study}-{i}.dcm"));
            pacsd::synth::Spec::ct(study, 1, i, size).write(&p).unwrap();
            p
        })
        .collect()
}

/// Open an association proposing CT Image Storage in Explicit VR LE.
pub async fn ct_association(opts: &ScuOptions) -> ScuAssociation {
    ScuAssociation::connect(
        opts,
        &[ProposedContext {
            abstract_syntax: dicom_dictionary_std::uids::CT_IMAGE_STORAGE.into(),
            transfer_syntaxes: vec![dicom_dictionary_std::uids::EXPLICIT_VR_LITTLE_ENDIAN.into()],
        }],
    )
    .await
    .expect("association")
}

/// C-STORE a synthetic instance, encoded in Explicit VR LE, and return the SCP's status (a
/// transport error fails the test).
pub async fn store_spec(
    a: &mut ScuAssociation,
    ctx: u8,
    spec: &pacsd::synth::Spec,
) -> pacsd::dimse::Status {
    store_data(a, ctx, spec, &encode(spec)).await
}

/// C-STORE `data` under a synthetic instance's SOP Class and Instance UIDs.
pub async fn store_data(
    a: &mut ScuAssociation,
    ctx: u8,
    spec: &pacsd::synth::Spec,
    data: &[u8],
) -> pacsd::dimse::Status {
    a.store(ctx, &spec.sop_class, &spec.sop_uid, data)
        .await
        .expect("a C-STORE response")
}

/// Encode a synthetic instance's data set in Explicit VR LE.
pub fn encode(spec: &pacsd::synth::Spec) -> Vec<u8> {
    let mut out = Vec::new();
    spec.dataset()
        .write_dataset_with_ts(
            &mut out,
            &dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased(),
        )
        .unwrap();
    out
}

/// Poll `f` until it returns true or `limit` passes.
pub async fn eventually(limit: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Whether `f` holds during the whole `window`, looked at every 20 ms: for "nothing happens"
/// properties (a sleep and one look would miss a moment where it did not hold). False as soon
/// as it fails.
pub async fn holds_for(window: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let end = Instant::now() + window;
    loop {
        if !f().await {
            return false;
        }
        if Instant::now() >= end {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP port on loopback for a child process to listen on, chosen below the kernel's
/// ephemeral range: a port taken with bind(0) and released could be handed to the next
/// bind(0) of this very test (the node's own listeners) before the child binds it, and the
/// child then fails to start (Orthanc did, once, in a clean run). Random, and checked free.
pub fn unused_port() -> u16 {
    unused_ports(&[0])
}

/// A plain-TCP association to the node "PACSD" at `addr` (host:port), from `calling`.
pub fn scu_to(addr: impl Into<String>, calling: &str, timeout: Duration) -> ScuOptions {
    ScuOptions {
        addr: addr.into(),
        calling_ae: calling.into(),
        called_ae: "PACSD".into(),
        timeout,
        tls: None,
    }
}

/// A random base port below the kernel's ephemeral range such that `base + o` is free on
/// loopback for every offset `o` (a child that listens on several ports, as `unused_port`).
pub fn unused_ports(offsets: &[u16]) -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let span = offsets.iter().copied().max().unwrap_or(0);
    let (from, to) = (10_000u16, low.saturating_sub(span).max(10_001));
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(std::process::id() as u64);
        let base = from + (h.finish() % u64::from(to - from)) as u16;
        let free = |o: &u16| std::net::TcpListener::bind(("127.0.0.1", base + o)).is_ok();
        if offsets.iter().all(free) {
            return base;
        }
    }
}

/// `eventually` for blocking tests: whether `f` becomes true within `limit`.
pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// `holds_for` for blocking tests.
pub fn holds_for_blocking(window: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + window;
    loop {
        if !f() {
            return false;
        }
        if Instant::now() >= end {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A 3-node Garage cluster on loopback started by `scripts/s3-cluster.sh` (stopped and removed
/// on drop). Without `garage` on PATH the test fails and says how to install it, unless
/// PACSD_SKIP_S3=1 is set (then `start` returns None and the caller says it skipped).
pub struct S3Cluster {
    pub dir: PathBuf,
    vars: Vec<(String, String)>,
}

impl S3Cluster {
    pub fn start() -> Option<S3Cluster> {
        Self::start_mode("cluster")
    }

    /// Three independent single-node Garage servers, one per site (see the script).
    pub fn start_independent() -> Option<S3Cluster> {
        Self::start_mode("--independent")
    }

    /// The ports the script gives node N (1..3) of a cluster on BASE: BASE+10N (S3), +1 (RPC),
    /// +3 (admin).
    const PORT_OFFSETS: [u16; 9] = [10, 11, 13, 20, 21, 23, 30, 31, 33];

    fn start_mode(mode: &str) -> Option<S3Cluster> {
        if std::env::var("PACSD_SKIP_S3").as_deref() == Ok("1") {
            eprintln!("SKIPPED: S3 test (PACSD_SKIP_S3=1)");
            return None;
        }
        let found = Command::new("garage")
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        assert!(
            found,
            "the S3 tests need `garage` on PATH (cargo install garage --locked); \
             set PACSD_SKIP_S3=1 to skip them"
        );
        // The nine ports are free when chosen, but another process may bind one before a
        // Garage node does: that node then fails to start, and the cluster is started again
        // on other ports (only for that cause; any other failure fails the test).
        let mut failures = Vec::new();
        for _ in 0..3 {
            let base = unused_ports(&Self::PORT_OFFSETS);
            let dir = std::env::temp_dir().join(format!("pacsd-s3-{base}-{}", std::process::id()));
            let out = Command::new("bash")
                .arg(script("s3-cluster.sh"))
                .args(["start", &dir.display().to_string(), &base.to_string(), mode])
                .output()
                .expect("run s3-cluster.sh");
            let Ok(env) = std::fs::read_to_string(dir.join("env")) else {
                let logs: String = (1..=3)
                    .filter_map(|n| std::fs::read_to_string(dir.join(format!("node{n}.log"))).ok())
                    .collect();
                let _ = Command::new("bash")
                    .arg(script("s3-cluster.sh"))
                    .args(["stop", &dir.display().to_string()])
                    .output();
                let report = format!("base {base}: {}", text(&out));
                assert!(
                    logs.contains("Address already in use") || logs.contains("AddrInUse"),
                    "s3-cluster.sh start: {report}\n{logs}"
                );
                failures.push(report);
                continue;
            };
            assert!(out.status.success(), "s3-cluster.sh start: {}", text(&out));
            let vars = env
                .lines()
                .filter_map(|l| l.strip_prefix("export "))
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
                .collect();
            return Some(S3Cluster { dir, vars });
        }
        panic!("no Garage cluster started, a port was taken each time: {failures:#?}");
    }

    pub fn var(&self, k: &str) -> &str {
        self.vars
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{k} not in the cluster env"))
    }

    /// The three replica URLs with credentials in the query (no process environment needed).
    pub fn replicas(&self) -> Vec<String> {
        self.var("PACSD_S3_REPLICAS")
            .split_whitespace()
            .map(|u| {
                format!(
                    "{u}&region={}&access_key_id={}&secret_access_key={}&allow_http=true",
                    self.var("AWS_REGION"),
                    self.var("AWS_ACCESS_KEY_ID"),
                    self.var("AWS_SECRET_ACCESS_KEY")
                )
            })
            .collect()
    }

    /// Run a node command of the script: kill, stop-node, cont-node or restart (node 1..3).
    pub fn node(&self, action: &str, n: usize) {
        let out = Command::new("bash")
            .arg(script("s3-cluster.sh"))
            .args([action, &n.to_string(), &self.dir.display().to_string()])
            .output()
            .expect("run s3-cluster.sh");
        assert!(
            out.status.success(),
            "s3-cluster.sh {action} {n}: {}",
            text(&out)
        );
    }
}

impl Drop for S3Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script("s3-cluster.sh"))
            .args(["stop", &self.dir.display().to_string()])
            .output();
    }
}

pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// Every instance in `acked` (all of one series) is found by C-FIND at IMAGE level and
/// retrieved by C-GET of the series from the node at `opts`; Err says what is not.
pub async fn check_kept(opts: &ScuOptions, acked: &[pacsd::synth::Spec]) -> Result<(), String> {
    use pacsd::tools::{FindSpec, Model};
    let Some(first) = acked.first() else {
        return Ok(());
    };
    let keys = vec![
        format!("StudyInstanceUID={}", first.study_uid),
        format!("SeriesInstanceUID={}", first.series_uid),
    ];
    let mut find_keys = keys.clone();
    find_keys.push("SOPInstanceUID=".into());
    let spec = FindSpec {
        model: Model::StudyRoot,
        level: "IMAGE".into(),
        keys: find_keys,
        charset: None,
        relational: false,
        cancel_after: None,
    };
    let found = pacsd::tools::find(opts, &spec)
        .await
        .map_err(|e| format!("C-FIND: {e}"))?;
    let uids: std::collections::BTreeSet<String> = (0..found.matches.len())
        .filter_map(|i| found.value(i, dicom_dictionary_std::tags::SOP_INSTANCE_UID))
        .collect();
    let missing: Vec<&str> = acked
        .iter()
        .map(|s| s.sop_uid.as_str())
        .filter(|u| !uids.contains(*u))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} of {} acknowledged instances not found, e.g. {:?}",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(5)]
        ));
    }
    let out = tempfile::tempdir().map_err(|e| e.to_string())?;
    let what = FindSpec::retrieve(Model::StudyRoot, "SERIES".into(), keys);
    let got = pacsd::tools::get_into(opts, &what, out.path(), false)
        .await
        .map_err(|e| format!("C-GET: {e}"))?;
    let files = pacsd::tools::collect_files(&[out.path().to_path_buf()])
        .map_err(|e| e.to_string())?
        .len();
    if !got.status.is_success() || files < acked.len() {
        return Err(format!(
            "C-GET returned {files} files for {} acknowledged: {got}",
            acked.len()
        ));
    }
    Ok(())
}

/// A JPEG 2000 (lossless) object made with OpenJPEG's opj_compress from a synthetic image.
pub fn j2k_object(spec: &pacsd::synth::Spec, dir: &Path) -> PathBuf {
    use dicom_core::value::PixelFragmentSequence;
    use dicom_core::{DataElement, VR};
    use dicom_dictionary_std::{tags, uids};
    let n = spec.size as usize;
    let obj = spec.dataset();
    let pixels = obj
        .element(tags::PIXEL_DATA)
        .unwrap()
        .to_bytes()
        .unwrap()
        .into_owned();
    // 16-bit PGM (big-endian samples), 12 bits used.
    let mut pgm = format!("P5\n{n} {n}\n4095\n").into_bytes();
    for px in pixels.chunks(2) {
        pgm.extend_from_slice(&[px[1], px[0]]);
    }
    let (pgm_path, j2k_path) = (dir.join("in.pgm"), dir.join("out.j2k"));
    std::fs::write(&pgm_path, pgm).unwrap();
    let out = Command::new("opj_compress")
        .arg("-i")
        .arg(&pgm_path)
        .arg("-o")
        .arg(&j2k_path)
        .output()
        .expect("opj_compress (libopenjp2-tools) installed");
    assert!(out.status.success(), "{}", text(&out));
    let codestream = std::fs::read(&j2k_path).unwrap();
    let mut ds = obj;
    ds.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PixelFragmentSequence::new(Vec::<u32>::new(), vec![codestream]),
    ));
    let meta = dicom_object::meta::FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(spec.sop_class.as_str())
        .media_storage_sop_instance_uid(spec.sop_uid.as_str())
        .transfer_syntax(uids::JPEG2000_LOSSLESS)
        .build()
        .unwrap();
    let path = dir.join("j2k.dcm");
    ds.with_exact_meta(meta).write_to_file(&path).unwrap();
    path
}

/// Run the tests of one binary that hold this one at a time: the HA tests count leases in
/// hundreds of milliseconds, and several pairs starting at once on 2 cores starve each other.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Send, from the loopback address `from`, an A-ASSOCIATE-RQ (Verification contexts with
/// these IDs) calling the node's AE as `calling`; return the type of the PDU that answers it
/// (2 = AC, 3 = RJ, 7 = A-ABORT), or None if the connection closed first.
pub async fn associate_raw(
    to: std::net::SocketAddr,
    from: [u8; 4],
    calling: &str,
    ids: &[u8],
) -> Option<u8> {
    use dicom_ul::pdu::{AssociationRQ, PresentationContextProposed, UserVariableItem};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rq = dicom_ul::Pdu::AssociationRQ(AssociationRQ {
        protocol_version: 1,
        calling_ae_title: calling.into(),
        called_ae_title: "PACSD".into(),
        application_context_name: "1.2.840.10008.3.1.1.1".into(),
        presentation_contexts: ids
            .iter()
            .map(|&id| PresentationContextProposed {
                id,
                abstract_syntax: dicom_dictionary_std::uids::VERIFICATION.into(),
                transfer_syntaxes: vec![
                    dicom_dictionary_std::uids::IMPLICIT_VR_LITTLE_ENDIAN.into(),
                ],
            })
            .collect(),
        user_variables: vec![UserVariableItem::MaxLength(16384)],
    });
    let mut bytes = Vec::new();
    dicom_ul::write_pdu(&mut bytes, &rq).unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::from((from, 0))).unwrap();
    let mut s = socket.connect(to).await.unwrap();
    s.write_all(&bytes).await.unwrap();
    let mut first = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(10), s.read(&mut first)).await {
        Ok(Ok(1)) => Some(first[0]),
        _ => None,
    }
}

/// Peak resident memory (VmHWM) of process `pid` ("self" for this one), in bytes.
pub fn peak_rss_of(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kb * 1024
}

/// A DCMTK storescp (AE DEST) on a free loopback port, writing what it receives into its own
/// directory; killed on drop.
pub struct Destination {
    child: std::process::Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Destination {
    /// `extra` options go before the port (e.g. `+xi` to accept only some syntaxes).
    pub fn start(extra: &[&str]) -> Destination {
        Self::start_with(extra, &[])
    }

    /// As `start`; the readiness check (echoscu) gets `echo_extra` (e.g. TLS options matching
    /// storescp's own).
    pub fn start_with(extra: &[&str], echo_extra: &[&str]) -> Destination {
        // The port is free when asked for, but another test's socket (a client's ephemeral
        // port) can take it before storescp binds it: storescp then exits, and we try again
        // on a new port instead of waiting for an echo that cannot come.
        let mut failures = Vec::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let log = dir.path().with_extension("log");
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new(dcmtk_path("storescp"))
                .args(["-aet", "DEST", "+B", "-od"])
                .arg(dir.path())
                .args(extra)
                .arg(port.to_string())
                .env("TCP_NODELAY", "1")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("storescp (DCMTK) installed");
            let mut d = Destination { child, port, dir };
            let port = port.to_string();
            let mut echo: Vec<&str> = echo_extra.to_vec();
            echo.extend(["-aec", "DEST", "127.0.0.1", &port]);
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Some(status) = d.child.try_wait().unwrap() {
                    let said = std::fs::read_to_string(&log).unwrap_or_default();
                    failures.push(format!("port {port}: storescp {status}: {said}"));
                    break;
                }
                if dcmtk("echoscu", &echo).status.success() {
                    let _ = std::fs::remove_file(&log);
                    return d;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = std::fs::remove_file(&log);
            if d.child.try_wait().unwrap().is_none() {
                panic!("storescp on port {port} did not answer C-ECHO in 30 s");
            }
        }
        panic!("storescp did not start: {failures:?}");
    }

    pub fn files(&self) -> Vec<PathBuf> {
        pacsd::tools::collect_files(&[self.dir.path().to_path_buf()]).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Destination {
    fn drop(&mut self) {
        self.kill();
    }
}

/// C-STORE `specs` to the node at `opts` over one association; every one must succeed.
pub async fn store_specs(opts: &ScuOptions, specs: &[pacsd::synth::Spec]) {
    let mut a = ct_association(opts).await;
    let ctx = a.contexts()[0].id;
    for s in specs {
        let st = store_spec(&mut a, ctx, s).await;
        assert!(st.is_success(), "{st:?}");
    }
    a.release().await.unwrap();
}

/// The directory scripts/ohif.sh installs into, once and cached: OHIF's prebuilt dist and
/// playwright-core (which drives Debian's Chromium).
pub fn browser_kit() -> String {
    let install = Command::new("bash")
        .arg(script("ohif.sh"))
        .output()
        .unwrap();
    assert!(install.status.success(), "{}", text(&install));
    String::from_utf8(install.stdout)
        .unwrap()
        .trim()
        .to_string()
}

/// tests/js/portal_viewer.mjs against the node at `base` (its environment extended by `env`):
/// an anonymous visitor of the viewer is sent to the login page and back, and the signed-in
/// account's "Open in viewer" draws `study` in OHIF with every DICOMweb request answered.
/// The script's JSON, for the caller's own checks.
pub async fn open_in_viewer(
    kit: &str,
    base: &str,
    (name, password): (&str, &str),
    study: &str,
    env: &[(&str, String)],
) -> serde_json::Value {
    let mut cmd = Command::new("node");
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/js/portal_viewer.mjs"
    ))
    .args([kit, base, name, password, study])
    .arg(screenshot_dir())
    .arg("90000")
    .envs(env.iter().map(|(k, v)| (k, v)));
    let seen = json_of(cmd).await;
    eprintln!("{seen:#}");

    // Anonymous: the login page, which leads back to the viewer; the viewer's files need it.
    assert_eq!(seen["anonymousLandsOn"], "/portal/login");
    assert_eq!(
        seen["anonymousNext"],
        format!("/viewer?StudyInstanceUIDs={study}")
    );
    assert_eq!(seen["anonymousConfig"], 401);
    assert_eq!(seen["afterLogin"], "/viewer");
    // The study page links to the viewer on that study, and the viewer draws it with the
    // portal's session: every DICOMweb request it made succeeded.
    assert_eq!(seen["link"], format!("/viewer?StudyInstanceUIDs={study}"));
    assert_eq!(seen["viewerPath"], "/viewer");
    assert!(seen["firstImageMs"].is_u64(), "no image drawn: {seen}");
    assert!(seen["greyLevels"].as_u64().unwrap() > 16, "{seen}");
    assert_eq!(seen["failures"], serde_json::json!([]), "{seen}");
    assert!(seen["requests"].as_u64().unwrap() >= 3, "{seen}");
    // The session it used is out of scripts' reach and never sent by another site.
    assert_eq!(seen["sessionCookie"]["httpOnly"], true, "{seen}");
    assert_eq!(seen["sessionCookie"]["sameSite"], "Strict", "{seen}");
    seen
}

/// Where the browser tests leave their screenshots (target/portal-screenshots).
pub fn screenshot_dir() -> PathBuf {
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/portal-screenshots");
    std::fs::create_dir_all(&out).unwrap();
    out
}

/// Write `spec` as a Part 10 file (Explicit VR Little Endian).
pub fn part10_file(spec: &pacsd::synth::Spec, path: &Path) {
    write_part10(spec.dataset(), spec, path);
}

/// Write `dataset` as a Part 10 file of `spec`'s SOP class and instance (Explicit VR LE).
pub fn write_part10(
    dataset: dicom_object::InMemDicomObject,
    spec: &pacsd::synth::Spec,
    path: &Path,
) {
    let meta = dicom_object::meta::FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(spec.sop_class.as_str())
        .media_storage_sop_instance_uid(spec.sop_uid.as_str())
        .transfer_syntax(dicom_dictionary_std::uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .build()
        .unwrap();
    dataset.with_exact_meta(meta).write_to_file(path).unwrap();
}

/// Run a helper program (python3, node) and parse the one JSON object it prints; its output
/// is shown if it fails or prints something else.
pub async fn json_of(mut cmd: Command) -> serde_json::Value {
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("helper program"))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

/// A real HDFS (Hadoop's MiniDFSCluster, `scripts/minidfs.sh`) on loopback, shut down on drop.
/// Commands go to its stdin and each answer is checked (see tests/minidfs).
pub struct MiniDfs {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
    /// `hdfs://127.0.0.1:PORT`, or `hdfs://pacsns` for an HA pair.
    pub url: String,
    /// The client settings of the HA nameservice as a URL query (empty for one NameNode).
    pub query: String,
    _dir: tempfile::TempDir,
}

impl MiniDfs {
    /// Start a cluster with `datanodes` DataNodes and, with `ha`, two NameNodes (the first
    /// active). Fails the test (with what the launcher said) when it cannot start.
    pub fn start(datanodes: usize, ha: bool) -> MiniDfs {
        Self::start_in(None, datanodes, ha)
    }

    /// As `start`, inside the network namespace `netns` with the cluster reached at `addr`
    /// (the namespace's address on the HA lab's bridge).
    pub fn start_in(netns: Option<(&str, &str)>, datanodes: usize, ha: bool) -> MiniDfs {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = match netns {
            Some((ns, _)) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "bash"]);
                c
            }
            None => Command::new("bash"),
        };
        if let Some((_, addr)) = netns {
            cmd.args([script("minidfs.sh").display().to_string(), "run".into()])
                .args(["--bind", addr]);
        } else {
            cmd.arg(script("minidfs.sh")).arg("run");
        }
        cmd.args(["--dir", &dir.path().display().to_string()])
            .args(["--datanodes", &datanodes.to_string()]);
        if ha {
            cmd.arg("--ha");
        }
        let log = std::fs::File::create(dir.path().join("minidfs.log")).unwrap();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("run scripts/minidfs.sh (needs Java 17 and Maven)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let ready = lines
            .recv_timeout(Duration::from_secs(180))
            .unwrap_or_else(|_| {
                let log =
                    std::fs::read_to_string(dir.path().join("minidfs.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!("MiniDFSCluster did not start: {}", tail.join("\n"))
            });
        let words: Vec<&str> = ready
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("unexpected launcher line: {ready}"))
            .split_whitespace()
            .collect();
        let url = words[0].strip_prefix("url=").unwrap().to_string();
        let query = words[1..].join("&");
        MiniDfs {
            child,
            stdin,
            lines,
            url,
            query,
            _dir: dir,
        }
    }

    /// A replica location at `path` on this cluster (with the nameservice's settings).
    pub fn replica(&self, path: &str) -> String {
        if self.query.is_empty() {
            format!("{}/{path}", self.url)
        } else {
            format!("{}/{path}?{}", self.url, self.query)
        }
    }

    /// Send one launcher command (`stop-datanode 1`, `failover`, ...) and wait for its OK
    /// (inside a multi-threaded tokio test, the runtime's other work goes on meanwhile).
    pub fn command(&mut self, command: &str) -> String {
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| self.command_now(command))
            }
            _ => self.command_now(command),
        }
    }

    fn command_now(&mut self, command: &str) -> String {
        use std::io::Write;
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        let answer = self
            .lines
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("MiniDFSCluster did not answer `{command}`"));
        assert!(answer.starts_with("OK"), "`{command}`: {answer}");
        answer
    }
}

impl Drop for MiniDfs {
    fn drop(&mut self) {
        use std::io::Write;
        let _ = writeln!(self.stdin, "shutdown");
        let _ = self.stdin.flush();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The stores with every read slowed by `per_byte` (object_store's throttling wrapper; for
/// remote stores, whose payload is a stream): a read then lasts long enough to be cut into.
pub fn slowed_reads(
    stores: Vec<(String, std::sync::Arc<dyn object_store::ObjectStore>)>,
    per_byte: Duration,
) -> Vec<(String, std::sync::Arc<dyn object_store::ObjectStore>)> {
    use object_store::throttle::{ThrottleConfig, ThrottledStore};
    stores
        .into_iter()
        .map(|(name, s)| {
            let t: std::sync::Arc<dyn object_store::ObjectStore> =
                std::sync::Arc::new(ThrottledStore::new(
                    s,
                    ThrottleConfig {
                        wait_get_per_byte: per_byte,
                        ..Default::default()
                    },
                ));
            (name, t)
        })
        .collect()
}

/// DCMTK findscu against the node (called AE PACSD) with `args` (keys, `-S`/`-P`); its
/// verbose output, which lists every response's identifier.
pub fn findscu(port: u16, args: &[&str]) -> String {
    scu("findscu", port, args)
}

/// A DCMTK SCU tool (verbose) against the node on `port` (called AE PACSD) with `args`; its
/// output.
pub fn scu(tool: &str, port: u16, args: &[&str]) -> String {
    let mut a = vec!["-v", "-aec", "PACSD"];
    a.extend_from_slice(args);
    let p = port.to_string();
    a.extend_from_slice(&["127.0.0.1", &p]);
    text(&dcmtk(tool, &a))
}

/// DCMTK `getscu` of one study (Study Root) from the node on `port` into `dir`: its verbose
/// output, once checked that `completed` sub-operations completed and none failed.
pub async fn getscu_study(port: u16, study_uid: &str, dir: &Path, completed: usize) -> String {
    let (keys, od) = (study_retrieve_keys(study_uid), dir.display().to_string());
    let out = tokio::task::spawn_blocking(move || {
        let mut args = vec!["-od", &od];
        args.extend(keys.iter().map(String::as_str));
        scu("getscu", port, &args)
    })
    .await
    .unwrap();
    let done = format!("Number of Completed Suboperations : {completed}");
    assert!(out.contains(&done), "{out}");
    assert!(
        out.contains("Number of Failed Suboperations    : 0"),
        "{out}"
    );
    out
}

/// The keys of a Study Root retrieve of one study, for movescu and getscu.
pub fn study_retrieve_keys(study_uid: &str) -> [String; 5] {
    [
        "-S".into(),
        "-k".into(),
        "QueryRetrieveLevel=STUDY".into(),
        "-k".into(),
        format!("StudyInstanceUID={study_uid}"),
    ]
}

/// DCMTK findscu for the SOP Instance UIDs of one series (Study Root, IMAGE level, which
/// needs the study's and the series' UIDs); its output, one `(0008,0018) UI [...]` per match.
pub fn findscu_instances(port: u16, study_uid: &str, series_uid: &str) -> String {
    let study = format!("StudyInstanceUID={study_uid}");
    let series = format!("SeriesInstanceUID={series_uid}");
    findscu(
        port,
        &[
            "-S",
            "-k",
            "QueryRetrieveLevel=IMAGE",
            "-k",
            &study,
            "-k",
            &series,
            "-k",
            "SOPInstanceUID",
        ],
    )
}

/// DCMTK movescu (verbose) to the node on `port`, moving to the AE DEST, with `args` (query
/// model and keys); its output.
pub fn movescu(port: u16, args: &[&str]) -> String {
    let mut a = vec!["-aem", "DEST"];
    a.extend_from_slice(args);
    scu("movescu", port, &a)
}

/// Send `GET path` with `Connection: close` (and an Authorization header) on a connected
/// socket and read the answer's status code (0: no answer or no status line).
pub fn http_status(
    mut s: std::net::TcpStream,
    host: &str,
    path: &str,
    authorization: Option<&str>,
) -> u16 {
    use std::io::{Read, Write};
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    if write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n"
    )
    .is_err()
    {
        return 0;
    }
    let mut rsp = String::new();
    let _ = s.read_to_string(&mut rsp);
    rsp.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// A peer on loopback allowed `services` (the other fields as configured by default).
pub fn loopback_peer(
    ae_title: &str,
    port: u16,
    services: &[pacsd::config::Service],
) -> pacsd::config::Peer {
    pacsd::config::Peer {
        ae_title: ae_title.into(),
        host: "127.0.0.1".into(),
        port,
        services: services.iter().copied().collect(),
        hosts: Vec::new(),
        on_conflict: None,
        ..pacsd::config::Peer::default()
    }
}

/// Write `specs` as Part 10 files `0.dcm`, `1.dcm`, ... under `dir`; their paths in order.
pub fn write_specs(dir: &Path, specs: &[pacsd::synth::Spec]) -> Vec<PathBuf> {
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let p = dir.join(format!("{i}.dcm"));
            s.write(&p).unwrap();
            p
        })
        .collect()
}

/// `pacsd witness` arguments for a pair `a`/`b` whose directory `dir` holds `ha.key`: it
/// listens on `listen` and keeps its state in `dir/witness`.
pub fn witness_args(listen: &str, dir: &Path) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = ["witness", "--listen", listen, "--dir"]
        .iter()
        .map(Into::into)
        .collect();
    args.push(dir.join("witness").into());
    args.extend(
        ["--node", "a", "--node", "b", "--key-file"]
            .iter()
            .map(Into::into),
    );
    args.push(dir.join("ha.key").into());
    args
}

/// `pacsd ha status --json` of the node configured by `config` (None: it did not answer).
pub fn ha_status(config: &Path) -> Option<pacsd::ha::driver::Status> {
    let out = Command::new(env!("CARGO_BIN_EXE_pacsd"))
        .args(["ha", "status", "--json", "--config"])
        .arg(config)
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}
