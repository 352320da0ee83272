//! A process's CPU time and memory, from /proc.

use std::time::Duration;

use anyhow::Context;

#[derive(Debug, Clone, Copy)]
pub struct ProcessStats {
    /// User plus system CPU time since the process started.
    pub cpu: Duration,
    pub rss_bytes: u64,
    /// The highest resident set size so far (VmHWM).
    pub peak_rss_bytes: u64,
    pub threads: u64,
}

impl ProcessStats {
    pub fn read(pid: i32) -> anyhow::Result<ProcessStats> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        // Fields after the parenthesised command name, which may hold spaces.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("malformed /proc/PID/stat")?
            .1
            .split_whitespace()
            .collect();
        // utime and stime are fields 14 and 15 of the whole line.
        let ticks = |index: usize| -> anyhow::Result<u64> {
            fields
                .get(index)
                .context("short /proc/PID/stat")?
                .parse()
                .context("malformed /proc/PID/stat")
        };
        let cpu_ticks = ticks(11)? + ticks(12)?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let field = |key: &str| -> u64 {
            status
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|value| value.parse().ok())
                .unwrap_or(0)
        };
        Ok(ProcessStats {
            cpu: Duration::from_secs_f64(cpu_ticks as f64 / clock_ticks_per_second()),
            rss_bytes: field("VmRSS:") * 1024,
            peak_rss_bytes: field("VmHWM:") * 1024,
            threads: field("Threads:"),
        })
    }
}

fn clock_ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |ticks| ticks as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let before = ProcessStats::read(std::process::id() as i32).unwrap();
        let mut x = 0u64;
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        std::hint::black_box(x);
        let after = ProcessStats::read(std::process::id() as i32).unwrap();
        assert!(after.cpu > before.cpu, "{before:?} {after:?}");
        assert!(after.rss_bytes > 0 && after.peak_rss_bytes >= after.rss_bytes);
        assert!(after.threads >= 1);
    }
}
