//! Signs of life between the ranks of a job, on a side channel of their own (UDP), so
//! that a rank stuck in a collective can say which of the others has not arrived.
//!
//! An MPI collective does not say who is missing, and while a rank waits in one its MPI
//! calls cannot ask (ranks run at `MPI_THREAD_SERIALIZED`). So each rank's stall watcher
//! — a thread that makes no MPI call — sends every other rank a small note a few times a
//! second: its step and whether, and for whom, it waits in MPI. It keeps the last note
//! it heard from each. A rank that is stopped, swapping or cut off sends none; a rank
//! that is alive but has not reached the collective says so (PyTorch's
//! `monitored_barrier` and Horovod's stall inspector answer the same question).
//!
//! The addresses: every rank binds one UDP port on all its IPv4 interfaces and tells the
//! others (over MPI, at start) its port and every address it has; a note goes to each
//! address of a peer until one of the peer's own notes shows which address it sends from,
//! and then there only. A note carries a per-job token that only the ranks know (drawn by
//! rank 0 and sent over MPI, never on a command line): anything else is dropped. Where
//! a firewall drops the notes, nothing is heard and the stall report says so.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A rank's silence longer than this (its notes come every watcher tick, 0.2 s) means
/// it is not running: stopped, swapping, or cut off.
pub const QUIET_AFTER: Duration = Duration::from_secs(2);

/// What a rank tells the others at start: where its notes can reach it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Card {
    pub host: String,
    pub addrs: Vec<Ipv4Addr>,
    /// 0 when this rank could not bind a port (it then hears nothing).
    pub port: u16,
}

/// What a rank was doing when it sent its last note.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doing {
    /// Not in a blocking MPI call: computing (or held by a person).
    Computing,
    /// Waiting for this rank's message.
    WaitingFor(usize),
    /// Waiting for whichever rank sends first (a parameter server).
    WaitingForAny,
    /// In a collective of every rank.
    InCollective,
}

impl Doing {
    fn code(self) -> i64 {
        match self {
            Doing::Computing => -1,
            Doing::WaitingForAny => -2,
            Doing::InCollective => -3,
            Doing::WaitingFor(r) => r as i64,
        }
    }
    fn from_code(code: i64) -> Option<Doing> {
        match code {
            -1 => Some(Doing::Computing),
            -2 => Some(Doing::WaitingForAny),
            -3 => Some(Doing::InCollective),
            r if r >= 0 => Some(Doing::WaitingFor(r as usize)),
            _ => None,
        }
    }
}

/// The last note heard from a rank.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Note {
    pub heard: Instant,
    pub step: u64,
    pub doing: Doing,
}

/// What this rank knows of another one.
#[derive(Debug, Clone)]
pub struct Peer {
    pub host: String,
    /// Where notes go: every address the peer gave until it is heard from, then the
    /// one it sends from.
    send_to: Vec<SocketAddr>,
    learned: bool,
    pub last: Option<Note>,
    /// Its last silence longer than [`QUIET_AFTER`]: when it ended, how long it was,
    /// and the step the rank was at (a stopped rank woken by the launcher's SIGCONT as
    /// it ends the job is alive again when the others report).
    gap: Option<(Instant, Duration, u64)>,
}

/// One rank's side of the side channel.
pub struct Board {
    socket: Option<UdpSocket>,
    token: u64,
    me: usize,
    pub peers: Vec<Peer>,
}

/// A note on the wire: token, rank, step, what the rank does (little-endian).
const NOTE_BYTES: usize = 8 + 4 + 8 + 8;

/// Binds this rank's port on every IPv4 interface, and says how to reach it. A rank
/// that cannot bind one still takes part (it sends, and hears nothing).
pub fn bind(host: &str) -> (Option<UdpSocket>, Card) {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| s.set_nonblocking(true).map(|()| s))
        .ok();
    let port = socket
        .as_ref()
        .and_then(|s| s.local_addr().ok())
        .map_or(0, |a| a.port());
    let card = Card {
        host: host.to_string(),
        addrs: own_addresses(),
        port,
    };
    (socket, card)
}

impl Board {
    /// The board of rank `me`, from every rank's card (in rank order) and the job's token.
    pub fn new(socket: Option<UdpSocket>, me: usize, cards: &[Card], token: u64) -> Board {
        let peers = cards
            .iter()
            .map(|c| Peer {
                host: c.host.clone(),
                send_to: if c.port == 0 {
                    Vec::new()
                } else {
                    c.addrs
                        .iter()
                        .map(|&ip| SocketAddr::V4(SocketAddrV4::new(ip, c.port)))
                        .collect()
                },
                learned: false,
                last: None,
                gap: None,
            })
            .collect();
        Board {
            socket,
            token,
            me,
            peers,
        }
    }

    /// Sends every other rank a note: this rank is at `step`, doing `doing`.
    pub fn beat(&self, step: u64, doing: Doing) {
        let Some(socket) = &self.socket else { return };
        let mut note = [0u8; NOTE_BYTES];
        note[0..8].copy_from_slice(&self.token.to_le_bytes());
        note[8..12].copy_from_slice(&(self.me as u32).to_le_bytes());
        note[12..20].copy_from_slice(&step.to_le_bytes());
        note[20..28].copy_from_slice(&doing.code().to_le_bytes());
        for (r, peer) in self.peers.iter().enumerate() {
            if r != self.me {
                for to in &peer.send_to {
                    // (an address of the peer's that this host cannot reach fails or is
                    // lost: the note goes to its other addresses as well)
                    let _ = socket.send_to(&note, to);
                }
            }
        }
    }

    /// Takes in every note that has arrived.
    pub fn hear(&mut self) {
        let Some(socket) = &self.socket else { return };
        let mut buf = [0u8; 64];
        while let Ok((len, from)) = socket.recv_from(&mut buf) {
            let Some((rank, note)) = self.read(&buf[..len]) else {
                continue;
            };
            let peer = &mut self.peers[rank];
            if let Some(before) = peer.last {
                let silence = note.heard.duration_since(before.heard);
                if silence > QUIET_AFTER {
                    peer.gap = Some((note.heard, silence, before.step));
                }
            }
            peer.last = Some(note);
            if !peer.learned {
                peer.send_to = vec![from];
                peer.learned = true;
            }
        }
    }

    fn read(&self, bytes: &[u8]) -> Option<(usize, Note)> {
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        if bytes.len() != NOTE_BYTES || word(0) != self.token {
            return None;
        }
        let rank = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
        let doing = Doing::from_code(word(20) as i64)?;
        (rank < self.peers.len() && rank != self.me).then_some((
            rank,
            Note {
                heard: Instant::now(),
                step: word(12),
                doing,
            },
        ))
    }

    /// Forgets the silences seen so far: this rank itself was not running (stopped or
    /// starved), so the gaps between the notes it heard were its own.
    pub fn forget_silences(&mut self) {
        self.peers.iter_mut().for_each(|p| p.gap = None);
    }

    /// Whether any other rank's note has ever arrived (else the channel does not work
    /// here, and silence says nothing).
    pub fn heard_any(&self) -> bool {
        self.peers.iter().any(|p| p.last.is_some())
    }

    /// The other ranks that keep this one waiting: those that went quiet, and those
    /// that are alive but not in MPI (still computing, or held). Ranks that wait in MPI
    /// themselves are not named: they wait for the same ones. (Steps are not compared:
    /// a rank learns its step from its own event stream, which may lag its MPI calls.)
    /// A rank that was silent during the last `waited` and has just come back counts
    /// too. Empty when nothing was ever heard.
    pub fn missing(&self, waited: Duration) -> Vec<(usize, Missing)> {
        if !self.heard_any() {
            return Vec::new();
        }
        let now = Instant::now();
        self.peers
            .iter()
            .enumerate()
            .filter(|&(r, _)| r != self.me)
            .filter_map(|(r, p)| {
                let why = match p.last {
                    None => Missing::NeverHeard,
                    Some(n) if now.duration_since(n.heard) > QUIET_AFTER => Missing::Quiet {
                        for_: now.duration_since(n.heard),
                        step: n.step,
                    },
                    Some(_) if p.gap.is_some_and(|(ended, ..)| now.duration_since(ended) < waited) => {
                        let (_, for_, step) = p.gap.expect("just seen");
                        Missing::WasQuiet { for_, step }
                    }
                    Some(n) if n.doing == Doing::Computing => Missing::Busy { step: n.step },
                    Some(_) => return None,
                };
                Some((r, why))
            })
            .collect()
    }
}

/// Why a rank has not reached the collective the others wait in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Missing {
    /// No note ever came from it (while others' did).
    NeverHeard,
    /// Its notes stopped this long ago; it was at `step`.
    Quiet { for_: Duration, step: u64 },
    /// Its notes stopped for this long during the wait, at `step`, and have just
    /// started again.
    WasQuiet { for_: Duration, step: u64 },
    /// It is alive, outside MPI, at `step`.
    Busy { step: u64 },
}

/// This host's IPv4 addresses, loopback last (peers on this host reach it there, others
/// through the rest).
fn own_addresses() -> Vec<Ipv4Addr> {
    let mut found = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `getifaddrs` fills `list` with a linked list that we only read, then free
    // once with `freeifaddrs`; each `ifa_addr` is null or points at a sockaddr whose
    // family says its type.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return found;
        }
        let mut at = list;
        while let Some(ifa) = at.as_ref() {
            let up = ifa.ifa_flags & libc::IFF_UP as u32 != 0;
            if up && !ifa.ifa_addr.is_null() && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                found.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
            at = ifa.ifa_next;
        }
        libc::freeifaddrs(list);
    }
    found.sort_by_key(|ip| (ip.is_loopback(), *ip));
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boards(n: usize, token: u64) -> Vec<Board> {
        let bound: Vec<_> = (0..n).map(|_| bind("here")).collect();
        let cards: Vec<Card> = bound.iter().map(|(_, c)| c.clone()).collect();
        bound
            .into_iter()
            .enumerate()
            .map(|(r, (s, _))| Board::new(s, r, &cards, token))
            .collect()
    }

    /// Lets notes cross loopback: hears until every board has heard what it expects.
    fn settle(boards: &mut [Board], done: impl Fn(&[Board]) -> bool) {
        let t = Instant::now();
        while !done(boards) && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
            boards.iter_mut().for_each(Board::hear);
        }
    }

    #[test]
    fn a_rank_that_does_not_reach_the_collective_is_told_apart_from_those_waiting_there() {
        let mut b = boards(4, 7);
        assert!(b[0].card_port() != 0, "loopback UDP works on every test machine");
        // Ranks 0, 1 and 3 wait in step 5's collective; rank 2 still computes step 5.
        for r in [0, 1, 3] {
            b[r].beat(5, Doing::InCollective);
        }
        b[2].beat(5, Doing::Computing);
        settle(&mut b, |b| b[0].peers.iter().skip(1).all(|p| p.last.is_some()));
        assert!(b[0].heard_any());
        assert_eq!(
            b[0].missing(Duration::from_secs(10)),
            vec![(2, Missing::Busy { step: 5 })]
        );
        // A rank that waits in MPI for another (a ring's neighbour) is not the one missing.
        b[3].beat(4, Doing::WaitingFor(2));
        settle(&mut b, |b| b[0].peers[3].last.map(|n| n.step) == Some(4));
        assert_eq!(
            b[0].missing(Duration::from_secs(10)),
            vec![(2, Missing::Busy { step: 5 })]
        );
    }

    #[test]
    fn a_rank_gone_quiet_is_named_with_how_long_and_where_it_was() {
        let mut b = boards(3, 9);
        b[1].beat(12, Doing::InCollective);
        b[2].beat(12, Doing::InCollective);
        settle(&mut b, |b| b[0].peers[1].last.is_some() && b[0].peers[2].last.is_some());
        // Rank 2's last note is old: it went quiet.
        let old = Instant::now() - QUIET_AFTER - Duration::from_secs(1);
        b[0].peers[2].last.as_mut().unwrap().heard = old;
        match b[0].missing(Duration::from_secs(10)).as_slice() {
            [(2, Missing::Quiet { for_, step: 12 })] => assert!(*for_ > QUIET_AFTER),
            other => panic!("{other:?}"),
        }
        // It comes back (SIGCONT) before this rank reports: it is still the one named,
        // as long as its silence fell in this rank's wait.
        b[2].beat(12, Doing::InCollective);
        settle(&mut b, |b| b[0].peers[2].last.is_some_and(|n| n.heard > old));
        match b[0].missing(Duration::from_secs(10)).as_slice() {
            [(2, Missing::WasQuiet { for_, step: 12 })] => assert!(*for_ > QUIET_AFTER),
            other => panic!("{other:?}"),
        }
        assert!(
            b[0].missing(Duration::ZERO).is_empty(),
            "a silence before the wait is not named"
        );
    }

    #[test]
    fn notes_without_the_jobs_token_or_with_a_wrong_rank_are_dropped() {
        let mut b = boards(2, 1234);
        let stranger = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let to = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, b[0].card_port()));
        let mut note = [0u8; NOTE_BYTES];
        note[0..8].copy_from_slice(&99u64.to_le_bytes()); // another token
        note[8..12].copy_from_slice(&1u32.to_le_bytes());
        stranger.send_to(&note, to).unwrap();
        note[0..8].copy_from_slice(&1234u64.to_le_bytes());
        note[8..12].copy_from_slice(&7u32.to_le_bytes()); // no such rank
        stranger.send_to(&note, to).unwrap();
        stranger.send_to(&[1, 2, 3], to).unwrap(); // not a note
        std::thread::sleep(Duration::from_millis(50));
        b[0].hear();
        assert!(!b[0].heard_any());
        assert!(
            b[0].missing(Duration::from_secs(10)).is_empty(),
            "silence says nothing when nothing was heard"
        );
        // The real peer is heard, and from then on only its sending address is used.
        b[1].beat(3, Doing::Computing);
        settle(&mut b, |b| b[0].heard_any());
        assert_eq!(b[0].peers[1].last.map(|n| n.step), Some(3));
        assert_eq!(b[0].peers[1].send_to.len(), 1);
    }

    #[test]
    fn this_host_has_an_address_and_loopback_comes_last() {
        let addrs = own_addresses();
        assert!(addrs.last().is_some_and(|a| a.is_loopback()), "{addrs:?}");
    }

    impl Board {
        fn card_port(&self) -> u16 {
            self.socket.as_ref().map_or(0, |s| s.local_addr().unwrap().port())
        }
    }
}
