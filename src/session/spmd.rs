//! One owner for "this process is an MPI rank" (DESIGN.md decision 8): MPI's start and
//! its threading level, the panic → abort hook, the launcher's facts, agreement (every
//! rank says it can go on, or all leave together with the first failure's sentence,
//! naming its rank and host), the step reached at exit, the stall watchdog, and the
//! exit codes. `ddlab run --backend mpi`, `ddlab worker` and `ddlab check` use it, and
//! keep only their own job.
//!
//! A decision one rank takes alone must never leave the others waiting in a collective:
//! what a rank finds before training (bad flags, missing data, no GPU, an unwritable
//! export) is agreed on at start; what it finds while training (its loss diverged, its
//! compute failed) travels with the step's collective (see `train::sync`) or the
//! parameter server's messages; how the run ended is agreed on at the end.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// The exit codes of every ddlab command (the README's table).
pub mod exit {
    /// Done: the run completed or was stopped as asked; the check passed.
    pub const DONE: i32 = 0;
    /// A failure (a rank or its compute failed; the check found a fault).
    pub const FAILED: i32 = 1;
    /// Bad input: a flag, a file, a launch that cannot work (one sentence says which).
    pub const BAD_INPUT: i32 = 2;
    /// The run diverged (the loss became NaN, infinite or over 100× chance level).
    pub const DIVERGED: i32 = 3;
    /// A rank made no progress for the stall timeout: the job was ended.
    pub const STALLED: i32 = 4;
    /// A rank panicked (a bug): the job was aborted.
    pub const PANICKED: i32 = 70;
    /// Interrupted by the user (Ctrl-C, or SIGTERM to a threads run): the exports cover
    /// the steps done.
    pub const INTERRUPTED: i32 = 130;
    /// Terminated: a signal to an MPI job (SIGTERM, e.g. by mpirun when another rank
    /// failed, or Ctrl-C), or SIGTERM to a command with no exports.
    pub const TERMINATED: i32 = 143;
}

/// Whether this process was started by an MPI launcher (mpirun, mpiexec, srun).
pub fn launched_by_mpirun() -> bool {
    [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_RANK",
        "MPI_LOCALNRANKS",
        "SLURM_STEP_ID",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some())
}

/// Writes "ddlab: SENTENCE" on stderr in one write: mpirun forwards each rank's stderr
/// in the pieces it was written in, and `eprintln!` writes a line in several, which then
/// interleave with other ranks' lines ("ddlab: ddlab: rank 1 …").
pub fn say(sentence: &str) {
    use std::io::Write;
    let line = format!("ddlab: {sentence}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// The step this rank has reached (the stall report and the sentence at exit name it),
/// and how long its steps take (the stall timeout follows it).
static STEP: AtomicU64 = AtomicU64::new(0);
static STEP_NS: AtomicU64 = AtomicU64::new(0);
static LAST_STEP_AT_NS: AtomicU64 = AtomicU64::new(0);
/// Set once this rank's run has ended as it should: leaving then needs no sentence.
static ENDED: AtomicBool = AtomicBool::new(false);

fn now_ns() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_nanos() as u64
}

/// This rank reached step `step`.
pub fn stepped(step: u64) {
    if step > STEP.fetch_max(step, Ordering::SeqCst) {
        let now = now_ns();
        let before = LAST_STEP_AT_NS.swap(now, Ordering::SeqCst);
        if before > 0 {
            // A moving average of the time between steps.
            let took = now - before;
            let avg = STEP_NS.load(Ordering::SeqCst);
            STEP_NS.store(if avg == 0 { took } else { (avg * 7 + took) / 8 }, Ordering::SeqCst);
        }
    }
}

/// The step an event of this rank's stream shows it at: a step report, or a phase
/// (a parameter server's workers get no step reports, the server makes them; their
/// phases carry the server version they computed on).
pub fn saw(event: &crate::train::Event) {
    match event {
        crate::train::Event::WorkerStep(w) => stepped(w.step),
        crate::train::Event::Phase { step, .. } => stepped(*step),
        _ => {}
    }
}

/// The step this rank has reached.
pub fn step() -> u64 {
    STEP.load(Ordering::SeqCst)
}

/// This rank's run has ended as it should (no "left early" sentence at exit).
pub fn ended() {
    ENDED.store(true, Ordering::SeqCst);
}

/// How long a rank may wait in one MPI call before it is called stalled: 30 s, or
/// 100 steps when steps are fast (at least 5 s), unless the user said.
pub fn stall_timeout(given: Option<Duration>) -> Duration {
    if let Some(t) = given {
        return t;
    }
    match STEP_NS.load(Ordering::SeqCst) {
        0 => Duration::from_secs(30),
        ns => Duration::from_nanos(ns.saturating_mul(100)).clamp(Duration::from_secs(5), Duration::from_secs(30)),
    }
}

#[cfg(feature = "mpi")]
pub use rank::{Rank, Verdict};

/// A stall this rank's watcher found.
#[derive(Debug, Clone)]
pub struct Stall {
    /// Whom this rank waits for and why ("rank 1 on a has waited 31 s at step 40 for …").
    pub sentence: String,
    /// Rank 0 may still end the job itself: it is not among the ranks found missing (it
    /// waits in MPI too, or nothing can be told from the signs of life).
    pub rank_0_may_end_it: bool,
}

/// How long a rank other than 0 that found a stall lets rank 0 end the job: rank 0
/// finds the same stall within a tick or two of its own, writes its summary and exports,
/// and leaves, and mpirun then ends the rest. A rank that left first had mpirun kill
/// rank 0 before its summary was written.
const RANK_0_GRACE: Duration = Duration::from_secs(5);

/// A rank says the stall it found and ends the job: at once when rank 0 is missing (or
/// is this rank), else once rank 0 has had its grace to end it itself — which helps
/// where rank 0's stall timeout is at most the grace longer than this rank's (given with
/// `--stall-timeout`, it is the same on every rank). It returns at once: the watcher
/// keeps sending this rank's signs of life meanwhile, so that rank 0 does not count it
/// as missing too. Said once: a second stall found in the grace changes nothing.
pub fn leave_stalled(stall: &Stall) {
    static LEAVING: std::sync::Once = std::sync::Once::new();
    LEAVING.call_once(|| {
        say(&stall.sentence);
        ended();
        let grace = if stall.rank_0_may_end_it {
            RANK_0_GRACE
        } else {
            Duration::ZERO
        };
        std::thread::spawn(move || {
            std::thread::sleep(grace);
            std::process::exit(exit::STALLED);
        });
    });
}

#[cfg(feature = "mpi")]
mod rank {
    use std::time::Duration;

    use super::{exit, stall_timeout, step, Stall, ENDED};
    use crate::comm::heartbeat::{self, Board, Card, Doing, Missing};
    use crate::comm::mpi::{abort_world, host_name, waiting, MpiTransport, MpiWorld};
    use crate::comm::{Clock, Transport};
    use crate::train::Outcome;

    /// This process as a rank of an MPI job.
    pub struct Rank {
        pub rank: usize,
        pub size: usize,
        pub host: String,
        /// The transport agreements go over (the engine has one of its own).
        control: MpiTransport,
        /// Signs of life to and from the other ranks, for the stall watcher (taken by it).
        board: Option<Board>,
        world: Option<MpiWorld>,
    }

    /// How the job ended, as every rank agreed: the outcome, the exit code, and the
    /// sentence that says why (empty when there is nothing to say).
    #[derive(Debug, Clone, PartialEq)]
    pub struct Verdict {
        pub outcome: Outcome,
        pub code: i32,
        pub sentence: String,
    }

    impl Rank {
        /// Starts MPI (at `MPI_THREAD_SERIALIZED`, checked, or at `SINGLE` for a rank
        /// that makes every call from its main thread), makes a panic abort the whole
        /// job at once (nobody waits forever in a collective), and says at exit at which
        /// step a rank left a run that had not ended.
        pub fn start(serialized: bool) -> Result<Rank, String> {
            let world = if serialized {
                MpiWorld::init()?
            } else {
                MpiWorld::init_single()?
            };
            let control = world.transport(Clock::start());
            let (rank, size) = (control.rank(), control.size());
            let host = host_name();
            let who = format!("rank {rank} on {host}");
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                previous(info);
                super::say(&format!("{who} panicked (a bug, please report it): the job is aborted"));
                abort_world(exit::PANICKED);
            }));
            name_step_at_exit(rank, host.clone());
            let mut me = Rank {
                rank,
                size,
                host,
                control,
                board: None,
                world: Some(world),
            };
            me.board = Some(me.meet());
            Ok(me)
        }

        /// Every rank binds its port for signs of life and learns the others' (and the
        /// job's token, drawn by rank 0). Collective.
        fn meet(&mut self) -> Board {
            let (socket, card) = heartbeat::bind(&self.host);
            let mine = serde_json::to_vec(&card).unwrap_or_default();
            let mut table = Vec::new();
            if let Some(all) = self.control.gather_bytes(&mine) {
                let cards: Vec<Card> = all
                    .iter()
                    .map(|b| serde_json::from_slice(b).unwrap_or_default())
                    .collect();
                table = serde_json::to_vec(&(rand::random::<u64>(), cards)).unwrap_or_default();
            }
            self.control.broadcast_bytes(&mut table, 0);
            let (token, cards): (u64, Vec<Card>) = serde_json::from_slice(&table).unwrap_or_default();
            Board::new(socket, self.rank, &cards, token)
        }

        /// A new transport over every rank, for the engine (collective: every rank
        /// calls it at the same point).
        pub fn transport(&self, clock: Clock) -> MpiTransport {
            self.world.as_ref().expect("MPI is running").transport(clock)
        }

        /// "rank 2 on node-b: …": a sentence about this rank.
        pub fn about_me(&self, what: &str) -> String {
            format!("rank {} on {}: {what}", self.rank, self.host)
        }

        /// Every rank brings `mine` (Ok, or a sentence saying why it cannot go on): all
        /// go on, or all leave together, rank 0 saying why once: the reason alone when
        /// every rank gives the same one (a bad flag), else the first failing rank's,
        /// with its rank and host. Returns that sentence. Collective.
        pub fn agree(&mut self, mine: Result<(), String>) -> Result<(), String> {
            let bytes = mine
                .err()
                .map(|why| format!("{}\0{why}", self.host).into_bytes())
                .unwrap_or_default();
            let mut verdict = Vec::new();
            if let Some(all) = self.control.gather_bytes(&bytes) {
                let failed: Vec<(usize, String, String)> = all
                    .into_iter()
                    .enumerate()
                    .filter(|(_, b)| !b.is_empty())
                    .map(|(r, b)| {
                        let text = String::from_utf8_lossy(&b).into_owned();
                        let (host, why) = text.split_once('\0').unwrap_or(("?", &text));
                        (r, host.to_string(), why.to_string())
                    })
                    .collect();
                if let Some((r, host, why)) = failed.first() {
                    let all_alike = failed.len() == self.size && failed.iter().all(|f| f.2 == *why);
                    verdict = if all_alike {
                        why.clone()
                    } else if failed.len() == 1 {
                        format!("rank {r} on {host}: {why}")
                    } else {
                        format!(
                            "rank {r} on {host}: {why} (and {} more ranks cannot go on)",
                            failed.len() - 1
                        )
                    }
                    .into_bytes();
                }
            }
            self.control.broadcast_bytes(&mut verdict, 0);
            if verdict.is_empty() {
                return Ok(());
            }
            let sentence = String::from_utf8_lossy(&verdict).into_owned();
            if self.rank == 0 {
                super::say(&sentence);
            }
            ENDED.store(true, std::sync::atomic::Ordering::SeqCst);
            Err(sentence)
        }

        /// Every rank was given the same `what` (e.g. the experiment, as JSON): else
        /// all leave, and rank 0 says which rank differs in which setting. Collective.
        pub fn same_everywhere(&mut self, what: &str, mine: &serde_json::Value) -> Result<(), String> {
            let bytes = serde_json::to_vec(mine).unwrap_or_default();
            let mut differs = Ok(());
            if let Some(all) = self.control.gather_bytes(&bytes) {
                for (r, theirs) in all.iter().enumerate().skip(1) {
                    let theirs: serde_json::Value = serde_json::from_slice(theirs).unwrap_or_default();
                    if let Some(diff) = first_difference(mine, &theirs) {
                        differs = Err(format!(
                            "the ranks were given different {what}s: rank {r} has {diff}: give every rank the same flags (with mpirun's MPMD syntax, the same on both sides of ':')"
                        ));
                        break;
                    }
                }
            }
            self.agree(differs)
        }

        /// How the job ended: every rank brings its own end; rank 0 decides (a failure
        /// first, the lowest rank's; then a divergence; then its own end) and says why
        /// once; every rank gets the same verdict. Collective.
        pub fn agree_end(&mut self, mine: &Outcome) -> Verdict {
            let end = match mine {
                Outcome::Failed { message } => Outcome::Failed {
                    message: self.about_me(message),
                },
                other => other.clone(),
            };
            let bytes = serde_json::to_vec(&end).unwrap_or_default();
            let mut verdict = Vec::new();
            if let Some(all) = self.control.gather_bytes(&bytes) {
                let ends: Vec<Outcome> = all
                    .iter()
                    .map(|b| {
                        serde_json::from_slice(b).unwrap_or(Outcome::Failed {
                            message: "a rank's end was unreadable".into(),
                        })
                    })
                    .collect();
                verdict = serde_json::to_vec(&decide(&ends)).unwrap_or_default();
            }
            self.control.broadcast_bytes(&mut verdict, 0);
            ENDED.store(true, std::sync::atomic::Ordering::SeqCst);
            serde_json::from_slice::<(Outcome, i32, String)>(&verdict)
                .map(|(outcome, code, sentence)| Verdict {
                    outcome,
                    code,
                    sentence,
                })
                .unwrap_or(Verdict {
                    outcome: end,
                    code: exit::FAILED,
                    sentence: "the ranks could not agree on how the job ended".into(),
                })
        }

        /// Watches this rank's MPI calls from a thread of its own (which makes none):
        /// a call that waits longer than the stall timeout (`given`, else 30 s or 100
        /// steps) is reported — whom this rank waits for, at which step, and which ranks
        /// have not arrived, from their signs of life — and `on_stall` decides what then
        /// happens (by default: end the job).
        pub fn watch_for_stalls(&mut self, given: Option<Duration>, on_stall: impl Fn(Stall) + Send + 'static) {
            const TICK: Duration = Duration::from_millis(200);
            let (rank, host, size) = (self.rank, self.host.clone(), self.size);
            let Some(mut board) = self.board.take() else { return };
            std::thread::Builder::new()
                .name("ddlab-stall-watch".into())
                .spawn(move || {
                    let mut reported = false;
                    let mut last_tick = std::time::Instant::now();
                    loop {
                        board.beat(step(), doing(waiting::peer()));
                        std::thread::sleep(TICK);
                        board.hear();
                        // (a tick a second late: this process was stopped or starved;
                        // its wait counts from now, and the others' notes that queued up
                        // meanwhile show a silence of its own, not theirs)
                        if last_tick.elapsed() > TICK + Duration::from_secs(1) {
                            waiting::count_from_now();
                            board.forget_silences();
                        }
                        last_tick = std::time::Instant::now();
                        match waiting::now() {
                            Some((peer, waited)) if !reported && waited > stall_timeout(given) => {
                                reported = true;
                                let rank_0_missing = board.missing(waited).iter().any(|&(r, _)| r == 0);
                                on_stall(Stall {
                                    sentence: stall_sentence(rank, &host, size, peer, waited, &board),
                                    rank_0_may_end_it: rank != 0 && !rank_0_missing,
                                });
                            }
                            None => reported = false,
                            _ => {}
                        }
                    }
                })
                .expect("the OS can start a thread");
        }
    }

    /// What this rank tells the others it does, from whom its MPI call waits for.
    fn doing(peer: Option<i64>) -> Doing {
        match peer {
            None => Doing::Computing,
            Some(waiting::ANY) => Doing::WaitingForAny,
            Some(waiting::ALL) => Doing::InCollective,
            Some(p) => Doing::WaitingFor(p.max(0) as usize),
        }
    }

    /// "rank 0 on a has waited 31 s at step 40 for rank 2 on b (…), in a collective: …":
    /// whom this rank waits for, and — from the others' signs of life — which ranks have
    /// not arrived and why, so that with many ranks the one to look at is named.
    pub(super) fn stall_sentence(
        rank: usize,
        host: &str,
        size: usize,
        peer: i64,
        waited: Duration,
        board: &Board,
    ) -> String {
        let missing = board.missing(waited);
        let name = |r: usize| format!("rank {r} on {}", board.peers.get(r).map_or("?", |p| p.host.as_str()));
        let describe = |&(r, why): &(usize, Missing)| match why {
            Missing::NeverHeard => format!("{} (no sign of life from it ever reached this rank)", name(r)),
            Missing::Quiet { for_, step } => format!(
                "{} (no sign of life for {:.0} s, since step {step})",
                name(r),
                for_.as_secs_f64()
            ),
            Missing::WasQuiet { for_, step } => format!(
                "{} (no sign of life for {:.0} s from step {step}, until just now)",
                name(r),
                for_.as_secs_f64()
            ),
            Missing::Busy { step } => format!("{} (alive, still at step {step} outside MPI)", name(r)),
        };
        // The ranks this wait is named after: the one waited for when it is missing;
        // else (a ring's neighbour that waits too, a collective, a server) every rank
        // that is missing.
        let direct = usize::try_from(peer).ok();
        let named: Vec<(usize, Missing)> = match direct {
            Some(p) if missing.iter().any(|(r, _)| *r == p) => {
                missing.iter().filter(|(r, _)| *r == p).copied().collect()
            }
            _ => missing.clone(),
        };
        let list = named.iter().map(describe).collect::<Vec<_>>().join(", ");
        let busy = named.iter().any(|(_, why)| matches!(why, Missing::Busy { .. }));
        let mut why = match (named.len(), busy) {
            (0, _) if peer == waiting::ALL && size > 2 => {
                "one of them is stalled (stopped, swapping, or cut off) or dead".to_string()
            }
            (0 | 1, false) => "that rank is stalled (stopped, swapping, or cut off) or dead".to_string(),
            (_, false) => "those ranks are stalled (stopped, swapping, or cut off) or dead".to_string(),
            (1, true) => "that rank is stuck or far slower than the others".to_string(),
            (_, true) => "those ranks are stalled, stuck or far slower than the others".to_string(),
        };
        if named.iter().any(|(_, why)| *why == Missing::NeverHeard) {
            why.push_str(" (or UDP from its host does not reach this one: then only its silence is known)");
        }
        let whom = match (peer, direct) {
            (waiting::ANY, _) if list.is_empty() => "any worker's push (the parameter server)".to_string(),
            (waiting::ANY, _) => format!("any worker's push (the parameter server): {list}"),
            // (a collective does not say who has not arrived; with two ranks it can only
            // be the other one, with more the others' signs of life say)
            (waiting::ALL, _) if !list.is_empty() => format!("{list}, in a collective"),
            (waiting::ALL, _) if size == 2 => format!("{}, in a collective", name(1 - rank)),
            (waiting::ALL, _) if board.heard_any() => format!(
                "one or more of the other {} ranks, in a collective (each of them sends signs of life and waits in MPI too)",
                size - 1
            ),
            (waiting::ALL, _) => format!(
                "one or more of the other {} ranks, in a collective (no sign of life from the other ranks reached this one, so it cannot say which: do the hosts let UDP through to each other?)",
                size - 1
            ),
            (_, Some(p)) if list.is_empty() => name(p),
            (_, Some(p)) if named.iter().any(|(r, _)| *r == p) => list,
            // (a ring's neighbour that waits too: the rank behind it is the cause)
            (_, Some(p)) => format!("{}, which waits too; behind it: {list}", name(p)),
            (_, None) => list,
        };
        format!(
            "rank {rank} on {host} has waited {:.0} s at step {} for {whom}: {why}; ending the job",
            waited.as_secs_f64(),
            step()
        )
    }

    impl Drop for Rank {
        fn drop(&mut self) {
            ENDED.store(true, std::sync::atomic::Ordering::SeqCst);
            drop(self.world.take()); // finalises MPI
        }
    }

    /// Rank 0's verdict from every rank's end (in rank order): the outcome, the exit
    /// code and the sentence.
    pub(super) fn decide(ends: &[Outcome]) -> (Outcome, i32, String) {
        if let Some(Outcome::Failed { message }) = ends.iter().find(|e| matches!(e, Outcome::Failed { .. })) {
            // (the first failure by rank names the cause; the others failed because of it)
            return (
                Outcome::Failed {
                    message: message.clone(),
                },
                exit::FAILED,
                message.clone(),
            );
        }
        let diverged = ends
            .iter()
            .filter_map(|e| match e {
                Outcome::Diverged { step, worker } => Some((*step, *worker)),
                _ => None,
            })
            .min();
        if let Some((step, worker)) = diverged {
            let sentence = format!(
                "the run diverged at step {step}: worker {worker}'s loss became NaN, infinite or over 100× chance level; every rank stopped at that step"
            );
            return (Outcome::Diverged { step, worker }, exit::DIVERGED, sentence);
        }
        let own = ends.first().cloned().unwrap_or(Outcome::Completed);
        (own, exit::DONE, String::new())
    }

    /// The first setting in which `theirs` differs from `mine`: "steps 100 (rank 0: 50)".
    fn first_difference(mine: &serde_json::Value, theirs: &serde_json::Value) -> Option<String> {
        match (mine, theirs) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                keys.into_iter().find_map(|k| {
                    let (x, y) = (a.get(k), b.get(k));
                    (x != y).then(|| {
                        let show = |v: Option<&serde_json::Value>| v.map_or("nothing".to_string(), |v| v.to_string());
                        format!("{k} {} where rank 0 has {}", show(y), show(x))
                    })
                })
            }
            (a, b) if a != b => Some(format!("{b} where rank 0 has {a}")),
            _ => None,
        }
    }

    /// Makes this process say at which step it was when it leaves before its run ended —
    /// also when the MPI library ends it because another rank died (it exits through
    /// `exit`, so handlers registered with `atexit` still run).
    fn name_step_at_exit(rank: usize, host: String) {
        static WHO: std::sync::OnceLock<(usize, String)> = std::sync::OnceLock::new();
        let _ = WHO.set((rank, host));
        extern "C" fn say() {
            if !ENDED.load(std::sync::atomic::Ordering::SeqCst) {
                if let Some((rank, host)) = WHO.get() {
                    eprintln!(
                        "ddlab: rank {rank} ({host}) left the job at step {}: the job ended early (the rank or host named above is why)",
                        step()
                    );
                }
            }
        }
        extern "C" {
            fn atexit(f: extern "C" fn()) -> std::os::raw::c_int;
        }
        // SAFETY: `atexit` from the C library, with a function that lives forever.
        unsafe {
            atexit(say);
        }
    }
}

#[cfg(all(test, feature = "mpi"))]
mod tests {
    use std::time::{Duration, Instant};

    use super::rank::{decide, stall_sentence};
    use crate::comm::heartbeat::{Board, Card, Doing, Note};
    use crate::comm::mpi::waiting;
    use crate::train::Outcome;

    /// Rank 1's board of a 4-rank job on hosts h0..h3, where rank r last said `notes[r]`
    /// this long ago (None: never heard).
    fn board(notes: [Option<(Duration, Doing)>; 4]) -> Board {
        let cards: Vec<Card> = (0..4)
            .map(|r| Card {
                host: format!("h{r}"),
                ..Card::default()
            })
            .collect();
        let mut b = Board::new(None, 1, &cards, 0);
        for (r, note) in notes.into_iter().enumerate() {
            b.peers[r].last = note.map(|(ago, doing)| Note {
                heard: Instant::now() - ago,
                step: 40,
                doing,
            });
        }
        b
    }

    const NOW: Duration = Duration::ZERO;
    const LONG: Duration = Duration::from_secs(30);

    #[test]
    fn a_stall_names_the_rank_behind_the_one_waited_for_and_says_what_it_knows() {
        let waited = Duration::from_secs(31);
        let (computing, waits, in_mpi) = (Doing::Computing, Doing::WaitingFor(3), Doing::InCollective);
        // (what, the others' last notes (ago, doing) as rank 1 heard them, whom rank 1
        // waits for, what its sentence must say)
        type Notes = [Option<(Duration, Doing)>; 4];
        let cases: [(&str, Notes, i64, &[&str]); 5] = [
            (
                "a ring: rank 1 waits for rank 0, which waits too; rank 3 went quiet",
                [Some((NOW, waits)), None, Some((NOW, in_mpi)), Some((LONG, computing))],
                0,
                &["for rank 0 on h0, which waits too; behind it: rank 3 on h3 (no sign of life for 30 s, since step 40): that rank is stalled"],
            ),
            (
                "the library's all-reduce: rank 2 is alive but outside MPI",
                [Some((NOW, in_mpi)), None, Some((NOW, computing)), Some((NOW, in_mpi))],
                waiting::ALL,
                &["for rank 2 on h2 (alive, still at step 40 outside MPI), in a collective: that rank is stuck"],
            ),
            (
                "two quiet ranks: both named, in the plural",
                [Some((LONG, in_mpi)), None, Some((NOW, in_mpi)), Some((LONG, in_mpi))],
                waiting::ALL,
                &["rank 0 on h0 (no sign", "rank 3 on h3 (no sign", "those ranks are stalled"],
            ),
            (
                "a rank never heard from while others were: named, with the doubt said",
                [Some((NOW, in_mpi)), None, Some((NOW, in_mpi)), None],
                waiting::ALL,
                &[
                    "rank 3 on h3 (no sign of life from it ever reached this rank)",
                    "or UDP from its host does not reach this one",
                ],
            ),
            (
                "nothing heard at all: no rank is blamed, the channel is questioned",
                [None, None, None, None],
                waiting::ALL,
                &["one or more of the other 3 ranks", "let UDP through"],
            ),
        ];
        for (what, notes, peer, wants) in cases {
            let s = stall_sentence(1, "h1", 4, peer, waited, &board(notes));
            for want in wants {
                assert!(s.contains(want), "{what}: {s}");
            }
        }
    }

    #[test]
    fn the_first_failure_by_rank_decides_then_the_earliest_divergence() {
        let failed = |m: &str| Outcome::Failed { message: m.into() };
        let (o, code, s) = decide(&[Outcome::Completed, failed("rank 1: no data"), failed("rank 2: x")]);
        assert_eq!((o, code, s.as_str()), (failed("rank 1: no data"), 1, "rank 1: no data"));
        let (o, code, _) = decide(&[
            Outcome::Diverged { step: 9, worker: 2 },
            Outcome::Diverged { step: 7, worker: 1 },
        ]);
        assert_eq!((o, code), (Outcome::Diverged { step: 7, worker: 1 }, 3));
        assert_eq!(decide(&[Outcome::Completed, Outcome::Completed]).1, 0);
    }
}
