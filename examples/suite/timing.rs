//! Timing: warm-up, then the median of repeated runs, with a measure of how much CPU
//! other processes took meanwhile (the machine may be shared; a disturbed number is
//! flagged, not hidden).

use std::time::{Duration, Instant};

/// How long and how often to sample.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// At least this many timed runs.
    pub min_reps: usize,
    /// At most this many timed runs.
    pub max_reps: usize,
    /// Keep sampling (up to `max_reps`) until this much time has passed.
    pub target: Duration,
}

/// The timed runs of one measurement.
pub struct Samples {
    /// Median run time, milliseconds.
    pub median_ms: f64,
    /// Fastest run, milliseconds.
    pub min_ms: f64,
    /// Number of timed runs.
    pub reps: usize,
    /// Average number of cores other processes used while sampling (`None` where
    /// `/proc/stat` cannot be read).
    pub foreign_cores: Option<f64>,
}

/// Warm-up (at least 3 calls and 0.1 s, at most 50 calls; the first measurement of the
/// process warms up for 1 s and up to 2000 calls), then timed calls of `f`, one per
/// sample, until both `plan.min_reps` and `plan.target` are reached or `plan.max_reps`
/// runs were taken. Stops at the first error of `f`.
///
/// The longer first warm-up: the first cells timed after the reference checks (which run
/// on one core for tens of seconds) were seen at 1.0× their one-thread speed with two
/// threads, in two rounds of a comparison, and at 1.6–2× when timed alone.
pub fn measure<E>(plan: Plan, mut f: impl FnMut() -> Result<(), E>) -> Result<Samples, E> {
    static FIRST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);
    let first = FIRST.swap(false, std::sync::atomic::Ordering::Relaxed);
    let (warm_min, warm_max) = if first {
        (Duration::from_secs(1), 2000)
    } else {
        (Duration::from_millis(100), 50)
    };
    let start = Instant::now();
    let mut calls = 0;
    while calls < 3 || (start.elapsed() < warm_min && calls < warm_max) {
        f()?;
        calls += 1;
    }
    let before = CpuSnapshot::take();
    let mut times = Vec::with_capacity(plan.max_reps);
    let sampling = Instant::now();
    while times.len() < plan.min_reps
        || (sampling.elapsed() < plan.target && times.len() < plan.max_reps)
    {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let foreign_cores = before
        .zip(CpuSnapshot::take())
        .map(|(a, b)| a.foreign_cores(&b));
    times.sort_by(f64::total_cmp);
    Ok(Samples {
        median_ms: median(&times),
        min_ms: times[0],
        reps: times.len(),
        foreign_cores,
    })
}

/// How to deal with other processes on the machine (the peer scripts' protocol).
#[derive(Clone, Copy, Debug)]
pub struct Quiet {
    /// Before each attempt, wait up to this long for other processes to use under 0.1
    /// core (zero: do not wait).
    pub max_wait: Duration,
    /// Measure again up to this many times when other processes used more than
    /// `foreign_max` cores meanwhile; the least disturbed attempt is kept.
    pub retries: usize,
    /// The load above which an attempt counts as disturbed.
    pub foreign_max: f64,
}

/// [`measure`] with the [`Quiet`] protocol: wait for a quiet machine, retry disturbed
/// attempts, keep the least disturbed one.
pub fn measure_quietly<E>(
    plan: Plan,
    quiet: Quiet,
    mut f: impl FnMut() -> Result<(), E>,
) -> Result<Samples, E> {
    let mut best: Option<Samples> = None;
    for _ in 0..=quiet.retries {
        if !quiet.max_wait.is_zero() {
            wait_quiet(quiet.max_wait);
        }
        let samples = measure(plan, &mut f)?;
        let load = samples.foreign_cores.unwrap_or(0.0);
        let calmer = best
            .as_ref()
            .is_none_or(|b| load < b.foreign_cores.unwrap_or(0.0));
        if calmer {
            best = Some(samples);
        }
        if load <= quiet.foreign_max {
            break;
        }
    }
    Ok(best.expect("the loop runs at least once"))
}

/// Waits until other processes use under 0.1 core over a 0.3 s window, or `max_wait`
/// has passed (or at once where `/proc/stat` is unreadable).
fn wait_quiet(max_wait: Duration) {
    let start = Instant::now();
    while start.elapsed() < max_wait {
        let Some(a) = CpuSnapshot::take() else { return };
        std::thread::sleep(Duration::from_millis(300));
        let Some(b) = CpuSnapshot::take() else { return };
        if a.foreign_cores(&b) < 0.1 {
            return;
        }
    }
}

/// Median of sorted, non-empty `v`.
fn median(v: &[f64]) -> f64 {
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// CPU time counters of the whole machine and of this process (Linux `/proc`), in clock
/// ticks.
#[derive(Clone, Copy)]
struct CpuSnapshot {
    /// All CPUs, all states.
    total: u64,
    /// All CPUs, busy (not idle or iowait).
    busy: u64,
    /// This process, user + system.
    own: u64,
    /// Number of CPUs in `/proc/stat`.
    cpus: u64,
}

impl CpuSnapshot {
    fn take() -> Option<CpuSnapshot> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let mut lines = stat.lines();
        let fields: Vec<u64> = lines
            .next()?
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        let cpus = lines.filter(|l| l.starts_with("cpu")).count() as u64;
        let total: u64 = fields.iter().sum();
        let idle = fields.get(3)? + fields.get(4)?;
        let own_stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let after_name: Vec<&str> = own_stat.rsplit_once(')')?.1.split_whitespace().collect();
        // utime and stime are fields 14 and 15; field 3 is the first after the name.
        let own =
            after_name.get(11)?.parse::<u64>().ok()? + after_name.get(12)?.parse::<u64>().ok()?;
        Some(CpuSnapshot {
            total,
            busy: total - idle,
            own,
            cpus: cpus.max(1),
        })
    }

    /// Average cores used by other processes between `self` and `later`: their busy ticks
    /// over the elapsed ticks per CPU (no clock-tick constant needed).
    fn foreign_cores(&self, later: &CpuSnapshot) -> f64 {
        let elapsed = later.total.saturating_sub(self.total) as f64 / self.cpus as f64;
        if elapsed <= 0.0 {
            return 0.0;
        }
        let foreign = later
            .busy
            .saturating_sub(self.busy)
            .saturating_sub(later.own.saturating_sub(self.own));
        foreign as f64 / elapsed
    }
}
