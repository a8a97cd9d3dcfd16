//! The launch timeline: host phases on `CLOCK_MONOTONIC`, guest milestones
//! from the guest's TSC, aligned and printed by `--timeline`.
//!
//! Time zero is the launch. A launcher that wants exact figures passes its
//! `CLOCK_MONOTONIC` reading taken just before it spawned the monitor in
//! `TORITO_LAUNCH_NS`; otherwise time zero is the monitor's `main()`.
//!
//! Guest marks are TSC values the kernel wrote into its `BootInfo` (no VM
//! exit). Before the first `KVM_RUN` the monitor reads the guest TSC
//! (`MSR_IA32_TSC`) and its own clock at the same moment; with the TSC
//! frequency from KVM that maps any guest TSC value to host nanoseconds.

use std::fmt::Write as _;

use torito_abi::boot_info::{TraceEntry, TraceId};

use crate::config::TimelineFormat;

/// Environment variable carrying the launcher's clock at spawn.
pub const LAUNCH_ENV: &str = "TORITO_LAUNCH_NS";

pub use crate::vstate::sys::now_ns;

/// Host-side phases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// `main()` entered.
    Main,
    /// `/dev/kvm` open.
    KvmReady,
    /// VM created and RAM registered.
    MemoryReady,
    /// Kernel, page tables and boot information in guest memory.
    ElfLoaded,
    /// vCPU created and its registers set.
    VcpuReady,
    /// The vCPU seccomp filter in place on every thread (installed by the
    /// sandbox thread while the guest starts).
    Sandboxed,
    /// First `KVM_RUN` issued.
    FirstRun,
    /// The guest stopped.
    GuestStopped,
    /// About to exit the process.
    ProcessExit,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Main => "main",
            Phase::KvmReady => "kvm_ready",
            Phase::MemoryReady => "memory_ready",
            Phase::ElfLoaded => "elf_loaded",
            Phase::VcpuReady => "vcpu_ready",
            Phase::Sandboxed => "sandboxed",
            Phase::FirstRun => "first_run",
            Phase::GuestStopped => "guest_stopped",
            Phase::ProcessExit => "process_exit",
        }
    }
}

/// Guest TSC and host clock read at the same moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockRef {
    /// Host `CLOCK_MONOTONIC` ns.
    pub host_ns: u64,
    /// Guest TSC at `host_ns`.
    pub guest_tsc: u64,
    /// TSC frequency.
    pub tsc_khz: u64,
}

impl ClockRef {
    /// Host ns at which the guest TSC read `tsc`.
    pub fn host_ns_of(&self, tsc: u64) -> Option<u64> {
        if self.tsc_khz == 0 {
            return None;
        }
        let delta = tsc as i128 - self.guest_tsc as i128;
        let ns = delta * 1_000_000 / self.tsc_khz as i128;
        u64::try_from(self.host_ns as i128 + ns).ok()
    }
}

/// Everything recorded about one run.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    launch_ns: u64,
    launch_from_env: bool,
    points: Vec<(Phase, u64)>,
    clock: Option<ClockRef>,
    trace: Vec<TraceEntry>,
    stats: Vec<(String, u64)>,
    /// Returns from `KVM_RUN` to the monitor.
    pub runs: u64,
    /// Guest RAM resident in the monitor when the guest stopped (KiB):
    /// what the guest touched, what the monitor wrote, and what the
    /// sandbox thread warmed up (`loader::warm_ranges`).
    pub guest_touched_kib: Option<u64>,
    /// The monitor's peak resident memory (KiB, `VmHWM`).
    pub peak_rss_kib: Option<u64>,
    /// Guest accesses to RAM still being registered, done by the monitor.
    pub pending_ram_accesses: u64,
    /// vCPUs that ran (1 unless the kernel started more); `runs` and the
    /// stats are vCPU 0's.
    pub vcpus_started: u32,
}

impl Timeline {
    /// Start a timeline now (called first thing in `main`).
    pub fn start() -> Self {
        let main = now_ns();
        let env = std::env::var(LAUNCH_ENV).ok().and_then(|v| v.parse::<u64>().ok()).filter(|&t| t <= main);
        let mut tl =
            Timeline { launch_ns: env.unwrap_or(main), launch_from_env: env.is_some(), ..Default::default() };
        tl.points.push((Phase::Main, main));
        tl
    }

    /// Time zero.
    pub fn launch_ns(&self) -> u64 {
        self.launch_ns
    }

    /// Record `phase` now.
    pub fn mark(&mut self, phase: Phase) {
        self.points.push((phase, now_ns()));
    }

    /// Record `phase` at `ns` (`CLOCK_MONOTONIC`), seen by another thread.
    pub fn mark_at(&mut self, phase: Phase, ns: u64) {
        self.points.push((phase, ns));
    }

    /// Set the guest clock reference.
    pub fn set_clock_reference(&mut self, c: Option<ClockRef>) {
        self.clock = c;
    }

    /// Set the guest's milestones.
    pub fn set_guest_trace(&mut self, t: Vec<TraceEntry>) {
        self.trace = t;
    }

    /// Set the vCPU's KVM statistics.
    pub fn set_stats(&mut self, s: Vec<(String, u64)>) {
        self.stats = s;
    }

    /// The vCPU's KVM statistic `name`.
    pub fn stat(&self, name: &str) -> Option<u64> {
        self.stats.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    /// All events `(name, µs since launch, from the guest)` in time order.
    pub fn events(&self) -> Vec<(&'static str, f64, bool)> {
        let us = |t: u64| (t as f64 - self.launch_ns as f64) / 1000.0;
        let mut ev: Vec<_> = self.points.iter().map(|(p, t)| (p.name(), us(*t), false)).collect();
        if let Some(c) = self.clock {
            for e in &self.trace {
                if let (Some(id), Some(t)) = (TraceId::from_raw(e.id), c.host_ns_of(e.tsc)) {
                    ev.push((id.name(), us(t), true));
                }
            }
        }
        ev.sort_by(|a, b| a.1.total_cmp(&b.1));
        ev
    }

    fn zero_name(&self) -> &'static str {
        if self.launch_from_env {
            "launch (TORITO_LAUNCH_NS)"
        } else {
            "monitor main() (no TORITO_LAUNCH_NS)"
        }
    }

    const SHOWN_STATS: [&'static str; 9] = [
        "exits",
        "insn_emulation",
        "io_exits",
        "mmio_exits",
        "halt_exits",
        "irq_exits",
        "pf_taken",
        "pf_fixed",
        "signal_exits",
    ];

    /// Render for people or tools.
    pub fn render(&self, format: TimelineFormat) -> String {
        match format {
            TimelineFormat::Human => self.human(),
            TimelineFormat::Json | TimelineFormat::JsonEvents => self.json(),
        }
    }

    fn human(&self) -> String {
        let mut s = format!("torito timeline (µs from {})\n", self.zero_name());
        for (name, t, guest) in self.events() {
            let _ = writeln!(s, "  {t:>10.1}  {}{name}", if guest { "guest: " } else { "" });
        }
        let _ = write!(s, "  vCPUs: {}; returns from KVM_RUN (vCPU 0): {}", self.vcpus_started, self.runs);
        if let Some(k) = self.guest_touched_kib {
            let _ = write!(s, "; guest RAM resident: {k} KiB");
        }
        if let Some(k) = self.peak_rss_kib {
            let _ = write!(s, "; monitor peak RSS: {k} KiB");
        }
        let shown: Vec<String> =
            Self::SHOWN_STATS.iter().filter_map(|n| self.stat(n).map(|v| format!("{n}={v}"))).collect();
        if !shown.is_empty() {
            let _ = write!(s, "\n  vCPU stats: {}", shown.join(" "));
        }
        s.push('\n');
        s
    }

    fn json(&self) -> String {
        let mut s = String::from("{");
        let _ = write!(
            s,
            "\"time_zero\":\"{}\",\"launch_ns\":{},",
            if self.launch_from_env { "launch" } else { "main" },
            self.launch_ns
        );
        s.push_str("\"events\":[");
        let ev: Vec<String> = self
            .events()
            .iter()
            .map(|(n, t, g)| {
                format!(
                    "{{\"name\":\"{n}\",\"us\":{t:.3},\"side\":\"{}\"}}",
                    if *g { "guest" } else { "host" }
                )
            })
            .collect();
        s.push_str(&ev.join(","));
        let _ = write!(
            s,
            "],\"vcpus\":{},\"kvm_run_returns\":{},\"pending_ram_accesses\":{},",
            self.vcpus_started, self.runs, self.pending_ram_accesses
        );
        if let Some(k) = self.guest_touched_kib {
            let _ = write!(s, "\"guest_touched_kib\":{k},");
        }
        if let Some(k) = self.peak_rss_kib {
            let _ = write!(s, "\"peak_rss_kib\":{k},");
        }
        s.push_str("\"vcpu_stats\":{");
        let st: Vec<String> = self.stats.iter().map(|(n, v)| format!("\"{n}\":{v}")).collect();
        s.push_str(&st.join(","));
        s.push_str("}}\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_tsc_maps_to_host_time() {
        let c = ClockRef { host_ns: 1_000_000, guest_tsc: 5_000_000, tsc_khz: 2_000_000 };
        assert_eq!(c.host_ns_of(5_000_000), Some(1_000_000));
        assert_eq!(c.host_ns_of(5_002_000), Some(1_001_000));
        assert_eq!(c.host_ns_of(4_998_000), Some(999_000));
        assert_eq!(ClockRef { tsc_khz: 0, ..c }.host_ns_of(1), None);
    }

    #[test]
    fn events_are_ordered_and_rendered() {
        let mut tl = Timeline { launch_ns: 1_000, ..Default::default() };
        tl.points.push((Phase::Main, 2_000));
        tl.points.push((Phase::GuestStopped, 9_000));
        tl.clock = Some(ClockRef { host_ns: 5_000, guest_tsc: 100, tsc_khz: 1_000_000 });
        tl.trace = vec![TraceEntry { id: 1, reserved: 0, tsc: 101 }];
        tl.stats = vec![("exits".into(), 4)];
        tl.runs = 2;
        let names: Vec<_> = tl.events().iter().map(|e| e.0).collect();
        assert_eq!(names, ["main", "kernel_main", "guest_stopped"]);
        assert!(tl.render(TimelineFormat::Human).contains("guest: kernel_main"));
        let j = tl.render(TimelineFormat::Json);
        assert!(j.contains("\"name\":\"kernel_main\",\"us\":4.001,\"side\":\"guest\""), "{j}");
        assert!(j.contains("\"exits\":4"));
        assert!(j.contains("\"kvm_run_returns\":2"));
    }
}
