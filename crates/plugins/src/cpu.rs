//! The gateway process's CPU use, sampled off the request path: one thread reads
//! `/proc/self/stat` every 250 ms and keeps a smoothed share (0-1) of the CPUs the process may
//! run on, which requests read with one atomic load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const EVERY: Duration = Duration::from_millis(250);
/// Weight of the newest sample: reacts within about a second, rides out one busy sample.
const ALPHA: f64 = 0.5;
/// Linux reports process times in USER_HZ ticks, which is 100 on every supported platform
/// (the kernel keeps it fixed for user space whatever its internal HZ).
const TICKS_PER_SEC: f64 = 100.0;

static USAGE: AtomicU64 = AtomicU64::new(0);
static STARTED: OnceLock<()> = OnceLock::new();

/// The smoothed CPU share, 0 until the sampler has run.
pub fn usage() -> f64 {
    f64::from_bits(USAGE.load(Ordering::Relaxed))
}

/// Starts the sampler thread, once per process.
pub fn start_sampler() {
    STARTED.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("gatehouse-cpu".into())
            .spawn(sample_forever);
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the CPU sampler; adaptive-shed sees 0 % CPU");
        }
    });
}

fn sample_forever() {
    // The CPUs this process may use (affinity-aware), so a gateway pinned to one core of
    // many reads 100 % when that core is full.
    let cpus = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
    let mut last = (Instant::now(), process_ticks());
    loop {
        std::thread::sleep(EVERY);
        let now = (Instant::now(), process_ticks());
        if let (Some(t0), Some(t1)) = (last.1, now.1) {
            let wall = now.0.duration_since(last.0).as_secs_f64();
            if wall > 0.0 {
                let share = ((t1.saturating_sub(t0)) as f64 / TICKS_PER_SEC / wall / cpus).min(1.0);
                let smoothed = ALPHA * share + (1.0 - ALPHA) * usage();
                USAGE.store(smoothed.to_bits(), Ordering::Relaxed);
            }
        }
        last = now;
    }
}

/// utime + stime of the whole process (all threads), in ticks.
fn process_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; the fields after its `)` are plain.
    let rest = stat.rsplit_once(')')?.1;
    let mut f = rest.split_whitespace();
    // After `)`: state is field 3, utime is field 14, stime field 15.
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    #[test]
    fn reads_this_process_ticks_and_they_grow_with_work() {
        let before = super::process_ticks().unwrap();
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(120) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let after = super::process_ticks().unwrap();
        assert!(after > before, "{before} -> {after}");
    }
}
