//! A session's workers for the length of a run: they hand out each layer's parts through
//! atomic claim words and wait for the next layer by spinning, not by sleeping.
//!
//! Why not a rayon parallel loop per layer: measured on this project's 2-vCPU VMs, a
//! parked rayon worker takes 25–50 µs to wake, rayon parks an idle worker after a few
//! microseconds, and `ThreadPool::install` from outside the pool costs about 60 µs per
//! call (the caller sleeps, then is woken). A model is 20–60 parallel layers of 20–200 µs
//! with short serial gaps between them, so nearly every layer paid a wake-up: MobileNetV2
//! ran 1.1× faster on 2 threads than on 1.
//!
//! A [`Team`] is a leader (the thread that runs the model) and helpers. The leader
//! publishes one job at a time ([`Team::share`]: a function of `(slot, part)` and a part
//! count); every member claims parts with a compare-and-swap until none is left, and the
//! leader waits until all are done. Which member runs a part never changes its result
//! (the kernels compute each output element the same way in any tile order), so results
//! stay bit-identical.
//!
//! Parts are dealt in contiguous ranges, one per member, each in its own claim word
//! (epoch, end, next): a member takes its own range from the front, then steals from the
//! back of the others'. Kernels number their parts in memory order (tile blocks, pixel
//! blocks, samples), so a member keeps working on the same region of each layer's
//! activations layer after layer and mostly reads what its own core wrote, while a late
//! or slow member still gets help. Measured on 2 vCPUs against one shared claim word
//! (each part to whoever came first, so each core read about half of its input from the
//! other core's cache): conv3x3_stress 1.45 → 1.31 ms, ResNet-18 11.0 → 10.75 ms.
//!
//! Helpers come from one of two places:
//! - [`Crew`]: threads a session owns (`Threads::Count`). The caller's thread leads, so a
//!   run costs no hand-off to another thread; helpers spin while a run is in progress and
//!   for [`GRACE`] after it (a service's next request often follows at once), then park.
//! - [`lead_on_pool`]: a caller-supplied rayon pool (`Threads::Pool`). The run is
//!   installed on the pool and helpers are recruited with `rayon::join` for its length;
//!   they return to rayon (which parks them) when it ends.
//!
//! Idle workers do not spin: outside a run (plus the grace period) every helper is parked.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a crew's helpers keep spinning after a run before they park.
pub const GRACE: Duration = Duration::from_micros(200);
/// Within a run, how long a helper spins without work before it also yields its core
/// between checks (a long serial layer on the leader).
const SPIN_BEFORE_YIELD: Duration = Duration::from_micros(50);

/// Range claim word: epoch (bits 40..64) | end of the range (20..40) | next unclaimed
/// part from the front (0..20). The range is empty when next >= end.
const PART_BITS: u32 = 20;
const MAX_PARTS: usize = (1 << PART_BITS) - 1;
const END_SHIFT: u32 = PART_BITS;
const EPOCH_SHIFT: u32 = 2 * PART_BITS;
const FIELD: u64 = MAX_PARTS as u64;
/// Claim ranges per team: members beyond this share ranges (slot modulo), which stays
/// correct and only loosens the affinity. Inline, so a team needs no allocation.
const MAX_RANGES: usize = 64;

/// One member's claim range on a cache line of its own (members claim from their own
/// range most of the time).
#[repr(align(64))]
struct Range(AtomicU64);

impl Range {
    /// Takes the first unclaimed part (`front`) or the last one, if any.
    fn claim(&self, front: bool) -> Option<usize> {
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            let (next, end) = (cur & FIELD, (cur >> END_SHIFT) & FIELD);
            if next >= end {
                return None;
            }
            // next < end <= MAX_PARTS: raising next or lowering end stays inside its
            // field.
            let (new, part) = if front {
                (cur + 1, next)
            } else {
                (cur - (1 << END_SHIFT), end - 1)
            };
            match self
                .0
                .compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(part as usize),
                Err(now) => cur = now,
            }
        }
    }
}

type PartFn<'a> = dyn Fn(usize, usize) + Sync + 'a;

/// The job being shared; lives on the leader's stack for the length of [`Team::share`].
struct Job<'a> {
    f: &'a PartFn<'a>,
}

/// The job board the members of one session's team share.
pub struct Team {
    size: usize,
    /// Ranges in use: min(size, MAX_RANGES).
    nranges: usize,
    ranges: [Range; MAX_RANGES],
    /// The current job's epoch (written by the leader only).
    epoch: AtomicU64,
    job: AtomicPtr<Job<'static>>,
    done: AtomicUsize,
    panicked: AtomicBool,
    /// A run is in progress: helpers spin for jobs instead of parking.
    running: AtomicBool,
    shutdown: AtomicBool,
    /// Slots handed to helpers recruited from a rayon pool.
    joined: AtomicUsize,
    /// Crew helpers that have started (a thread's start-up allocates; `Crew::new` waits
    /// for it, so that none happens inside a run).
    started: AtomicUsize,
}

thread_local! {
    /// The team this thread leads, while it runs a model.
    static CURRENT: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
}

/// Sets [`CURRENT`] for the leader's run and clears `running` when the run ends (also on
/// a panic, so that helpers do not spin on).
struct Leading<'a> {
    team: &'a Team,
    previous: *const Team,
}

impl<'a> Leading<'a> {
    fn start(team: &'a Team) -> Self {
        let previous = CURRENT.with(|c| c.replace(team as *const Team));
        Leading { team, previous }
    }
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.previous));
        self.team.running.store(false, Ordering::Release);
    }
}

impl Team {
    fn new(size: usize) -> Team {
        Team {
            size: size.max(1),
            nranges: size.clamp(1, MAX_RANGES),
            ranges: std::array::from_fn(|_| Range(AtomicU64::new(0))),
            epoch: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            running: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            joined: AtomicUsize::new(1),
            started: AtomicUsize::new(0),
        }
    }

    /// Runs `f(slot, part)` for every `part < parts` on the members of this team (the
    /// caller, its leader, takes part too) and returns when all are done. Only the
    /// leader calls this. A panic in any part is re-raised here once all parts are done.
    pub fn share(&self, parts: usize, f: &PartFn<'_>) {
        let mut base = 0;
        while base < parts {
            let n = (parts - base).min(MAX_PARTS);
            let g = move |slot: usize, p: usize| f(slot, base + p);
            self.share_chunk(n, &g);
            base += n;
        }
        if self.panicked.swap(false, Ordering::Relaxed) {
            panic!("a kernel panicked on a worker thread");
        }
    }

    fn share_chunk(&self, parts: usize, f: &PartFn<'_>) {
        debug_assert!(parts <= MAX_PARTS);
        let job = Job { f };
        // No member touches `done` or `job` of the previous job any more: the leader
        // waited for all its parts, and helpers dereference `job` only for a part they
        // claimed.
        self.done.store(0, Ordering::Relaxed);
        self.job.store(
            &job as *const Job<'_> as *mut Job<'static>,
            Ordering::Relaxed,
        );
        let epoch = (self.epoch.load(Ordering::Relaxed) + 1) & 0xff_ffff;
        self.epoch.store(epoch, Ordering::Relaxed);
        // Contiguous ranges, one per member (member s of n takes parts s·P/n ..). Release:
        // a member that claims a part of this epoch sees `job` and `done` above.
        let n = self.nranges;
        for (r, range) in self.ranges[..n].iter().enumerate() {
            let (start, end) = (r * parts / n, (r + 1) * parts / n);
            range.0.store(
                (epoch << EPOCH_SHIFT) | ((end as u64) << END_SHIFT) | start as u64,
                Ordering::Release,
            );
        }
        self.work(0);
        while self.done.load(Ordering::Acquire) < parts {
            std::hint::spin_loop();
        }
    }

    /// The next part for the member in `slot`: the front of its own range, else the back
    /// of another's (nearest first).
    fn claim(&self, slot: usize) -> Option<usize> {
        let n = self.nranges;
        let own = slot % n;
        if let Some(p) = self.ranges[own].claim(true) {
            return Some(p);
        }
        (1..n).find_map(|i| self.ranges[(own + i) % n].claim(false))
    }

    /// Claims and runs parts of the current job until none is left; whether it ran any.
    fn work(&self, slot: usize) -> bool {
        let mut ran = false;
        while let Some(part) = self.claim(slot) {
            let job = self.job.load(Ordering::Acquire);
            // SAFETY: `part` of this epoch is now ours and not yet done, so the leader is
            // still inside `share_chunk` of this epoch, whose `Job` (stored before the
            // range word we claimed from) is alive.
            let f = unsafe { (*job).f };
            if catch_unwind(AssertUnwindSafe(|| f(slot, part))).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
            self.done.fetch_add(1, Ordering::Release);
            ran = true;
        }
        ran
    }

    /// A helper inside a run: takes parts until the run ends (or the team shuts down).
    fn help_run(&self, slot: usize) {
        let mut idle_since: Option<Instant> = None;
        let mut spins = 0u32;
        loop {
            if self.work(slot) {
                idle_since = None;
                continue;
            }
            if !self.running.load(Ordering::Acquire) || self.shutdown.load(Ordering::Acquire) {
                return;
            }
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) {
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() > SPIN_BEFORE_YIELD {
                    std::thread::yield_now();
                }
            }
        }
    }
}

/// Runs `f(slot, part)` for every `part < parts` on the team this thread leads; `false`
/// (and nothing run) when it leads none. `scratch_slots`: `f` may use slots below it only
/// (fewer than the team's members runs nothing and returns `false`).
pub fn share_current(parts: usize, scratch_slots: usize, f: &PartFn<'_>) -> bool {
    let team = CURRENT.with(|c| c.get());
    if team.is_null() {
        return false;
    }
    // SAFETY: CURRENT is set only by `Leading`, on this thread, for as long as the team
    // it points at is borrowed by the leading call below us on this stack.
    let team = unsafe { &*team };
    if scratch_slots < team.size {
        return false;
    }
    team.share(parts, f);
    true
}

/// Helper threads a session owns; the thread that calls [`Crew::lead`] is the leader.
pub struct Crew {
    team: Arc<Team>,
    helpers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Crew {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Crew({} threads)", self.team.size)
    }
}

impl Crew {
    /// A team of `threads` members: the caller of `lead` plus `threads − 1` new threads.
    pub fn new(threads: usize) -> std::io::Result<Crew> {
        let team = Arc::new(Team::new(threads));
        let mut helpers = Vec::with_capacity(threads.saturating_sub(1));
        for slot in 1..threads.max(1) {
            let t = team.clone();
            let h = std::thread::Builder::new()
                .name(format!("cnnrt-{slot}"))
                .spawn(move || crew_helper(&t, slot));
            match h {
                Ok(h) => helpers.push(h),
                Err(e) => {
                    let crew = Crew { team, helpers };
                    drop(crew);
                    return Err(e);
                }
            }
        }
        while team.started.load(Ordering::Acquire) < helpers.len() {
            std::thread::yield_now();
        }
        Ok(Crew { team, helpers })
    }

    pub fn size(&self) -> usize {
        self.team.size
    }

    /// Runs `body` on this thread as the team's leader (kernels inside share their parts
    /// with the helpers).
    pub fn lead<R>(&self, body: impl FnOnce() -> R) -> R {
        self.team.running.store(true, Ordering::SeqCst);
        for h in &self.helpers {
            // Cheap (one atomic) unless the helper is parked; a helper that parks after
            // this finds the token and returns at once.
            h.thread().unpark();
        }
        let _leading = Leading::start(&self.team);
        body()
    }
}

impl Drop for Crew {
    fn drop(&mut self) {
        self.team.shutdown.store(true, Ordering::SeqCst);
        for h in self.helpers.drain(..) {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

fn crew_helper(team: &Team, slot: usize) {
    crate::simd::set_flush_denormals();
    // Touch what the first park needs (the thread handle), then report in.
    let _ = std::thread::current();
    team.started.fetch_add(1, Ordering::Release);
    loop {
        // Between runs: park, unless within the grace period after the last one.
        let ended = Instant::now();
        let mut spins = 0u32;
        while !team.running.load(Ordering::Acquire) {
            if team.shutdown.load(Ordering::Acquire) {
                return;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) && ended.elapsed() > GRACE {
                std::thread::park();
            } else {
                std::hint::spin_loop();
            }
        }
        if team.shutdown.load(Ordering::Acquire) {
            return;
        }
        team.help_run(slot);
    }
}

/// Runs `body` on `pool` as the leader of a team of the pool's threads, recruited with
/// `rayon::join` for the length of the run.
pub fn lead_on_pool<R: Send>(pool: &rayon::ThreadPool, body: impl FnOnce() -> R + Send) -> R {
    pool.install(|| {
        let team = Team::new(rayon::current_num_threads());
        team.running.store(true, Ordering::SeqCst);
        let mut out = None;
        recruit(&team, team.size - 1, || {
            let _leading = Leading::start(&team);
            out = Some(body());
        });
        match out {
            Some(r) => r,
            None => unreachable!("the leader ran"),
        }
    })
}

fn recruit(team: &Team, helpers: usize, leader: impl FnOnce() + Send) {
    if helpers == 0 {
        leader();
        return;
    }
    rayon::join(
        || recruit(team, helpers - 1, leader),
        || {
            // Unstolen (the pool was busy), this runs after the leader: nothing to do.
            if !team.running.load(Ordering::Acquire) {
                return;
            }
            let slot = team.joined.fetch_add(1, Ordering::Relaxed);
            if slot < team.size {
                crate::simd::set_flush_denormals();
                team.help_run(slot);
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    /// The members of the team this thread leads (1 when it leads none).
    fn current_size() -> usize {
        let team = CURRENT.with(|c| c.get());
        if team.is_null() {
            1
        } else {
            // SAFETY: as in `share_current`.
            unsafe { (*team).size }
        }
    }

    /// Many jobs of uneven part counts: every part runs exactly once, on a valid slot.
    fn check_parts(lead: impl Fn(&(dyn Fn() + Sync))) {
        let counts: Vec<AtomicU32> = (0..64).map(|_| AtomicU32::new(0)).collect();
        let bad_slot = AtomicBool::new(false);
        lead(&|| {
            let size = current_size();
            for job in 0..500usize {
                let parts = job % 61 + 1;
                let f = |slot: usize, p: usize| {
                    if slot >= size {
                        bad_slot.store(true, Ordering::Relaxed);
                    }
                    counts[p].fetch_add(1, Ordering::Relaxed);
                };
                assert!(share_current(parts, size, &f));
            }
        });
        assert!(!bad_slot.load(Ordering::Relaxed));
        for (p, c) in counts.iter().enumerate() {
            let want = (0..500).filter(|job| job % 61 >= p).count() as u32;
            assert_eq!(c.load(Ordering::Relaxed), want, "part {p}");
        }
    }

    /// A member takes its own range from the front, then steals the others' from the
    /// back, nearest range first: alone in a team of 3 (ranges 0..3, 3..6, 6..10), the
    /// leader runs 0, 1, 2, then 5, 4, 3, then 9, 8, 7, 6.
    #[test]
    fn claims_own_range_first_then_steals_from_the_back() {
        let team = Team::new(3);
        let order = std::sync::Mutex::new(Vec::new());
        team.share(10, &|slot, p| {
            assert_eq!(slot, 0);
            order.lock().unwrap().push(p);
        });
        assert_eq!(*order.lock().unwrap(), [0, 1, 2, 5, 4, 3, 9, 8, 7, 6]);
    }

    #[test]
    fn crew_runs_every_part_once() {
        let crew = Crew::new(3).unwrap();
        assert_eq!(crew.size(), 3);
        for _ in 0..3 {
            check_parts(|body| crew.lead(body));
            // Past the grace period, so the next run wakes parked helpers.
            std::thread::sleep(GRACE * 3);
        }
    }

    #[test]
    fn pool_team_runs_every_part_once() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for _ in 0..3 {
            check_parts(|body| lead_on_pool(&pool, body));
        }
    }

    #[test]
    fn no_team_outside_a_run() {
        assert_eq!(current_size(), 1);
        assert!(!share_current(4, usize::MAX, &|_, _| {}));
        let crew = Crew::new(2).unwrap();
        crew.lead(|| assert_eq!(current_size(), 2));
        assert_eq!(current_size(), 1);
        // Too little scratch for the team: the caller must run the parts itself.
        crew.lead(|| assert!(!share_current(4, 1, &|_, _| {})));
    }

    #[test]
    fn a_panicking_part_is_reraised_after_all_parts_ran() {
        let crew = Crew::new(2).unwrap();
        let ran = AtomicU32::new(0);
        let r = catch_unwind(AssertUnwindSafe(|| {
            crew.lead(|| {
                share_current(100, 2, &|_, p| {
                    ran.fetch_add(1, Ordering::Relaxed);
                    if p == 7 {
                        panic!("part 7");
                    }
                });
            })
        }));
        assert!(r.is_err());
        assert_eq!(ran.load(Ordering::Relaxed), 100);
        // The crew still works.
        check_parts(|body| crew.lead(body));
    }
}
