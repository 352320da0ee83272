//! CPU, memory, load and uptime, from sysinfo.

use std::sync::Mutex;

use k3sfleet_proto::v1::HostFigures;
use sysinfo::{CpuRefreshKind, LoadAvg, MemoryRefreshKind, RefreshKind, System};

/// Samples host figures; CPU usage is measured between consecutive samples.
pub struct HostFigureSampler {
    /// `None` when /proc could not be read; the figures then stay zero.
    system: Mutex<Option<System>>,
}

impl std::fmt::Debug for HostFigureSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostFigureSampler")
    }
}

impl Default for HostFigureSampler {
    fn default() -> Self {
        let refresh = RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing().with_usage())
            .with_memory(MemoryRefreshKind::nothing().with_ram());
        HostFigureSampler {
            system: Mutex::new(System::new_with_specifics(refresh).ok()),
        }
    }
}

impl HostFigureSampler {
    pub fn sample(&self) -> HostFigures {
        let mut guard = self.system.lock().unwrap_or_else(|p| p.into_inner());
        let Some(system) = guard.as_mut() else {
            return HostFigures::default();
        };
        system.refresh_cpu_usage();
        system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let load = System::load_average().unwrap_or(LoadAvg {
            one: 0.0,
            five: 0.0,
            fifteen: 0.0,
        });
        HostFigures {
            cpu_count: system.cpus().len() as u32,
            cpu_usage_ratio: f64::from(system.global_cpu_usage() / 100.0).clamp(0.0, 1.0),
            memory_total_bytes: system.total_memory(),
            memory_available_bytes: system.available_memory(),
            load1: load.one,
            load5: load.five,
            load15: load.fifteen,
            uptime_seconds: System::uptime().unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_machine() {
        let figures = HostFigureSampler::default().sample();
        assert!(figures.cpu_count >= 1);
        assert!(figures.memory_total_bytes > 0);
        assert!(figures.memory_available_bytes <= figures.memory_total_bytes);
        assert!(figures.uptime_seconds > 0);
        assert!((0.0..=1.0).contains(&figures.cpu_usage_ratio));
    }
}
