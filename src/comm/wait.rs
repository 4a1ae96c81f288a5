//! How a thread waits for another: spin briefly, yield a little, then block — when
//! spinning pays.
//!
//! Pure spinning collapses when workers outnumber cores (the spinner burns the slice the
//! worker it waits for needs), and inside a virtual machine even yielding keeps the
//! virtual CPU busy while its sibling may be the one descheduled. So after a short spin
//! and a few yields a waiter sleeps on a futex ([`Doorbell`]) until the state it waits
//! for changes.
//!
//! On a busy machine (other programs using the cores) spinning and yielding stop paying
//! and start costing: a spin burns the share of the CPU the awaited thread needs, and a
//! yield hands the core to the other program for its whole time slice. A watcher thread
//! therefore measures how much CPU other programs use (`/proc/stat` less this process's
//! own time, every quarter second once settled); while they use half a core or more,
//! waiters go to sleep at once, and the worker they wait for wakes them within its
//! short time slice (see `comm::worker_thread`). Measured on 2 cores beside two busy
//! processes, 4 workers: 51 steps/s spinning first, about 600 sleeping at once; on an
//! idle machine spinning first stays (a sleeping virtual CPU takes long to wake).
//!
//! When other programs leave less than one and a half cores free, a thread group's
//! workers also gather on one core, the one other programs use least
//! ([`gather_with_the_group`]; this process's threads are told apart from the others'
//! core by core by the core each last ran on). Spread over cores, each hand-over wakes a
//! worker on another core, behind a busy program there: the woken worker waits for an
//! interrupt between cores (tens of µs in a virtual machine) and often for that
//! program's time slice, and a step has dozens of hand-overs. On one core a hand-over is
//! a switch between threads of this process, and the scheduler's balancer moves the busy
//! programs to the other cores; a gathered group that still finds a busy program on its
//! core, and [`MOVE_FOR`] of a core less of others on another, moves there. Measured on
//! 2 cores (steps/s, medians of 5): 4 workers beside two busy processes 1150 spread,
//! 2180 gathered (4940 idle); 8 workers 340 and 740 (1850 idle); beside one busy
//! process 3480 and 4770, 8 workers 770 and 1600. Idle, gathering would cost (3700
//! against 4930), so the workers spread again once the others leave.
//!
//! For its first quarter second the watcher looks every 40 ms, each time judging all
//! since its window began (a run under load may last a tenth of a second, and 40 ms
//! hold four ticks per core); a new window begins when the group moves, since what came
//! before was measured with its threads elsewhere. Judged by the first 40 ms alone, and
//! by each core's busy time with this process's own, 5 of 12 runs of 8 workers beside
//! one busy process were not seen crowded, or gathered on its core, and kept 0.34–0.37×
//! of their idle speed; now the worst of 12 keeps about 0.5×, the median 0.65–0.71×.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{Clock, CommError, Result};

/// Spin this many times first: a partner that is running answers within a microsecond.
const SPINS: u32 = 200;
/// Then yield the core for up to this long (cheap when workers outnumber cores).
const YIELD_FOR: Duration = Duration::from_micros(20);

/// Whether other programs keep the cores busy now (see the module's comment).
static CROWDED: AtomicBool = AtomicBool::new(false);

/// Starts the watcher of other programs' CPU use (once per process; where the system
/// does not say, it never finds the machine crowded).
pub fn watch_crowding() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let _ = std::thread::Builder::new().name("ddlab-crowding".into()).spawn(|| {
            // (started by a thread that was never gathered: its cores are the process's)
            let Some(allowed) = allowed_cores() else { return };
            let mut watcher = Watcher::new(allowed, Ticks::now());
            loop {
                std::thread::sleep(watcher.next_look_in());
                // (only a thread group's members follow the gathering: an MPI rank's
                // pool threads start the watcher too, and never gather)
                #[cfg(target_os = "linux")]
                let group = PROCESS_CORES.get().is_some();
                #[cfg(not(target_os = "linux"))]
                let group = false;
                if let Some((crowded, gather)) = watcher.look(Ticks::now(), group) {
                    CROWDED.store(crowded, Ordering::Relaxed);
                    GATHER_ON.store(gather, Ordering::Relaxed);
                }
            }
        });
    });
}

/// How often the watcher looks once settled; how often, and for how long, it looks
/// while it settles (a run under load may last a tenth to a third of a second; at the
/// usual 100 ticks a second of `/proc`'s clock a 40 ms look holds four ticks per core,
/// so each settling look judges all since the window began); and how often while the
/// group is gathered (a core chosen beside a busy program is left within a tenth of a
/// second: ten ticks per core).
const WATCH_EVERY: Duration = Duration::from_millis(250);
const SETTLING_EVERY: Duration = Duration::from_millis(40);
const SETTLE_FOR: Duration = Duration::from_millis(250);
const WATCH_GATHERED: Duration = Duration::from_millis(100);

/// How many cores less of others' use another core must carry for a gathered group to
/// move there: more than a look's tick noise (a tick is a tenth of a core in a 100 ms
/// look), less than a busy program sharing the group's core shows (a half to two
/// thirds of it).
const MOVE_FOR: f64 = 0.3;

/// The watcher's judgement from look to look: whether others crowd the machine, and
/// where the group gathers.
struct Watcher {
    /// The cores this process may use.
    allowed: Vec<usize>,
    born: Instant,
    /// The look the window being judged starts from.
    window_start: Option<Ticks>,
    gathered_on: i32,
}

impl Watcher {
    fn new(allowed: Vec<usize>, first: Option<Ticks>) -> Watcher {
        Watcher {
            allowed,
            born: first.as_ref().map_or_else(Instant::now, |t| t.at),
            window_start: first,
            gathered_on: FREE,
        }
    }

    /// How long until the next look.
    fn next_look_in(&self) -> Duration {
        if self.settling(Instant::now()) {
            SETTLING_EVERY
        } else if self.gathered_on == FREE {
            WATCH_EVERY
        } else {
            WATCH_GATHERED
        }
    }

    fn settling(&self, at: Instant) -> bool {
        at.duration_since(self.born) < SETTLE_FOR
    }

    /// Judges the window up to the look `end` (None where `/proc` could not be read):
    /// whether the machine is crowded, and the core a thread `group` gathers on. The
    /// next window starts here once settled, and whenever the group moved: what came
    /// before was measured with its threads elsewhere (each thread's time counts on the
    /// core it last ran on).
    fn look(&mut self, end: Option<Ticks>, group: bool) -> Option<(bool, i32)> {
        let end = end?;
        let Some(start) = &self.window_start else {
            self.window_start = Some(end);
            return None;
        };
        // (other programs on the cores this process may use: a run held to 2 cores of
        // a busy 64-core host is not crowded by the other 62)
        let others = Some(start.others(&end, Some(&self.allowed))).filter(|&c| c >= 0.5);
        let gather = if group {
            gather_on(others, &start.others_per_core(&end, &self.allowed), self.gathered_on)
        } else {
            FREE
        };
        if gather != self.gathered_on || !self.settling(end.at) {
            self.window_start = Some(end);
        }
        self.gathered_on = gather;
        Some((others.is_some(), gather))
    }
}

/// Whether other programs, using `others` cores (half a core or more) of the `allowed`
/// this process may run on, leave it less than one and a half: then a group's workers
/// gather on one core (see the module's comment).
fn full(others: f64, allowed: usize) -> bool {
    others > allowed as f64 - 1.5
}

/// Where the group's workers go after a look: [`FREE`] unless other programs, using
/// `others` cores (None: under half a core), fill the machine; else onto the core that
/// others use least, by `others_per_core` (each allowed core with the cores others used
/// on it). A group already on core `gathered_on` stays unless another core carries
/// [`MOVE_FOR`] less: it leaves a busy program that shares its core, not one that
/// comes and goes.
fn gather_on(others: Option<f64>, others_per_core: &[(usize, f64)], gathered_on: i32) -> i32 {
    if !others.is_some_and(|o| full(o, others_per_core.len())) {
        return FREE;
    }
    let Some(&(quietest, least)) = others_per_core.iter().min_by(|a, b| a.1.total_cmp(&b.1)) else {
        return FREE;
    };
    match others_per_core.iter().find(|&&(core, _)| core as i32 == gathered_on) {
        Some(&(_, here)) if here < least + MOVE_FOR => gathered_on,
        _ => quietest as i32,
    }
}

/// The core a thread group's workers gather on, or [`FREE`]: anywhere on the process's
/// cores.
static GATHER_ON: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(FREE);
const FREE: i32 = -1;
/// Where a thread that just joined the group is: not known (it may have inherited the
/// one core of the worker that started it).
const UNKNOWN: i32 = -2;

/// Makes the calling thread, a worker of a thread group (or a thread of its that waits
/// as the transports do), follow the watcher: onto the core it names while the machine
/// is full, back to the process's cores once it has room. It moves as it next waits.
/// (Only a thread group's: MPI ranks of one machine, each choosing "the least used
/// core", would all choose the same.)
pub fn gather_with_the_group() {
    #[cfg(target_os = "linux")]
    {
        // (the first member was started by a thread that never gathers: its cores are
        // the process's)
        let _ = PROCESS_CORES.get_or_init(affinity);
        let _ = ON.try_with(|on| on.set(Some(UNKNOWN)));
        follow_the_gathering();
    }
}

/// Gives the calling thread the process's cores back, in case it inherited one core
/// from a gathered worker that started it (a compute pool's thread, which does not
/// follow the gathering: it never waits as the transports do).
pub(super) fn not_on_one_core_by_birth() {
    #[cfg(target_os = "linux")]
    if let Some(Some(own)) = PROCESS_CORES.get() {
        set_affinity(own);
    }
}

/// The cores this process may run on (as its first group member found them).
#[cfg(target_os = "linux")]
static PROCESS_CORES: std::sync::OnceLock<Option<libc::cpu_set_t>> = std::sync::OnceLock::new();

#[cfg(target_os = "linux")]
thread_local! {
    /// A member of the group: the core it is on, [`FREE`] or [`UNKNOWN`]; None for
    /// other threads.
    static ON: std::cell::Cell<Option<i32>> = const { std::cell::Cell::new(None) };
}

/// A group member moves where the watcher says, if that changed (called as it waits,
/// and by a member whose waits are not the transports': the parameter server's workers
/// wait on its lock, and call it once an iteration).
pub fn follow_the_gathering() {
    move_to(GATHER_ON.load(Ordering::Relaxed));
}

/// A group member moves onto core `want`, or back to the process's cores ([`FREE`]),
/// unless it is there already; other threads stay where they are.
fn move_to(want: i32) {
    #[cfg(target_os = "linux")]
    let _ = ON.try_with(|on| {
        let Some(at) = on.get() else { return };
        let Some(Some(own)) = PROCESS_CORES.get() else { return };
        if at == want {
            return;
        }
        // (`want` is a core the watcher found in this process's allowed set)
        let set = if want == FREE { *own } else { one_core(want as usize) };
        // (refused: it stays, and tries again as it next waits)
        if set_affinity(&set) {
            on.set(Some(want));
        }
    });
    #[cfg(not(target_os = "linux"))]
    let _ = want;
}

/// The set of the one core `core` (below CPU_SETSIZE).
#[cfg(target_os = "linux")]
fn one_core(core: usize) -> libc::cpu_set_t {
    // SAFETY: an all-zero cpu_set_t is valid; CPU_SET writes one bit of it, and `core`
    // is below CPU_SETSIZE (cores are read from such a set: see `allowed_cores`).
    unsafe {
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut one);
        one
    }
}

/// Sets the calling thread's cores; false where Linux refused.
#[cfg(target_os = "linux")]
fn set_affinity(set: &libc::cpu_set_t) -> bool {
    // SAFETY: sched_setaffinity reads a cpu_set_t of the size given; pid 0 is this thread.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) == 0 }
}

/// The calling thread's set of allowed cores.
#[cfg(target_os = "linux")]
fn affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: an all-zero cpu_set_t is valid; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0).then_some(set)
    }
}

/// The cores the calling thread may run on (None where the system does not say).
fn allowed_cores() -> Option<Vec<usize>> {
    #[cfg(target_os = "linux")]
    return affinity().map(|set| cores_in(&set));
    #[cfg(not(target_os = "linux"))]
    None
}

/// The cores of a set.
#[cfg(target_os = "linux")]
fn cores_in(set: &libc::cpu_set_t) -> Vec<usize> {
    // SAFETY: CPU_ISSET reads a bit of a cpu_set_t we own, below CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, set) })
        .collect()
}

/// Cores that programs other than this one used between two looks `took` apart.
fn others_cores((all0, ours0): (u64, u64), (all1, ours1): (u64, u64), ticks_per_s: f64, took: Duration) -> f64 {
    let others = all1.saturating_sub(all0).saturating_sub(ours1.saturating_sub(ours0));
    cores_used(others, ticks_per_s, took)
}

/// The cores `ticks` of busy time kept busy over `took`.
fn cores_used(ticks: u64, ticks_per_s: f64, took: Duration) -> f64 {
    ticks as f64 / (ticks_per_s * took.as_secs_f64())
}

/// One look at `/proc`: each core's busy ticks, this process's, and each of its threads'
/// with the core it last ran on.
struct Ticks {
    per_core: Vec<u64>,
    ours: u64,
    threads: Vec<ThreadTicks>,
    at: Instant,
}

/// A thread of this process: its id, busy ticks, and the core it last ran on.
struct ThreadTicks {
    id: u32,
    busy: u64,
    core: usize,
}

impl Ticks {
    /// Now (None where the system does not say: only Linux's `/proc` is read).
    fn now() -> Option<Ticks> {
        #[cfg(target_os = "linux")]
        {
            let stat = std::fs::read_to_string("/proc/stat").ok()?;
            let mut per_core = Vec::new();
            for line in stat.lines().skip(1) {
                let Some(rest) = line.strip_prefix("cpu") else { break };
                let mut fields = rest.split_whitespace();
                let core: usize = fields.next()?.parse().ok()?;
                let t: Vec<u64> = fields.filter_map(|v| v.parse().ok()).collect();
                // user nice system (idle iowait) irq softirq; steal is the host's
                per_core.resize(per_core.len().max(core + 1), 0);
                per_core[core] = t.first()? + t.get(1)? + t.get(2)? + t.get(5)? + t.get(6)?;
            }
            let (ours, _) = task_busy_and_core(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
            // (a thread that ends between the listing and its reading is left out; where
            // the list cannot be read, this process counts as others core by core)
            let threads = std::fs::read_dir("/proc/self/task")
                .map(|entries| {
                    entries
                        .filter_map(|entry| {
                            let entry = entry.ok()?;
                            let id = entry.file_name().to_str()?.parse().ok()?;
                            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
                            let (busy, core) = task_busy_and_core(&stat)?;
                            Some(ThreadTicks { id, busy, core })
                        })
                        .collect()
                })
                .unwrap_or_default();
            Some(Ticks {
                per_core,
                ours,
                threads,
                at: Instant::now(),
            })
        }
        #[cfg(not(target_os = "linux"))]
        None
    }

    /// Busy ticks of `cores` (None: every core).
    fn busy(&self, cores: Option<&[usize]>) -> u64 {
        match cores {
            None => self.per_core.iter().sum(),
            Some(cores) => cores.iter().filter_map(|&c| self.per_core.get(c)).sum(),
        }
    }

    /// Cores that other programs used on `cores` (None: the whole machine) from this
    /// look to `later`.
    fn others(&self, later: &Ticks, cores: Option<&[usize]>) -> f64 {
        others_cores(
            (self.busy(cores), self.ours),
            (later.busy(cores), later.ours),
            clock_ticks(),
            later.at.duration_since(self.at),
        )
    }

    /// Cores that other programs used on each of `cores` from this look to `later`: a
    /// core's busy ticks less those of this process's threads that last ran there (a
    /// thread that moved between cores in between counts where it ended: exact for a
    /// group gathered all along, an estimate for spread workers).
    fn others_per_core(&self, later: &Ticks, cores: &[usize]) -> Vec<(usize, f64)> {
        let before: std::collections::HashMap<u32, u64> = self.threads.iter().map(|t| (t.id, t.busy)).collect();
        let mut ours: std::collections::HashMap<usize, u64> = std::collections::HashMap::new();
        for t in &later.threads {
            let since = t.busy.saturating_sub(before.get(&t.id).copied().unwrap_or(0));
            *ours.entry(t.core).or_default() += since;
        }
        let took = later.at.duration_since(self.at);
        cores
            .iter()
            .map(|&c| {
                let busy = |look: &Ticks| look.per_core.get(c).copied().unwrap_or(0);
                let others = busy(later)
                    .saturating_sub(busy(self))
                    .saturating_sub(ours.get(&c).copied().unwrap_or(0));
                (c, cores_used(others, clock_ticks(), took))
            })
            .collect()
    }
}

/// A task's busy ticks (user and system) and the core it last ran on, from its
/// `/proc/…/stat` line.
fn task_busy_and_core(stat: &str) -> Option<(u64, usize)> {
    // fields after the command (which may hold spaces), from the closing parenthesis:
    // utime and stime are fields 14 and 15, the processor field 39
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let busy = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
    Some((busy, rest.get(36)?.parse().ok()?))
}

/// Measures how many cores other programs use from its start to a look.
pub struct OthersMeter {
    start: Option<Ticks>,
}

impl OthersMeter {
    pub fn start() -> Self {
        OthersMeter { start: Ticks::now() }
    }

    /// Cores other programs used on average on the whole machine since the start (None
    /// where the system does not say: only Linux's `/proc` is read).
    pub fn cores(&self) -> Option<f64> {
        Some(self.start.as_ref()?.others(&Ticks::now()?, None))
    }
}

/// The unit of `/proc`'s CPU times, per second.
fn clock_ticks() -> f64 {
    #[cfg(target_os = "linux")]
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        t if t > 0 => return t as f64,
        _ => {}
    }
    100.0
}

/// Whether other programs were using half a core or more at the last look.
pub fn crowded() -> bool {
    CROWDED.load(Ordering::Relaxed)
}

/// A futex word that changes whenever the state a waiter may wait for changes.
#[derive(Debug, Default)]
pub struct Doorbell {
    rings: AtomicU32,
    sleepers: AtomicU32,
}

impl Doorbell {
    /// Call after changing the watched state: wakes whoever sleeps on it.
    pub fn ring(&self) {
        self.rings.fetch_add(1, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            atomic_wait::wake_all(&self.rings);
        }
    }
}

/// Waits until `ready()` holds, sleeping on `bell` once spinning did not pay; fails with
/// `Aborted` as soon as `abort` is set (abort rings every bell). `ready` is not asked
/// again once it said true (it may take what it waited for: see [`BellReceiver`]).
pub fn wait_until(abort: &AtomicBool, bell: &Doorbell, ready: impl FnMut() -> bool) -> Result<()> {
    wait_until_as(crowded(), abort, bell, ready)
}

/// [`wait_until`] on a machine that is `crowded` or not.
fn wait_until_as(crowded: bool, abort: &AtomicBool, bell: &Doorbell, mut ready: impl FnMut() -> bool) -> Result<()> {
    if ready() {
        return Ok(());
    }
    follow_the_gathering();
    // (crowded: even a short spin measured slower than sleeping at once)
    if !crowded && spin_then_yield(abort, &mut ready) {
        return Ok(());
    }
    loop {
        if ready() {
            return Ok(());
        }
        if abort.load(Ordering::SeqCst) {
            return Err(CommError::Aborted);
        }
        // Announce ourselves, then look once more: a ring after this point wakes us, a
        // ring before it changed `rings` (so the futex returns at once) or `ready()`.
        bell.sleepers.fetch_add(1, Ordering::SeqCst);
        let seen = bell.rings.load(Ordering::SeqCst);
        let now = ready();
        if !now && !abort.load(Ordering::SeqCst) {
            atomic_wait::wait(&bell.rings, seen);
        }
        bell.sleepers.fetch_sub(1, Ordering::SeqCst);
        if now {
            return Ok(());
        }
    }
}

/// Spins, then yields for a moment, until `ready()` (true) or that time is over.
fn spin_then_yield(abort: &AtomicBool, ready: &mut impl FnMut() -> bool) -> bool {
    for _ in 0..SPINS {
        if ready() {
            return true;
        }
        std::hint::spin_loop();
    }
    let start = Instant::now();
    while start.elapsed() < YIELD_FOR && !abort.load(Ordering::Relaxed) {
        if ready() {
            return true;
        }
        std::thread::yield_now();
    }
    ready()
}

/// A channel between two threads of a worker whose receiver waits as the transports'
/// waiters do ([`wait_until`]: spinning only on an idle machine, sleeping at once on a
/// busy one, following the gathering) rather than with crossbeam's back-off, whose
/// yields hand a shared core to another program for its whole time slice (beside two
/// busy processes an overlapped run made 19 yields a step, and kept 0.15× of its idle
/// speed). The queue itself is crossbeam's.
pub fn channel<T>() -> (BellSender<T>, BellReceiver<T>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let bell = std::sync::Arc::new(Doorbell::default());
    (
        BellSender {
            tx: Some(tx),
            bell: std::sync::Arc::clone(&bell),
        },
        BellReceiver { rx, bell },
    )
}

/// The sending end of a [`channel`].
pub struct BellSender<T> {
    /// (an Option, so that dropping disconnects before the bell rings)
    tx: Option<crossbeam_channel::Sender<T>>,
    bell: std::sync::Arc<Doorbell>,
}

impl<T> BellSender<T> {
    /// Sends `value`; gives it back when the receiver is gone.
    pub fn send(&self, value: T) -> std::result::Result<(), T> {
        let tx = self.tx.as_ref().expect("only taken when dropped");
        tx.send(value).map_err(|e| e.0)?;
        self.bell.ring();
        Ok(())
    }
}

impl<T> Drop for BellSender<T> {
    /// Disconnects, then wakes the receiver so that it sees it.
    fn drop(&mut self) {
        drop(self.tx.take());
        self.bell.ring();
    }
}

/// The receiving end of a [`channel`].
pub struct BellReceiver<T> {
    rx: crossbeam_channel::Receiver<T>,
    bell: std::sync::Arc<Doorbell>,
}

impl<T> BellReceiver<T> {
    /// The next value, or None once the sender is gone and every value was received.
    /// Like crossbeam's, it waits as long as the sender lives and sends nothing (the
    /// overlap's sender ends with the worker, which drops it on any end).
    pub fn recv(&self) -> Option<T> {
        let never = AtomicBool::new(false);
        let mut got = None;
        let _ = wait_until(&never, &self.bell, || match self.rx.try_recv() {
            Ok(value) => {
                got = Some(value);
                true
            }
            Err(crossbeam_channel::TryRecvError::Empty) => false,
            Err(crossbeam_channel::TryRecvError::Disconnected) => true,
        });
        got
    }
}

/// Waits until the clock reads `deadline_ns`: sleeps while far away, spins when close.
pub fn wait_for_clock(abort: &AtomicBool, clock: &Clock, deadline_ns: u64) -> Result<()> {
    const SLACK_NS: u64 = 120_000; // sleep() overshoots by tens of µs
    loop {
        let now = clock.ns();
        if now >= deadline_ns {
            return Ok(());
        }
        if abort.load(Ordering::Relaxed) {
            return Err(CommError::Aborted);
        }
        let left = deadline_ns - now;
        if left > SLACK_NS {
            std::thread::sleep(Duration::from_nanos((left - SLACK_NS).min(20_000_000)));
        } else {
            // Spin, not yield: when threads outnumber cores, a yield hands the core to a
            // computing thread for its whole time slice (milliseconds), not 100 µs.
            std::hint::spin_loop();
        }
    }
}

/// Sleeps for `d` more precisely than `thread::sleep` alone (which overshoots by tens of
/// microseconds): sleeps most of it, then spins until the time is up.
pub fn precise_sleep(d: Duration) {
    const SLACK: Duration = Duration::from_micros(120);
    let until = Instant::now() + d;
    if d > SLACK {
        std::thread::sleep(d - SLACK);
    }
    while Instant::now() < until {
        std::hint::spin_loop(); // (see `wait_for_clock`)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn others_use_what_the_machine_used_less_this_process() {
        // 100 ticks a second; in 0.5 s the machine was busy 80 ticks, this process 30.
        let cores = others_cores((1000, 200), (1080, 230), 100.0, Duration::from_millis(500));
        assert!((cores - 1.0).abs() < 1e-9, "{cores}");
        // this process alone: nobody else; counters never go back below zero
        assert_eq!(
            others_cores((1000, 200), (1030, 230), 100.0, Duration::from_millis(500)),
            0.0
        );
        assert_eq!(
            others_cores((1000, 200), (1010, 230), 100.0, Duration::from_millis(500)),
            0.0
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_busy_process_beside_this_one_is_measured() {
        let meter = OthersMeter::start();
        let mut busy = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(800));
        let cores = meter.cores();
        let _ = busy.kill();
        let _ = busy.wait();
        // (a whole core, less the moment it took to start; more if the machine is busier)
        assert!(cores.unwrap() >= 0.6, "{cores:?}");
    }

    #[test]
    fn the_workers_gather_when_others_leave_them_less_than_one_and_a_half_cores() {
        assert!(full(1.0, 2), "one busy process on 2 cores");
        assert!(full(2.0, 2), "two on 2 cores");
        assert!(!full(1.0, 4), "one on 4 cores: 3 free");
        assert!(full(2.6, 4));
        assert!(!full(2.0, 16));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_group_worker_moves_onto_the_core_named_and_back_and_other_threads_do_not() {
        let cores = || allowed_cores().unwrap();
        std::thread::spawn(move || {
            let own = cores();
            if own.len() < 2 {
                eprintln!("skipped: one core allowed, nowhere to gather that differs");
                return;
            }
            let last = *own.last().unwrap() as i32;
            // not a member: it stays
            move_to(last);
            assert_eq!(cores(), own);
            gather_with_the_group();
            move_to(last);
            assert_eq!(cores(), vec![last as usize]);
            // a thread this member starts inherits its one core: a member that joins
            // goes where the group is, another thread gets the process's cores back
            std::thread::spawn(move || {
                assert_eq!(cores(), vec![last as usize]);
                gather_with_the_group();
                move_to(FREE);
                assert_eq!(cores(), own_cores());
            })
            .join()
            .unwrap();
            std::thread::spawn(move || {
                not_on_one_core_by_birth();
                assert_eq!(cores(), own_cores());
            })
            .join()
            .unwrap();
            move_to(FREE);
            assert_eq!(cores(), own);
        })
        .join()
        .unwrap();
    }

    /// The process's cores, as the first group member found them.
    #[cfg(target_os = "linux")]
    fn own_cores() -> Vec<usize> {
        cores_in(&PROCESS_CORES.get().copied().flatten().unwrap())
    }

    #[test]
    fn the_group_gathers_on_the_core_others_use_least_and_leaves_one_a_busy_program_shares() {
        // not full: anywhere, gathered or not
        assert_eq!(gather_on(None, &[(0, 0.2), (1, 0.1)], FREE), FREE);
        let four = [(0, 0.0), (1, 0.6), (2, 0.0), (3, 0.0)];
        assert_eq!(gather_on(Some(0.6), &four, 0), FREE, "0.6 of 4 cores");
        // one busy program on core 0 of 2: onto core 1; gathered beside it: leave it,
        // also when it gets only a half of the core the group shares with it
        assert_eq!(gather_on(Some(1.0), &[(0, 1.0), (1, 0.0)], FREE), 1);
        assert_eq!(gather_on(Some(1.0), &[(0, 0.9), (1, 0.1)], 0), 1);
        assert_eq!(gather_on(Some(1.0), &[(0, 0.55), (1, 0.0)], 0), 1);
        // one on each core: stay where the group is (moving gains nothing), also through
        // a look's noise
        assert_eq!(gather_on(Some(2.0), &[(0, 1.0), (1, 1.0)], 1), 1);
        assert_eq!(gather_on(Some(2.0), &[(0, 0.8), (1, 1.05)], 1), 1);
        assert_eq!(gather_on(Some(1.6), &[(0, 1.0), (1, 0.6)], 0), 1, "0.4 less on core 1");
        // cores of the process that are not 0 and 1
        assert_eq!(gather_on(Some(2.0), &[(4, 1.0), (6, 0.1), (7, 0.9)], FREE), 6);
        assert_eq!(gather_on(Some(2.0), &[(4, 1.0), (6, 0.1), (7, 0.9)], 7), 6);
    }

    /// A look at `ms` after `t0`: each core's busy ticks, this process's threads as
    /// (id, busy ticks, core), and their sum as its own.
    fn look(t0: Instant, ms: u64, per_core: [u64; 2], threads: &[(u32, u64, usize)]) -> Option<Ticks> {
        Some(Ticks {
            per_core: per_core.to_vec(),
            ours: threads.iter().map(|t| t.1).sum(),
            threads: threads
                .iter()
                .map(|&(id, busy, core)| ThreadTicks { id, busy, core })
                .collect(),
            at: t0 + Duration::from_millis(ms),
        })
    }

    #[test]
    fn the_watcher_judges_a_gathered_group_by_what_came_after_it_moved() {
        // Ticks a second of /proc's clock: the looks below are written for 100.
        let tick = |n: u64| (n as f64 * clock_ticks() / 100.0).round() as u64;
        let t0 = Instant::now();
        let mut w = Watcher::new(vec![0, 1], look(t0, 0, [0, 0], &[(7, 0, 0)]));
        // 40 ms: a busy program used core 1 (4 ticks); our worker 7 used core 0
        // (4 ticks) and ended its look on core 0: crowded, gather on core 0.
        let first = look(t0, 40, [tick(4), tick(4)], &[(7, tick(4), 0)]);
        assert_eq!(w.look(first, true), Some((true, 0)));
        // 80 ms: the busy program moved onto core 0 (3 of its 4 ticks; ours 1). Judged
        // since the start (core 0: 7 busy less our 5; core 1: 4) the group would stay;
        // judged since it gathered (core 0: 3; core 1: 0) it leaves.
        let second = look(t0, 80, [tick(8), tick(4)], &[(7, tick(5), 0)]);
        assert_eq!(w.look(second, true), Some((true, 1)));
        // not a thread group's process (an MPI rank's pools): never gathered
        let mut rank = Watcher::new(vec![0, 1], look(t0, 0, [0, 0], &[]));
        assert_eq!(
            rank.look(look(t0, 40, [tick(4), tick(4)], &[]), false),
            Some((true, FREE))
        );
        // a look /proc did not give changes nothing
        assert_eq!(rank.look(None, false), None);
    }

    #[test]
    fn the_watcher_settles_in_one_growing_window_then_judges_each_look_alone() {
        let tick = |n: u64| (n as f64 * clock_ticks() / 100.0).round() as u64;
        let t0 = Instant::now();
        let mut w = Watcher::new(vec![0, 1], look(t0, 0, [0, 0], &[]));
        // 40 ms: one stray tick (a quarter core: not crowded); the window keeps growing
        assert_eq!(w.look(look(t0, 40, [tick(1), 0], &[]), true), Some((false, FREE)));
        // 80 ms: a busy program since 40 ms: 5 ticks in 80 ms, judged together
        assert_eq!(w.look(look(t0, 80, [tick(5), 0], &[]), true), Some((true, 1)));
        // past the settling: each look judges only itself (the program left at 250 ms)
        let settled = look(t0, 260, [tick(22), 0], &[]);
        assert_eq!(w.look(settled, true), Some((true, 1)));
        assert_eq!(w.look(look(t0, 360, [tick(22), 0], &[]), true), Some((false, FREE)));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_busy_thread_of_this_process_is_not_counted_as_others_on_its_core() {
        let allowed = allowed_cores().unwrap();
        let core = allowed[0];
        let start = Ticks::now().unwrap();
        // a thread of ours, busy on one core for half a second (looked at before it ends:
        // an ended thread is not listed)
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let stop = std::sync::Arc::clone(&done);
        let busy_thread = std::thread::spawn(move || {
            assert!(set_affinity(&one_core(core)));
            while !stop.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
        std::thread::sleep(Duration::from_millis(500));
        let end = Ticks::now().unwrap();
        done.store(true, Ordering::Relaxed);
        busy_thread.join().unwrap();
        let took = end.at.duration_since(start.at);
        let share = |ticks: u64| cores_used(ticks, clock_ticks(), took);
        let busy = share(end.per_core[core].saturating_sub(start.per_core[core]));
        // the spinner's own share of its core (others, or the host, may take some)
        let before: u64 = start.threads.iter().filter(|t| t.core == core).map(|t| t.busy).sum();
        let ours = share(
            end.threads
                .iter()
                .filter(|t| t.core == core)
                .map(|t| t.busy)
                .sum::<u64>()
                .saturating_sub(before),
        );
        if ours < 0.3 {
            eprintln!("skipped: this process got {ours:.2} of core {core}, too little to tell");
            return;
        }
        let (_, others) = start.others_per_core(&end, &[core])[0];
        assert!(
            others + ours <= busy + 0.1,
            "others {others:.2} + ours {ours:.2} on a core busy {busy:.2}: ours counted as others"
        );
        assert_eq!(start.others(&end, Some(&[])), 0.0);
        assert!(start.others(&end, Some(&allowed[..1])) <= start.others(&end, None) + 1e-9);
    }

    #[test]
    fn a_bell_channel_delivers_in_order_and_ends_when_the_sender_goes() {
        let (tx, rx) = channel::<u32>();
        let sender = std::thread::spawn(move || {
            for v in 0..1000 {
                if v % 100 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
                tx.send(v).unwrap();
            }
        });
        let got: Vec<u32> = std::iter::from_fn(|| rx.recv()).collect();
        sender.join().unwrap();
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
        // a request and its answer, many times
        let (ask, asked) = channel::<u32>();
        let (answer, answered) = channel::<u32>();
        let server = std::thread::spawn(move || {
            while let Some(v) = asked.recv() {
                answer.send(v + 1).unwrap();
            }
        });
        for v in 0..20_000 {
            ask.send(v).unwrap();
            assert_eq!(answered.recv(), Some(v + 1));
        }
        drop(ask);
        server.join().unwrap();
        // a receiver gone: the value comes back
        let (tx, rx) = channel::<u32>();
        drop(rx);
        assert_eq!(tx.send(7), Err(7));
    }

    #[test]
    fn a_wait_never_asks_again_once_ready_said_true() {
        // Ready as the waiter lies down (the third look, crowded): it returns, and does
        // not ask again (a channel's look takes the value: asking again lost it, and an
        // overlapped run hung).
        let (abort, bell) = (AtomicBool::new(false), Doorbell::default());
        let mut asked = 0;
        wait_until_as(true, &abort, &bell, || {
            asked += 1;
            assert!(asked <= 3, "asked again after it said true");
            asked == 3
        })
        .unwrap();
        assert_eq!(asked, 3);
    }

    #[test]
    fn a_crowded_wait_still_sees_the_state_change() {
        // Sleeping at once (crowded) must not miss a ring that came before the sleep.
        let abort = AtomicBool::new(false);
        let bell = std::sync::Arc::new(Doorbell::default());
        let flag = std::sync::Arc::new(AtomicBool::new(false));
        let (b, f) = (std::sync::Arc::clone(&bell), std::sync::Arc::clone(&flag));
        let ringer = std::thread::spawn(move || {
            for _ in 0..1000 {
                std::thread::yield_now();
            }
            f.store(true, Ordering::SeqCst);
            b.ring();
        });
        wait_until_as(true, &abort, &bell, || flag.load(Ordering::SeqCst)).unwrap();
        ringer.join().unwrap();
    }
}
