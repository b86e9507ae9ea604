//! The audit trail: security-relevant events as DICOM audit messages (PS3.15 A.5, the schema
//! IHE ATNA uses), one XML record per line, appended to a file and optionally forwarded to a
//! syslog collector (RFC 5424 over UDP, RFC 5426, or over TLS, RFC 5425).
//!
//! Emitting never waits: records go through a bounded queue to one writer thread, which
//! appends them and flushes whenever the queue runs dry. When the queue is full (the writer
//! cannot keep up with a flood) the record is counted, and the writer states the count in a
//! record of its own as soon as it catches up, so a gap is never silent.
//!
//! What is recorded (PS3.15 A.5.3; codes from DCMR CID 400-405):
//!
//! | event | EventID | EventTypeCode | action |
//! |---|---|---|---|
//! | node started, configuration loaded | 110100 Application Activity | 110120 Application Start | E |
//! | node stopped | 110100 Application Activity | 110121 Application Stop | E |
//! | association accepted / rejected, TLS handshake failed | 110114 User Authentication | 110122 Login | E |
//! | C-STORE received | 110104 DICOM Instances Transferred | | C (R when already stored) |
//! | C-FIND | 110112 Query | | E |
//! | C-MOVE / C-GET sent instances | 110106 Export | | R |
//! | a study, series or instance deleted | 110105 DICOM Study Deleted | | D |
//! | HA role change | 110100 Application Activity | PACSD HA-ROLE "HA role change" | E |
//! | forged or unauthenticated HA message refused | 110113 Security Alert | 110126 Node Authentication | E |

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use tracing::{error, warn};

/// Records waiting for the writer; beyond this they are counted as lost (see module doc).
const QUEUE: usize = 16_384;

/// PS3.15 A.5.1 EventOutcomeIndicator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success = 0,
    MinorFailure = 4,
    SeriousFailure = 8,
}

/// A coded value (`csd-code`, `codeSystemName`, `originalText`).
#[derive(Debug, Clone, Copy)]
pub struct Code(pub &'static str, pub &'static str, pub &'static str);

pub const APPLICATION_ACTIVITY: Code = Code("110100", "DCM", "Application Activity");
pub const APPLICATION_START: Code = Code("110120", "DCM", "Application Start");
pub const APPLICATION_STOP: Code = Code("110121", "DCM", "Application Stop");
pub const USER_AUTHENTICATION: Code = Code("110114", "DCM", "User Authentication");
pub const LOGIN: Code = Code("110122", "DCM", "Login");
pub const INSTANCES_TRANSFERRED: Code = Code("110104", "DCM", "DICOM Instances Transferred");
pub const QUERY: Code = Code("110112", "DCM", "Query");
pub const EXPORT: Code = Code("110106", "DCM", "Export");
pub const STUDY_DELETED: Code = Code("110105", "DCM", "DICOM Study Deleted");
pub const SECURITY_ALERT: Code = Code("110113", "DCM", "Security Alert");
pub const NODE_AUTHENTICATION: Code = Code("110126", "DCM", "Node Authentication");
pub const HA_ROLE: Code = Code("HA-ROLE", "99PACSD", "HA role change");

const SOURCE_ROLE: Code = Code("110153", "DCM", "Source Role ID");
const DESTINATION_ROLE: Code = Code("110152", "DCM", "Destination Role ID");
const APPLICATION_ROLE: Code = Code("110150", "DCM", "Application");

/// Who took part (PS3.15 A.5.2 ActiveParticipant).
#[derive(Debug, Clone)]
pub struct Participant {
    /// AE title (or node id for the HA plane).
    pub user_id: String,
    /// Network address, when known.
    pub address: Option<String>,
    pub requestor: bool,
    pub role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Source,
    Destination,
    Application,
}

/// What was acted on (PS3.15 A.5.2 ParticipantObjectIdentification).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Patient {
        id: String,
        name: Option<String>,
    },
    Study {
        uid: String,
    },
    /// A query: the SOP class it was made under; `description` names its keys.
    Query {
        sop_class: String,
        description: String,
    },
    /// Anything else (the configuration file, a peer node): type 2 System Object.
    System {
        id: String,
        description: String,
    },
}

/// The patient and study an operation touched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    pub patient_id: Option<String>,
    pub patient_name: Option<String>,
    pub studies: Vec<String>,
}

/// One audit record.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: Code,
    pub type_code: Option<Code>,
    /// C, R, U, D or E (PS3.15 A.5.1 EventActionCode).
    pub action: char,
    pub outcome: Outcome,
    /// Why it failed (or what happened), in words.
    pub description: Option<String>,
    pub participants: Vec<Participant>,
    pub objects: Vec<Object>,
}

impl Event {
    pub fn new(id: Code, type_code: Option<Code>, action: char, outcome: Outcome) -> Event {
        Event {
            id,
            type_code,
            action,
            outcome,
            description: None,
            participants: Vec::new(),
            objects: Vec::new(),
        }
    }

    pub fn describe(mut self, text: impl Into<String>) -> Event {
        self.description = Some(text.into());
        self
    }

    pub fn by(mut self, user_id: &str, address: Option<String>, role: Role) -> Event {
        self.participants.push(Participant {
            user_id: user_id.to_string(),
            address,
            requestor: true,
            role,
        });
        self
    }

    pub fn to(mut self, user_id: &str, address: Option<String>, role: Role) -> Event {
        self.participants.push(Participant {
            user_id: user_id.to_string(),
            address,
            requestor: false,
            role,
        });
        self
    }

    /// The patient and studies of `subject` as participant objects.
    pub fn about(mut self, subject: &Subject) -> Event {
        if let Some(id) = &subject.patient_id {
            self = self.on(Object::Patient {
                id: id.clone(),
                name: subject.patient_name.clone(),
            });
        }
        for uid in &subject.studies {
            self = self.on(Object::Study { uid: uid.clone() });
        }
        self
    }

    pub fn on(mut self, object: Object) -> Event {
        if !self.objects.contains(&object) {
            self.objects.push(object);
        }
        self
    }
}

/// XML-escape text for an attribute or element; control characters (which XML 1.0 cannot
/// carry and which would split a record over lines) become U+FFFD.
fn escape(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
}

fn code(out: &mut String, element: &str, c: Code) {
    let _ = write!(out, "<{element} csd-code=\"");
    escape(out, c.0);
    out.push_str("\" codeSystemName=\"");
    escape(out, c.1);
    out.push_str("\" originalText=\"");
    escape(out, c.2);
    out.push_str("\"/>");
}

fn attr(out: &mut String, name: &str, value: &str) {
    let _ = write!(out, " {name}=\"");
    escape(out, value);
    out.push('"');
}

pub use crate::calendar::timestamp;

/// Render one record as a single line of XML (PS3.15 A.5.1).
pub fn render(event: &Event, source_id: &str, when: std::time::SystemTime) -> String {
    let mut out = String::with_capacity(1024);
    out.push_str("<AuditMessage><EventIdentification");
    attr(&mut out, "EventActionCode", &event.action.to_string());
    attr(&mut out, "EventDateTime", &timestamp(when));
    attr(
        &mut out,
        "EventOutcomeIndicator",
        &(event.outcome as u8).to_string(),
    );
    out.push('>');
    code(&mut out, "EventID", event.id);
    if let Some(t) = event.type_code {
        code(&mut out, "EventTypeCode", t);
    }
    if let Some(d) = &event.description {
        out.push_str("<EventOutcomeDescription>");
        escape(&mut out, d);
        out.push_str("</EventOutcomeDescription>");
    }
    out.push_str("</EventIdentification>");
    for p in &event.participants {
        out.push_str("<ActiveParticipant");
        attr(&mut out, "UserID", &p.user_id);
        attr(
            &mut out,
            "UserIsRequestor",
            if p.requestor { "true" } else { "false" },
        );
        if let Some(a) = &p.address {
            attr(&mut out, "NetworkAccessPointID", a);
            // 2: IP address.
            attr(&mut out, "NetworkAccessPointTypeCode", "2");
        }
        out.push('>');
        let role = match p.role {
            Role::Source => SOURCE_ROLE,
            Role::Destination => DESTINATION_ROLE,
            Role::Application => APPLICATION_ROLE,
        };
        code(&mut out, "RoleIDCode", role);
        out.push_str("</ActiveParticipant>");
    }
    out.push_str("<AuditSourceIdentification");
    attr(&mut out, "AuditSourceID", source_id);
    out.push_str("><AuditSourceTypeCode csd-code=\"4\" codeSystemName=\"DCM\" originalText=\"Application Server Process\"/></AuditSourceIdentification>");
    for o in &event.objects {
        // (object id, type, role, id type code, name or description)
        let (id, ty, role, id_type, name): (&str, &str, &str, Code, Option<&str>) = match o {
            Object::Patient { id, name } => (
                id,
                "1",
                "1",
                Code("2", "RFC-3881", "Patient Number"),
                name.as_deref(),
            ),
            Object::Study { uid } => (
                uid,
                "2",
                "3",
                Code("110180", "DCM", "Study Instance UID"),
                None,
            ),
            Object::Query {
                sop_class,
                description,
            } => (
                sop_class,
                "2",
                "3",
                Code("110181", "DCM", "SOP Class UID"),
                Some(description),
            ),
            Object::System { id, description } => (
                id,
                "2",
                "4",
                Code("12", "RFC-3881", "URI"),
                Some(description),
            ),
        };
        out.push_str("<ParticipantObjectIdentification");
        attr(&mut out, "ParticipantObjectID", id);
        attr(&mut out, "ParticipantObjectTypeCode", ty);
        attr(&mut out, "ParticipantObjectTypeCodeRole", role);
        out.push('>');
        code(&mut out, "ParticipantObjectIDTypeCode", id_type);
        if let Some(n) = name {
            out.push_str("<ParticipantObjectName>");
            escape(&mut out, n);
            out.push_str("</ParticipantObjectName>");
        }
        out.push_str("</ParticipantObjectIdentification>");
    }
    out.push_str("</AuditMessage>");
    out
}

/// One record of the trail as the portal lists it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recent {
    pub when: String,
    /// EventID, and EventTypeCode when there is one ("User Authentication / Login").
    pub event: String,
    pub action: String,
    /// "success", "minor failure", "serious failure".
    pub outcome: String,
    pub description: String,
    /// Each participant as `user@address`.
    pub participants: Vec<String>,
}

/// The value of attribute `name` in `tag` (a piece of one of our records), unescaped.
fn attribute_of(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = tag[start..].find('"')?;
    Some(unescape(&tag[start..start + len]))
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// Read back one line written by `render` (None when it is not one).
pub fn parse_recent(line: &str) -> Option<Recent> {
    let ident = &line[line.find("<EventIdentification")?..line.find("</EventIdentification>")?];
    let element = |within: &str, name: &str| -> Option<String> {
        let at = within.find(&format!("<{name} "))?;
        let end = within[at..].find('>')? + at;
        attribute_of(&within[at..end], "originalText")
    };
    let mut event = element(ident, "EventID")?;
    if let Some(t) = element(ident, "EventTypeCode") {
        event = format!("{event} / {t}");
    }
    let head = &ident[..ident.find('>')?];
    let outcome = match attribute_of(head, "EventOutcomeIndicator").as_deref() {
        Some("0") => "success",
        Some("4") => "minor failure",
        Some("8") => "serious failure",
        _ => "failure",
    };
    let description = ident
        .find("<EventOutcomeDescription>")
        .and_then(|a| {
            let a = a + "<EventOutcomeDescription>".len();
            ident[a..]
                .find("</EventOutcomeDescription>")
                .map(|b| unescape(&ident[a..a + b]))
        })
        .unwrap_or_default();
    let participants = line
        .match_indices("<ActiveParticipant ")
        .filter_map(|(at, _)| {
            let tag = &line[at..at + line[at..].find('>')?];
            let user = attribute_of(tag, "UserID")?;
            Some(match attribute_of(tag, "NetworkAccessPointID") {
                Some(a) => format!("{user}@{a}"),
                None => user,
            })
        })
        .collect();
    Some(Recent {
        when: attribute_of(head, "EventDateTime").unwrap_or_default(),
        event,
        action: attribute_of(head, "EventActionCode").unwrap_or_default(),
        outcome: outcome.to_string(),
        description,
        participants,
    })
}

/// The last `n` records of the trail in `path`, newest first, from at most its last 256 KiB
/// (the file may be large; this is for a glance, not an audit).
pub fn recent(path: &Path, n: usize) -> std::io::Result<Vec<Recent>> {
    use std::io::{Read, Seek, SeekFrom};
    const TAIL: u64 = 256 << 10;
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let start = len.saturating_sub(TAIL);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::with_capacity((len - start) as usize);
    f.take(TAIL).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // cut in the middle
    }
    Ok(lines
        .iter()
        .rev()
        .filter_map(|l| parse_recent(l))
        .take(n)
        .collect())
}

/// Where records go besides the file.
#[derive(Debug, Clone)]
pub enum Forward {
    /// RFC 5426: one record per datagram.
    Udp(SocketAddr),
    /// RFC 5425: octet-counted records over TLS; the collector's certificate must name
    /// `server_name` and chain to the configuration's roots.
    Tls {
        addr: SocketAddr,
        server_name: rustls::pki_types::ServerName<'static>,
        config: Arc<rustls::ClientConfig>,
    },
}

/// How long the writer waits for a syslog collector, and how long after a failure it leaves
/// it alone (records are in the file meanwhile).
const COLLECTOR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
const COLLECTOR_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// The open side of a forwarder (on the writer thread).
enum Sink {
    Udp(UdpSocket),
    Tls {
        addr: SocketAddr,
        server_name: rustls::pki_types::ServerName<'static>,
        config: Arc<rustls::ClientConfig>,
        stream: Option<Box<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>>>,
        retry_at: std::time::Instant,
    },
}

impl Sink {
    fn send(&mut self, frame: &str) {
        match self {
            // A lost datagram is the collector's loss; the file keeps the record.
            Sink::Udp(s) => {
                let _ = s.send(frame.as_bytes());
            }
            Sink::Tls {
                addr,
                server_name,
                config,
                stream,
                retry_at,
            } => {
                if stream.is_none() && std::time::Instant::now() >= *retry_at {
                    match connect_collector(*addr, server_name, config) {
                        Ok(s) => *stream = Some(Box::new(s)),
                        Err(e) => {
                            warn!(collector = %addr, error = %e, "syslog collector unreachable; records stay in the file");
                            *retry_at = std::time::Instant::now() + COLLECTOR_RETRY;
                        }
                    }
                }
                if let Some(s) = stream {
                    // RFC 5425 4.3: MSG-LEN SP SYSLOG-MSG.
                    let framed = format!("{} {frame}", frame.len());
                    if let Err(e) = s.write_all(framed.as_bytes()).and_then(|_| s.flush()) {
                        warn!(collector = %addr, error = %e, "syslog collector lost; records stay in the file");
                        *stream = None;
                        *retry_at = std::time::Instant::now() + COLLECTOR_RETRY;
                    }
                }
            }
        }
    }
}

fn connect_collector(
    addr: SocketAddr,
    server_name: &rustls::pki_types::ServerName<'static>,
    config: &Arc<rustls::ClientConfig>,
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>> {
    let tcp = std::net::TcpStream::connect_timeout(&addr, COLLECTOR_TIMEOUT)?;
    tcp.set_nodelay(true)?;
    tcp.set_write_timeout(Some(COLLECTOR_TIMEOUT))?;
    tcp.set_read_timeout(Some(COLLECTOR_TIMEOUT))?;
    let conn = rustls::ClientConnection::new(config.clone(), server_name.clone())
        .map_err(std::io::Error::other)?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    // Complete the handshake now, so a refused certificate is reported here.
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// A cheap handle: every part of the node that has something to record holds one.
#[derive(Clone)]
pub struct Audit {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    tx: SyncSender<String>,
    source_id: String,
    lost: AtomicU64,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.inner.is_some() {
            "Audit(on)"
        } else {
            "Audit(off)"
        })
    }
}

impl Audit {
    /// An audit trail that records nothing (tools, unit tests).
    pub fn off() -> Audit {
        Audit { inner: None }
    }

    /// Open (create or append to) `path` and start the writer thread.
    pub fn open(path: &Path, source_id: &str, forward: Option<Forward>) -> std::io::Result<Audit> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let sink = match forward {
            Some(Forward::Udp(to)) => {
                let bind: SocketAddr = if to.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let s = UdpSocket::bind(bind)?;
                s.connect(to)?;
                Some(Sink::Udp(s))
            }
            Some(Forward::Tls {
                addr,
                server_name,
                config,
            }) => Some(Sink::Tls {
                addr,
                server_name,
                config,
                stream: None,
                retry_at: std::time::Instant::now(),
            }),
            None => None,
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let inner = Arc::new(Inner {
            tx,
            source_id: source_id.to_string(),
            lost: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&inner);
        let path = path.to_path_buf();
        std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || writer(rx, file, sink, path, weak))?;
        Ok(Audit { inner: Some(inner) })
    }

    pub fn record(&self, event: Event) {
        let Some(inner) = &self.inner else { return };
        let line = render(&event, &inner.source_id, std::time::SystemTime::now());
        match inner.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                inner.lost.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// RFC 5424 header for one record: facility 10 (security/authorization), severity notice (5)
/// or warning (4) for failures; MSGID names the event; the record is the message.
fn syslog_frame(line: &str) -> String {
    let severity = if line.contains("EventOutcomeIndicator=\"0\"") {
        5
    } else {
        4
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "-".into());
    format!(
        "<{}>1 {} {} pacsd {} DICOM+RFC3881 - \u{feff}{}",
        10 * 8 + severity,
        timestamp(std::time::SystemTime::now()),
        if host.is_empty() { "-" } else { &host },
        std::process::id(),
        line
    )
}

fn writer(
    rx: Receiver<String>,
    file: std::fs::File,
    mut sink: Option<Sink>,
    path: PathBuf,
    inner: std::sync::Weak<Inner>,
) {
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, file);
    let failed = std::cell::Cell::new(false);
    let report = |e: std::io::Error| {
        if !failed.replace(true) {
            error!(path = %path.display(), error = %e, "cannot write the audit trail");
        }
    };
    let mut put = |out: &mut std::io::BufWriter<std::fs::File>, line: &str| {
        if let Some(s) = &mut sink {
            s.send(&syslog_frame(line));
        }
        if let Err(e) = out
            .write_all(line.as_bytes())
            .and_then(|_| out.write_all(b"\n"))
        {
            report(e);
        }
    };
    while let Ok(first) = rx.recv() {
        put(&mut out, &first);
        while let Ok(next) = rx.try_recv() {
            put(&mut out, &next);
        }
        if let Some(i) = inner.upgrade() {
            let lost = i.lost.swap(0, Ordering::Relaxed);
            if lost > 0 {
                warn!(lost, "audit queue was full: records lost");
                let e = Event::new(
                    SECURITY_ALERT,
                    Some(Code("110129", "DCM", "Audit Recording Stopped")),
                    'E',
                    Outcome::SeriousFailure,
                )
                .describe(format!(
                    "{lost} audit records lost: the audit writer fell behind"
                ));
                put(
                    &mut out,
                    &render(&e, &i.source_id, std::time::SystemTime::now()),
                );
            }
        }
        if let Err(e) = out.flush() {
            report(e);
        }
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_796_223_600_123);
        assert_eq!(timestamp(t), "2026-12-02T15:00:00.123Z");
        assert_eq!(timestamp(std::time::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = std::time::UNIX_EPOCH + std::time::Duration::from_secs(951_782_400);
        assert_eq!(timestamp(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn a_record_is_one_line_with_everything_escaped() {
        let e = Event::new(INSTANCES_TRANSFERRED, None, 'C', Outcome::Success)
            .by("CT<1>", Some("10.0.0.5".into()), Role::Source)
            .to("PACSD", None, Role::Destination)
            .on(Object::Patient {
                id: "P&1".into(),
                name: Some("Doe^John\n\"x\"".into()),
            })
            .on(Object::Study {
                uid: "1.2.3".into(),
            });
        let line = render(&e, "PACSD", std::time::UNIX_EPOCH);
        assert!(!line.contains('\n'));
        assert!(line.starts_with("<AuditMessage><EventIdentification EventActionCode=\"C\" EventDateTime=\"1970-01-01T00:00:00.000Z\" EventOutcomeIndicator=\"0\"><EventID csd-code=\"110104\""));
        assert!(line.contains("UserID=\"CT&lt;1&gt;\""));
        assert!(line.contains("ParticipantObjectID=\"P&amp;1\""));
        assert!(line.contains(
            "<ParticipantObjectName>Doe^John\u{fffd}&quot;x&quot;</ParticipantObjectName>"
        ));
        assert!(line.contains("ParticipantObjectID=\"1.2.3\""));
        assert!(line.ends_with("</AuditMessage>"));
    }

    #[test]
    fn records_read_back_for_the_portal_newest_first() {
        let login = Event::new(USER_AUTHENTICATION, Some(LOGIN), 'E', Outcome::MinorFailure)
            .describe("portal sign-in <bad> & \"x\"")
            .by("chief", Some("10.0.0.9".into()), Role::Source);
        let line = render(&login, "PACSD", std::time::UNIX_EPOCH);
        assert_eq!(
            parse_recent(&line).unwrap(),
            Recent {
                when: "1970-01-01T00:00:00.000Z".into(),
                event: "User Authentication / Login".into(),
                action: "E".into(),
                outcome: "minor failure".into(),
                description: "portal sign-in <bad> & \"x\"".into(),
                participants: vec!["chief@10.0.0.9".into()],
            }
        );
        assert_eq!(parse_recent("not a record"), None);
        let stored = render(
            &Event::new(INSTANCES_TRANSFERRED, None, 'C', Outcome::Success).by(
                "CT1",
                None,
                Role::Source,
            ),
            "PACSD",
            std::time::UNIX_EPOCH,
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        // A large file: only its tail is read, and a cut first line is skipped.
        let mut text = String::from("<AuditMessage>half a line\n");
        for _ in 0..2000 {
            text.push_str(&line);
            text.push('\n');
        }
        text.push_str(&stored);
        text.push('\n');
        std::fs::write(&path, text).unwrap();
        let got = recent(&path, 3).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].event, "DICOM Instances Transferred");
        assert_eq!(got[0].participants, ["CT1"]);
        assert_eq!(got[1].outcome, "minor failure");
    }

    #[test]
    fn records_reach_the_file_and_a_udp_collector() {
        let dir = tempfile::tempdir().unwrap();
        let collector = UdpSocket::bind("127.0.0.1:0").unwrap();
        collector
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let path = dir.path().join("audit.log");
        let audit = Audit::open(
            &path,
            "PACSD",
            Some(Forward::Udp(collector.local_addr().unwrap())),
        )
        .unwrap();
        audit.record(
            Event::new(
                APPLICATION_ACTIVITY,
                Some(APPLICATION_START),
                'E',
                Outcome::Success,
            )
            .by("PACSD", None, Role::Application),
        );
        let mut buf = [0u8; 4096];
        let n = collector.recv(&mut buf).unwrap();
        let datagram = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(datagram.starts_with("<85>1 "), "{datagram}");
        assert!(datagram.contains(" DICOM+RFC3881 - \u{feff}<AuditMessage>"));
        drop(audit);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&path).unwrap();
            if text.lines().count() == 1 {
                assert!(text.contains("csd-code=\"110120\""));
                break;
            }
            assert!(std::time::Instant::now() < deadline, "record never written");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
