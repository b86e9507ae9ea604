//! The role state machine of an HA pair: pure logic with an explicit clock, every transition
//! unit-tested. The driver (`ha::node`) feeds it heartbeats, arbiter answers and ticks, and
//! carries out the actions it returns.
//!
//! Safety rests on three rules (DESIGN.md, High availability):
//! 1. Epochs are fencing tokens granted once each by the arbiter; a node that sees a higher
//!    epoch than its own stops serving at once.
//! 2. A paired primary's lease runs `lease` past the *send* time of its own latest heartbeat
//!    that the standby echoed back; the standby claims only `lease + margin` after it last
//!    *received* a heartbeat from the primary. Every echoed heartbeat was sent before the
//!    standby received it, so the lease has always run out before the standby claims.
//! 3. A solo primary (no standby to vouch for it) renews its lease by checking at the arbiter
//!    that no later epoch exists: the lease runs `lease` past the start of the last check that
//!    found none. Every term starts solo; once the standby has caught up, the primary marks its
//!    term paired at the arbiter and stops renewing there (a paired term never goes solo
//!    again: losing the standby means claiming a new epoch). A node that supersedes a term
//!    not marked paired waits `lease` after its claim before it serves, by which time every
//!    arbiter lease of that term has run out. (A standby hears the primary after the mark, so
//!    it claims at least `lease + margin` after the last renewal of a paired term.)

use std::time::{Duration, Instant};

/// Timing of the pair (all from `[ha]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub heartbeat: Duration,
    pub lease: Duration,
    pub margin: Duration,
}

impl Timing {
    /// The timing `[ha]` configures.
    pub fn of(ha: &crate::config::HaConfig) -> Timing {
        Timing {
            heartbeat: Duration::from_millis(ha.heartbeat_ms),
            lease: Duration::from_millis(ha.lease_ms),
            margin: Duration::from_millis(ha.margin_ms),
        }
    }

    /// How long a standby waits without hearing the primary before it claims.
    pub fn dead_after(&self) -> Duration {
        self.lease + self.margin
    }
}

/// What a node is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Applies index records from the primary, watches its heartbeat.
    Standby,
    /// Claimed `epoch` at the arbiter and waits for the answer (serves nothing).
    Claiming { solo_before: bool },
    /// Holds `epoch`. `solo`: writes do not wait for a standby; the lease comes from the
    /// arbiter. `serve_from`: no write is acknowledged before this instant (rule 3).
    Primary { solo: bool, serve_from: Instant },
}

/// Inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Tick,
    /// A heartbeat from the peer: its role and epoch, and the send time of our own latest
    /// heartbeat it had received (None if none yet).
    Heard {
        peer_primary: bool,
        peer_epoch: u64,
        echoed: Option<Instant>,
    },
    /// The arbiter answered a claim of `epoch`. `latest` is the newest epoch it knows, and
    /// `previous_solo` whether the term before `epoch` was never marked paired.
    Claimed {
        epoch: u64,
        granted: bool,
        latest: u64,
        previous_solo: bool,
    },
    /// A solo primary's lease check (started at `started`) found `latest` as the newest epoch.
    Checked {
        started: Instant,
        latest: u64,
    },
    /// What the arbiter says of the term of `epoch`: marked paired, and its holder's latest
    /// renewal marker (a solo holder rewrites it at every lease check).
    Probed {
        epoch: u64,
        paired: bool,
        marker: Option<String>,
    },
    /// The replication link reports the standby has every record (a solo primary pairs).
    StandbyCaughtUp,
    /// The arbiter recorded our term as paired.
    Paired,
    /// The replication link lost the standby.
    StandbyLost,
    /// Planned switchover: the primary hands over (it stops serving first).
    HandOver,
    /// The peer handed over to us in `epoch` (it stopped serving): claim the next one now.
    TakeOver {
        peer_epoch: u64,
    },
}

/// Outputs, carried out by the driver in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Ask the arbiter for `epoch` (the term starts solo, rule 3).
    Claim { epoch: u64 },
    /// Record our term as paired at the arbiter, then feed `Event::Paired`.
    MarkPaired,
    /// Start serving as primary (claim the service IP, listen).
    Promote,
    /// Stop serving at once (release the service IP), then run as standby.
    Demote,
    /// Check at the arbiter that no epoch after ours exists, and renew our marker there (solo
    /// lease renewal).
    CheckLease,
    /// Ask the arbiter about the term of `epoch` before claiming the next one (a silent solo
    /// primary may only be cut off from us, not dead: its marker tells).
    Probe { epoch: u64 },
    /// Tell the peer to take over now (planned switchover); comes before the `Demote`.
    SendHandOver,
}

/// The state of one node.
#[derive(Debug, Clone)]
pub struct RoleState {
    pub timing: Timing,
    pub role: Role,
    /// Our epoch: the one we hold as primary, or the newest we know of.
    pub epoch: u64,
    /// Writes may be acknowledged before this instant (primary only).
    pub lease_until: Option<Instant>,
    /// When we last heard a heartbeat from the peer while it was primary (standby) or at all.
    pub last_heard: Option<Instant>,
    /// A lease check at the arbiter is under way (solo primary).
    pub checking: bool,
    /// When the last lease check was started.
    pub last_check: Option<Instant>,
    /// A probe of the current term is under way (standby).
    pub probing: bool,
    /// The first probe that saw the current term's marker as it is: (epoch, marker, when).
    pub last_probe: Option<(u64, Option<String>, Instant)>,
    /// The operator put this node in maintenance: it never becomes primary.
    pub maintenance: bool,
}

impl RoleState {
    /// A node starts as standby with the newest epoch it knows (no preemption: a recovered
    /// primary rejoins as standby). `now` starts the silence timer, so a fresh pair waits
    /// `dead_after` for a primary before one of them claims.
    pub fn new(timing: Timing, epoch: u64, now: Instant) -> RoleState {
        RoleState {
            timing,
            role: Role::Standby,
            epoch,
            lease_until: None,
            last_heard: Some(now),
            checking: false,
            last_check: None,
            probing: false,
            last_probe: None,
            maintenance: false,
        }
    }

    pub fn is_primary(&self) -> bool {
        matches!(self.role, Role::Primary { .. })
    }

    /// May a write be acknowledged at `now`? Only by a primary inside its lease and past its
    /// serve-from instant.
    pub fn may_acknowledge(&self, now: Instant) -> bool {
        match self.role {
            Role::Primary { serve_from, .. } => {
                now >= serve_from && self.lease_until.is_some_and(|l| now < l)
            }
            _ => false,
        }
    }

    /// Whether writes wait for the standby's acknowledgement.
    pub fn is_solo(&self) -> bool {
        matches!(self.role, Role::Primary { solo: true, .. })
    }

    /// The epoch to claim next, in checked arithmetic: at `u64::MAX` there is none, and
    /// claiming `u64::MAX` again is refused by the arbiter (it grants only latest + 1), so the
    /// node stays out instead of wrapping to epoch 0 and serving beside the real primary.
    fn next_epoch(&self) -> u64 {
        self.epoch.checked_add(1).unwrap_or(self.epoch)
    }

    /// Feed one event; the actions to carry out, in order.
    pub fn step(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let t = self.timing;
        match (self.role, event) {
            // A higher epoch anywhere ends our term at once (rule 1).
            (Role::Primary { .. }, Event::Heard { peer_epoch, .. }) if peer_epoch > self.epoch => {
                self.epoch = peer_epoch;
                self.demote(now)
            }
            (Role::Primary { .. }, Event::Checked { latest, .. }) if latest > self.epoch => {
                self.checking = false;
                self.epoch = latest;
                self.demote(now)
            }

            // Standby.
            (
                Role::Standby,
                Event::Heard {
                    peer_primary,
                    peer_epoch,
                    ..
                },
            ) => {
                self.epoch = self.epoch.max(peer_epoch);
                if peer_primary && peer_epoch >= self.epoch {
                    self.last_heard = Some(now);
                }
                Vec::new()
            }
            // In maintenance: never claim (the silence is noted, nothing more).
            (Role::Standby, Event::Tick | Event::Probed { .. } | Event::TakeOver { .. })
                if self.maintenance =>
            {
                self.probing = false;
                Vec::new()
            }
            (Role::Standby, Event::Tick) => {
                let silent = self.last_heard.is_none_or(|h| now >= h + t.dead_after());
                let due = self
                    .last_probe
                    .as_ref()
                    .is_none_or(|(e, _, at)| *e != self.epoch || now >= *at + t.lease);
                if silent && due && !self.probing {
                    self.probing = true;
                    vec![Action::Probe { epoch: self.epoch }]
                } else {
                    Vec::new()
                }
            }
            (
                Role::Standby,
                Event::Probed {
                    epoch,
                    paired,
                    marker,
                },
            ) => {
                self.probing = false;
                let silent = self.last_heard.is_none_or(|h| now >= h + t.dead_after());
                if epoch != self.epoch || !silent {
                    return Vec::new();
                }
                // A paired term's primary lived on our heartbeats: silence is enough. A solo
                // term's primary renews at the arbiter: claim only once its marker has stood
                // still for a whole lease (it is gone, not merely cut off from us).
                let stood_still = match &self.last_probe {
                    Some((e, m, at)) if *e == epoch && *m == marker => {
                        if now >= *at + t.lease {
                            true
                        } else {
                            return Vec::new();
                        }
                    }
                    _ => false,
                };
                if epoch == 0 || paired || stood_still {
                    self.last_probe = None;
                    self.role = Role::Claiming { solo_before: false };
                    vec![Action::Claim {
                        epoch: self.next_epoch(),
                    }]
                } else {
                    self.last_probe = Some((epoch, marker, now));
                    Vec::new()
                }
            }
            (Role::Standby, Event::TakeOver { peer_epoch }) => {
                self.epoch = self.epoch.max(peer_epoch);
                self.role = Role::Claiming { solo_before: false };
                vec![Action::Claim {
                    epoch: self.next_epoch(),
                }]
            }

            // Claiming: the arbiter decides.
            (
                Role::Claiming { solo_before },
                Event::Claimed {
                    epoch,
                    granted,
                    latest,
                    previous_solo,
                },
            ) => {
                if granted && epoch > self.epoch {
                    let was_primary = solo_before;
                    self.epoch = epoch;
                    // Superseding a solo term (not our own): its lease may still run (rule 3).
                    let wait = if previous_solo && !was_primary {
                        t.lease
                    } else {
                        Duration::ZERO
                    };
                    self.role = Role::Primary {
                        solo: true,
                        serve_from: now + wait,
                    };
                    // Our own lease: we hold the newest epoch as of the claim.
                    self.lease_until = Some(now + t.lease);
                    self.last_check = Some(now);
                    self.checking = false;
                    vec![Action::Promote]
                } else {
                    self.epoch = self.epoch.max(latest);
                    self.demote(now)
                }
            }
            (Role::Claiming { .. }, Event::Heard { peer_epoch, .. }) => {
                self.epoch = self.epoch.max(peer_epoch);
                Vec::new()
            }

            // Primary.
            (Role::Primary { solo: false, .. }, Event::Heard { echoed, .. }) => {
                self.last_heard = Some(now);
                if let Some(sent) = echoed {
                    let l = sent + t.lease;
                    self.lease_until = Some(self.lease_until.map_or(l, |old| old.max(l)));
                }
                Vec::new()
            }
            (Role::Primary { solo: true, .. }, Event::Heard { .. }) => {
                self.last_heard = Some(now);
                Vec::new()
            }
            (
                Role::Primary {
                    solo: false,
                    serve_from,
                },
                Event::Tick,
            ) => {
                // The standby stopped vouching for us: our lease runs out. Go on alone only
                // with a new epoch from the arbiter (rule 1): claim it now, before the lease
                // ends, so that a standby that is merely cut off loses the race.
                let ends = self.lease_until.unwrap_or(now);
                if now + t.heartbeat * 2 >= ends {
                    let _ = serve_from;
                    self.role = Role::Claiming { solo_before: true };
                    vec![Action::Claim {
                        epoch: self.next_epoch(),
                    }]
                } else {
                    Vec::new()
                }
            }
            (Role::Primary { solo: false, .. }, Event::StandbyLost) => {
                self.role = Role::Claiming { solo_before: true };
                vec![Action::Claim {
                    epoch: self.next_epoch(),
                }]
            }
            (Role::Primary { solo: true, .. }, Event::Tick) => {
                let due = self.last_check.is_none_or(|c| now >= c + t.lease / 4);
                if due && !self.checking {
                    self.checking = true;
                    vec![Action::CheckLease]
                } else {
                    Vec::new()
                }
            }
            (Role::Primary { solo: true, .. }, Event::Checked { started, latest }) => {
                self.checking = false;
                if latest == self.epoch {
                    self.last_check = Some(started);
                    let l = started + t.lease;
                    self.lease_until = Some(self.lease_until.map_or(l, |old| old.max(l)));
                }
                Vec::new()
            }
            (Role::Primary { solo: true, .. }, Event::StandbyCaughtUp) => {
                // The arbiter lease stands until the mark is recorded.
                vec![Action::MarkPaired]
            }
            (
                Role::Primary {
                    solo: true,
                    serve_from,
                },
                Event::Paired,
            ) => {
                // Writes wait for the standby from now on, and the lease comes from its
                // heartbeats (what the last arbiter check granted still counts).
                self.role = Role::Primary {
                    solo: false,
                    serve_from,
                };
                self.checking = false;
                Vec::new()
            }
            (Role::Primary { .. }, Event::HandOver) => {
                // Stop acknowledging now; the peer claims the next epoch.
                // Nothing is acknowledged from here on, so the handover may go out before the
                // service is torn down (it follows every record already shipped).
                self.lease_until = Some(now);
                self.role = Role::Standby;
                self.last_heard = Some(now);
                vec![Action::SendHandOver, Action::Demote]
            }

            _ => Vec::new(),
        }
    }

    fn demote(&mut self, now: Instant) -> Vec<Action> {
        // A primary claiming its next epoch still has its service up.
        let was_serving = matches!(
            self.role,
            Role::Primary { .. } | Role::Claiming { solo_before: true }
        );
        self.role = Role::Standby;
        self.lease_until = None;
        self.checking = false;
        // A fresh silence timer: the new primary's heartbeats are expected now.
        self.last_heard = Some(now);
        if was_serving {
            vec![Action::Demote]
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        heartbeat: Duration::from_millis(100),
        lease: Duration::from_millis(600),
        margin: Duration::from_millis(200),
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn heard(primary: bool, epoch: u64, echoed: Option<Instant>) -> Event {
        Event::Heard {
            peer_primary: primary,
            peer_epoch: epoch,
            echoed,
        }
    }

    fn granted(epoch: u64, previous_solo: bool) -> Event {
        Event::Claimed {
            epoch,
            granted: true,
            latest: epoch,
            previous_solo,
        }
    }

    fn pair(p: &mut RoleState, now: Instant) {
        assert_eq!(
            p.step(Event::StandbyCaughtUp, now),
            vec![Action::MarkPaired]
        );
        p.step(Event::Paired, now);
        assert!(!p.is_solo());
    }

    fn probed(epoch: u64, paired: bool, marker: Option<&str>) -> Event {
        Event::Probed {
            epoch,
            paired,
            marker: marker.map(String::from),
        }
    }

    /// A silent standby probes the current term; the answer says it is paired: it claims.
    fn claim_after_silence(s: &mut RoleState, now: Instant) {
        let epoch = s.epoch;
        assert_eq!(s.step(Event::Tick, now), vec![Action::Probe { epoch }]);
        assert_eq!(
            s.step(probed(epoch, true, None), now),
            vec![Action::Claim { epoch: epoch + 1 }]
        );
    }

    /// A standby that became primary alone in epoch 1 at `t0`.
    fn primary(t0: Instant) -> RoleState {
        let mut s = RoleState::new(T, 0, t0);
        claim_after_silence(&mut s, t0 + T.dead_after());
        assert_eq!(
            s.step(granted(1, false), t0 + T.dead_after()),
            vec![Action::Promote]
        );
        s
    }

    #[test]
    fn a_standby_claims_only_after_lease_plus_margin_of_silence() {
        let t0 = Instant::now();
        let mut s = RoleState::new(T, 3, t0);
        s.step(heard(true, 3, None), t0 + ms(100));
        assert!(
            s.step(Event::Tick, t0 + ms(100) + T.dead_after() - ms(1))
                .is_empty()
        );
        claim_after_silence(&mut s, t0 + ms(100) + T.dead_after());
        assert!(matches!(s.role, Role::Claiming { .. }));
        assert!(!s.may_acknowledge(t0 + ms(900)));
    }

    #[test]
    fn heartbeats_of_a_standby_peer_do_not_keep_a_standby_waiting() {
        let t0 = Instant::now();
        let mut s = RoleState::new(T, 0, t0);
        s.step(heard(false, 0, None), t0 + ms(700));
        claim_after_silence(&mut s, t0 + T.dead_after());
    }

    #[test]
    fn a_granted_claim_promotes_and_a_denied_one_waits_for_the_winner() {
        let t0 = Instant::now();
        let p = primary(t0);
        assert_eq!(p.epoch, 1);
        assert!(p.may_acknowledge(t0 + T.dead_after()));
        assert!(p.is_solo());

        let mut s = RoleState::new(T, 0, t0);
        claim_after_silence(&mut s, t0 + T.dead_after());
        let out = s.step(
            Event::Claimed {
                epoch: 1,
                granted: false,
                latest: 1,
                previous_solo: true,
            },
            t0 + T.dead_after(),
        );
        assert!(out.is_empty(), "was not serving: nothing to demote");
        assert_eq!((s.role, s.epoch), (Role::Standby, 1));
        // It waits a whole new silence period before it probes epoch 1.
        assert!(s.step(Event::Tick, t0 + T.dead_after() + ms(10)).is_empty());
        let later = t0 + T.dead_after() * 2;
        assert_eq!(s.step(Event::Tick, later), vec![Action::Probe { epoch: 1 }]);
        // Epoch 1 is solo and its holder keeps renewing: no claim, however long it lasts.
        assert!(s.step(probed(1, false, Some("m1")), later).is_empty());
        assert!(
            s.step(Event::Tick, later + ms(100)).is_empty(),
            "next probe after a lease"
        );
        assert_eq!(
            s.step(Event::Tick, later + T.lease),
            vec![Action::Probe { epoch: 1 }]
        );
        assert!(
            s.step(probed(1, false, Some("m2")), later + T.lease)
                .is_empty()
        );
        assert_eq!(
            s.step(Event::Tick, later + T.lease * 2),
            vec![Action::Probe { epoch: 1 }]
        );
        assert!(
            s.step(probed(1, false, Some("m3")), later + T.lease * 2)
                .is_empty()
        );
        // The marker stands still for a lease: the holder is gone; claim.
        assert_eq!(
            s.step(Event::Tick, later + T.lease * 3),
            vec![Action::Probe { epoch: 1 }]
        );
        assert_eq!(
            s.step(probed(1, false, Some("m3")), later + T.lease * 3),
            vec![Action::Claim { epoch: 2 }]
        );
    }

    #[test]
    fn a_probe_answer_for_an_old_epoch_or_after_the_primary_spoke_is_ignored() {
        let t0 = Instant::now();
        let mut s = RoleState::new(T, 2, t0);
        let now = t0 + T.dead_after();
        assert_eq!(s.step(Event::Tick, now), vec![Action::Probe { epoch: 2 }]);
        s.step(heard(true, 3, None), now + ms(1));
        assert!(s.step(probed(2, true, None), now + ms(2)).is_empty());
        assert_eq!(s.role, Role::Standby);
    }

    #[test]
    fn superseding_a_solo_term_waits_a_lease_before_serving() {
        let t0 = Instant::now();
        let mut s = RoleState::new(T, 4, t0);
        claim_after_silence(&mut s, t0 + T.dead_after());
        s.step(granted(5, true), t0 + T.dead_after());
        let claimed = t0 + T.dead_after();
        assert!(s.is_primary());
        assert!(!s.may_acknowledge(claimed + T.lease - ms(1)));
        // By then its own arbiter lease must have been renewed.
        s.step(
            Event::Checked {
                started: claimed + T.lease - ms(50),
                latest: 5,
            },
            claimed + T.lease - ms(40),
        );
        assert!(s.may_acknowledge(claimed + T.lease));
    }

    #[test]
    fn a_paired_primary_lease_follows_its_echoed_heartbeats() {
        let t0 = Instant::now();
        let mut p = primary(t0);
        assert_eq!(
            p.step(Event::StandbyCaughtUp, t0 + ms(850)),
            vec![Action::MarkPaired]
        );
        assert!(p.is_solo(), "solo until the arbiter has the mark");
        p.step(Event::Paired, t0 + ms(850));
        assert!(!p.is_solo());
        // The standby echoes the heartbeat we sent at 900 ms: lease to 1500 ms.
        p.step(heard(false, 1, Some(t0 + ms(900))), t0 + ms(950));
        assert!(p.may_acknowledge(t0 + ms(1499)));
        // Echoes keep it going.
        p.step(heard(false, 1, Some(t0 + ms(1000))), t0 + ms(1050));
        assert!(p.may_acknowledge(t0 + ms(1599)));
        assert!(!p.may_acknowledge(t0 + ms(1600)));
    }

    #[test]
    fn a_paired_primary_whose_standby_falls_silent_claims_before_its_lease_ends() {
        let t0 = Instant::now();
        let mut p = primary(t0);
        pair(&mut p, t0 + ms(850));
        p.step(heard(false, 1, Some(t0 + ms(900))), t0 + ms(950));
        assert!(p.step(Event::Tick, t0 + ms(1200)).is_empty());
        let out = p.step(Event::Tick, t0 + ms(1300));
        assert_eq!(out, vec![Action::Claim { epoch: 2 }]);
        assert!(
            !p.may_acknowledge(t0 + ms(1300)),
            "no writes while claiming"
        );
        // Granted: it goes on alone at once (it superseded its own term).
        assert_eq!(
            p.step(granted(2, false), t0 + ms(1310)),
            vec![Action::Promote]
        );
        assert!(p.may_acknowledge(t0 + ms(1310)) && p.is_solo());
        // Denied (the standby won): it stops serving.
        let mut q = primary(t0);
        pair(&mut q, t0 + ms(850));
        q.step(Event::StandbyLost, t0 + ms(900));
        let out = q.step(
            Event::Claimed {
                epoch: 2,
                granted: false,
                latest: 2,
                previous_solo: false,
            },
            t0 + ms(910),
        );
        assert_eq!(out, vec![Action::Demote]);
        assert_eq!((q.role, q.epoch), (Role::Standby, 2));
    }

    #[test]
    fn a_solo_primary_renews_its_lease_at_the_arbiter_and_stops_at_a_newer_epoch() {
        let t0 = Instant::now();
        let start = t0 + T.dead_after();
        let mut p = primary(t0);
        assert!(
            p.step(Event::Tick, start + ms(100)).is_empty(),
            "check not due yet"
        );
        assert_eq!(
            p.step(Event::Tick, start + ms(150)),
            vec![Action::CheckLease]
        );
        assert!(
            p.step(Event::Tick, start + ms(200)).is_empty(),
            "one check at a time"
        );
        p.step(
            Event::Checked {
                started: start + ms(150),
                latest: 1,
            },
            start + ms(160),
        );
        assert!(p.may_acknowledge(start + ms(749)));
        assert!(!p.may_acknowledge(start + ms(750)));
        // Without renewal the lease lapses; with a newer epoch it demotes.
        assert_eq!(
            p.step(Event::Tick, start + ms(300)),
            vec![Action::CheckLease]
        );
        let out = p.step(
            Event::Checked {
                started: start + ms(300),
                latest: 2,
            },
            start + ms(310),
        );
        assert_eq!(out, vec![Action::Demote]);
        assert!(!p.may_acknowledge(start + ms(310)));
    }

    #[test]
    fn a_higher_epoch_in_a_heartbeat_demotes_a_primary_at_once() {
        let t0 = Instant::now();
        let mut p = primary(t0);
        let out = p.step(heard(true, 7, None), t0 + ms(900));
        assert_eq!(out, vec![Action::Demote]);
        assert_eq!((p.role, p.epoch), (Role::Standby, 7));
        // The same epoch does not.
        let mut q = primary(t0);
        assert!(q.step(heard(true, 1, None), t0 + ms(900)).is_empty());
        assert!(q.is_primary());
    }

    #[test]
    fn a_paused_primary_cannot_acknowledge_after_it_resumes() {
        // SIGSTOP: no events for 5 s. On resume, the lease has run out before any event is
        // processed, so nothing can be acknowledged; the next heartbeat demotes it.
        let t0 = Instant::now();
        let mut p = primary(t0);
        pair(&mut p, t0 + ms(850));
        p.step(heard(false, 1, Some(t0 + ms(900))), t0 + ms(950));
        let resumed = t0 + ms(6000);
        assert!(!p.may_acknowledge(resumed));
        assert_eq!(p.step(heard(true, 2, None), resumed), vec![Action::Demote]);
    }

    #[test]
    fn planned_switchover_hands_over_and_the_peer_claims_at_once() {
        let t0 = Instant::now();
        let mut p = primary(t0);
        pair(&mut p, t0 + ms(850));
        p.step(heard(false, 1, Some(t0 + ms(900))), t0 + ms(950));
        let out = p.step(Event::HandOver, t0 + ms(1000));
        assert_eq!(out, vec![Action::SendHandOver, Action::Demote]);
        assert!(!p.may_acknowledge(t0 + ms(1000)));

        let mut s = RoleState::new(T, 1, t0);
        s.step(heard(true, 1, None), t0 + ms(990));
        let out = s.step(Event::TakeOver { peer_epoch: 1 }, t0 + ms(1001));
        assert_eq!(out, vec![Action::Claim { epoch: 2 }]);
        assert_eq!(
            s.step(granted(2, false), t0 + ms(1005)),
            vec![Action::Promote]
        );
        assert!(s.may_acknowledge(t0 + ms(1005)), "no wait after a handover");
    }

    #[test]
    fn a_standby_in_maintenance_never_claims_however_long_the_silence() {
        let t0 = Instant::now();
        let mut s = RoleState::new(T, 3, t0);
        s.maintenance = true;
        s.step(heard(true, 3, None), t0 + ms(100));
        for n in 1..=50 {
            assert!(s.step(Event::Tick, t0 + T.dead_after() * n).is_empty());
        }
        // A probe answered after maintenance began claims nothing either.
        assert!(s.step(probed(3, true, None), t0 + ms(60_000)).is_empty());
        assert_eq!(s.role, Role::Standby);
        // Out of maintenance, the silence counts as before.
        s.maintenance = false;
        claim_after_silence(&mut s, t0 + ms(61_000));
    }

    #[test]
    fn a_standby_in_maintenance_refuses_a_hand_over_and_a_primary_in_maintenance_serves_on() {
        let t0 = Instant::now();
        let mut s = RoleState::new(T, 1, t0);
        s.maintenance = true;
        s.step(heard(true, 1, None), t0 + ms(100));
        assert!(
            s.step(Event::TakeOver { peer_epoch: 1 }, t0 + ms(200))
                .is_empty()
        );
        assert_eq!(s.role, Role::Standby);

        let mut p = primary(t0);
        pair(&mut p, t0 + ms(850));
        p.maintenance = true;
        p.step(heard(false, 1, Some(t0 + ms(900))), t0 + ms(950));
        assert!(p.step(Event::Tick, t0 + ms(1000)).is_empty());
        assert!(p.may_acknowledge(t0 + ms(1000)));
    }
}
