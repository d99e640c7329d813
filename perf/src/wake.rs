//! Wake-ups: keeping idle CPUs out of sleep while a latency test runs, and measuring
//! what one cross-CPU wake-up costs under the same conditions.
//!
//! A round trip of `rr` wakes a thread four times or more. What a wake-up costs depends
//! on how deeply the woken CPU sleeps: on a VM a halted vCPU costs the host a VM exit
//! and a reschedule to wake. A process that polls (as weftd does after traffic) keeps
//! the vCPUs awake and so makes every wake-up on the machine cheap, not only its own.
//! [`CpuLatencyHold`] gives every system the same, awake, machine; [`wakeup_cost`]
//! shows what a wake-up cost while a test ran, so a reader can see the conditions.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// The PM QoS device of the CPU latency request (Documentation/power/pm_qos_interface).
pub const CPU_LATENCY_DEVICE: &str = "/dev/cpu_dma_latency";

/// A PM QoS request that idle CPUs wake within 0 µs, held while this value lives.
///
/// Under it the cpuidle governors (menu, teo, haltpoll) pick the polling idle state, so
/// an idle CPU spins in the kernel's idle loop, where any woken task runs at once,
/// instead of halting. It competes with no task (the idle loop is not a runnable task),
/// so it does not take CPU time from weftd or the generator, as a spinning thread would.
/// The kernel drops the request when the file is closed: on drop, and when the process
/// dies, however it dies.
#[derive(Debug)]
pub struct CpuLatencyHold {
    _file: File,
}

impl CpuLatencyHold {
    /// Asks that idle CPUs poll; fails (needs root) if the request cannot be made.
    pub fn acquire() -> Result<CpuLatencyHold> {
        let mut file = File::options()
            .write(true)
            .open(CPU_LATENCY_DEVICE)
            .with_context(|| format!("opening {CPU_LATENCY_DEVICE} (needs root)"))?;
        // The request is a binary s32 in microseconds.
        file.write_all(&0i32.to_ne_bytes())
            .with_context(|| format!("writing a 0 µs request to {CPU_LATENCY_DEVICE}"))?;
        Ok(CpuLatencyHold { _file: file })
    }
}

/// How long the pinging thread idles before each sample, so that the other CPU has
/// gone idle (and, without a [`CpuLatencyHold`], to sleep) when it is woken.
pub const WAKE_IDLE: Duration = Duration::from_micros(200);

/// The longest one ping-pong may take before the measurement fails.
const WAKE_BOUND: Duration = Duration::from_secs(1);

/// The median cost of waking a thread on another CPU: two threads pinned to two CPUs
/// (the first two this process may run on; one CPU if it has only one) ping-pong through
/// futex wake-ups `samples` times, each after [`WAKE_IDLE`] idle; one sample is half a
/// ping-pong. The caller's own thread is not pinned.
pub fn wakeup_cost(samples: usize) -> Result<Duration> {
    const IDLE: u32 = 0;
    const PING: u32 = 1;
    const PONG: u32 = 2;
    const QUIT: u32 = 3;
    let cpus = allowed_cpus()?;
    let (a_cpu, b_cpu) = (cpus[0], *cpus.get(1).unwrap_or(&cpus[0]));
    let state = AtomicU32::new(IDLE);
    let state = &state;
    let mut costs = std::thread::scope(|s| -> Result<Vec<Duration>> {
        let pinger = s.spawn(move || -> Result<Vec<Duration>> {
            pin_to(a_cpu)?;
            let me = std::thread::current();
            let ponger = std::thread::Builder::new()
                .name("wake-ponger".into())
                .spawn_scoped(s, move || -> Result<()> {
                    // Serves the pings even if it cannot be pinned, so the pinger never
                    // waits for nothing; the error comes out at the end.
                    let pinned = pin_to(b_cpu);
                    loop {
                        match state.load(Ordering::Acquire) {
                            PING => {
                                state.store(PONG, Ordering::Release);
                                me.unpark();
                            }
                            QUIT => return pinned,
                            _ => std::thread::park(),
                        }
                    }
                })
                .context("starting the wake-up ponger")?;
            let mut costs = Vec::with_capacity(samples);
            let mut stuck = None;
            for _ in 0..samples {
                std::thread::sleep(WAKE_IDLE);
                let t = Instant::now();
                state.store(PING, Ordering::Release);
                ponger.thread().unpark();
                while state.load(Ordering::Acquire) != PONG && t.elapsed() < WAKE_BOUND {
                    std::thread::park_timeout(WAKE_BOUND);
                }
                let rtt = t.elapsed();
                if state.load(Ordering::Acquire) != PONG {
                    stuck = Some(rtt);
                    break;
                }
                costs.push(rtt / 2);
                state.store(IDLE, Ordering::Release);
            }
            state.store(QUIT, Ordering::Release);
            ponger.thread().unpark();
            ponger
                .join()
                .map_err(|_| anyhow::anyhow!("the wake-up ponger panicked"))??;
            if let Some(rtt) = stuck {
                anyhow::bail!("a wake-up took longer than {rtt:?}");
            }
            Ok(costs)
        });
        pinger
            .join()
            .map_err(|_| anyhow::anyhow!("the wake-up pinger panicked"))?
    })?;
    costs.sort_unstable();
    costs
        .get(costs.len() / 2)
        .copied()
        .context("no wake-up sample taken")
}

/// The CPUs this thread may run on, in order.
fn allowed_cpus() -> Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("sched_getaffinity");
    }
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, the set's capacity.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    anyhow::ensure!(!cpus.is_empty(), "this thread may run on no CPU");
    Ok(cpus)
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> Result<()> {
    set_affinity(&[cpu])
}

fn set_affinity(cpus: &[usize]) -> Result<()> {
    // SAFETY: cpu_set_t is plain data; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: the CPUs come from sched_getaffinity, so they are below CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is this thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("pinning a thread to CPUs {cpus:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wakeup_costs_something_and_the_caller_stays_unpinned() {
        let before = allowed_cpus().unwrap();
        let cost = wakeup_cost(20).unwrap();
        assert!(cost > Duration::ZERO);
        assert!(cost < Duration::from_secs(1), "{cost:?}");
        assert_eq!(allowed_cpus().unwrap(), before);
    }
}
