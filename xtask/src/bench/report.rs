//! What the launch section prints and writes, and the targets of every
//! section with their verdicts.
//!
//! A target is a same-run ratio (against the bare guest, QEMU, Firecracker
//! or the same launch without a device, taken round by round) or a
//! deterministic count (exits, emulated instructions, guest page faults,
//! bytes). A MISS means the code regressed, not that the machine is slower
//! today; absolute times are printed beside them for information.

use std::path::Path;

use serde_json::{Value, json};

use super::launch::{Kind, Launch, Sample, expected_status, segments};
use super::{fmt3, summary};

/// The targets checked so far, in order, with notes among them.
#[derive(Default)]
pub struct Verdicts {
    lines: Vec<Line>,
}

enum Line {
    Target(bool, String),
    Note(String),
}

impl Verdicts {
    /// Record a target's verdict.
    pub fn check(&mut self, pass: bool, text: String) {
        self.lines.push(Line::Target(pass, text));
    }

    /// A line of information among the targets.
    pub fn note(&mut self, text: String) {
        self.lines.push(Line::Note(text));
    }

    /// Print every verdict; whether all passed.
    pub fn print(&self) -> bool {
        if self.lines.is_empty() {
            return true;
        }
        println!(
            "\ntargets (same-run ratios and deterministic counts; times in parentheses are for information):"
        );
        let mut ok = true;
        for line in &self.lines {
            match line {
                Line::Target(pass, text) => {
                    println!("  [{}] {text}", if *pass { " ok " } else { "MISS" });
                    ok &= pass;
                }
                Line::Note(text) => println!("         {text}"),
            }
        }
        ok
    }
}

/// The configurations compared by name.
const HELLO_PROFILE: &str = "torito hello profile-boot";
const HELLO: &str = "torito hello";
const BARE: &str = "torito bare guest";
const MICROVM: &str = "qemu microvm kvm pvh profile-boot";
const FIRECRACKER: &str = "firecracker pvh profile-boot";

impl Launch {
    fn index(&self, name: &str) -> Option<usize> {
        self.configs.iter().position(|c| c.name == name)
    }

    fn median(&self, name: &str, f: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
        let i = self.index(name)?;
        summary(&self.samples[i].iter().filter_map(f).collect::<Vec<_>>()).map(|s| s.1)
    }

    /// Round-by-round ratio `f(a) / g(b)` of two configurations.
    fn ratio_of(
        &self,
        a: &str,
        b: &str,
        f: impl Fn(&Sample) -> Option<f64>,
        g: impl Fn(&Sample) -> Option<f64>,
    ) -> Option<(f64, f64, f64)> {
        let (ia, ib) = (self.index(a)?, self.index(b)?);
        let r: Vec<f64> =
            self.samples[ia].iter().zip(&self.samples[ib]).filter_map(|(x, y)| Some(f(x)? / g(y)?)).collect();
        summary(&r)
    }

    /// Round-by-round ratio of one metric of two configurations.
    fn ratio(&self, a: &str, b: &str, f: impl Fn(&Sample) -> Option<f64> + Copy) -> Option<(f64, f64, f64)> {
        self.ratio_of(a, b, f, f)
    }

    /// Median of the round-by-round difference of a metric.
    fn difference(&self, a: &str, b: &str, f: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
        let (ia, ib) = (self.index(a)?, self.index(b)?);
        let d: Vec<f64> =
            self.samples[ia].iter().zip(&self.samples[ib]).filter_map(|(x, y)| Some(f(x)? - f(y)?)).collect();
        summary(&d).map(|s| s.1)
    }

    /// The table, the phases of the Torito runs and the ratios.
    pub fn print(&self) {
        println!(
            "\nlaunch benchmark: {} launches per configuration after {} warm-up rounds, interleaved",
            self.runs, self.warmup
        );
        println!("time zero = the launcher's CLOCK_MONOTONIC just before spawn; µs; min / median / max\n");
        println!(
            "{:<38} {:>29} {:>29} {:>8} {:>8}",
            "configuration", "exec → kernel_main", "exec → process reaped", "RSS KiB", "touched"
        );
        for (c, s) in self.configs.iter().zip(&self.samples) {
            let km: Vec<f64> = s.iter().filter_map(|x| x.event("kernel_main")).collect();
            let whole: Vec<f64> = s.iter().map(|x| x.whole_us).collect();
            let rss = s.iter().map(|x| x.maxrss_kib).max().unwrap_or(0);
            let touched = s.iter().filter_map(|x| x.touched_kib).max().map_or("-".into(), |k| k.to_string());
            let bad = s.iter().filter(|x| x.status != expected_status(c)).count();
            println!(
                "{:<38} {} {} {:>8} {:>8}{}",
                c.name,
                fmt3(summary(&km)),
                fmt3(summary(&whole)),
                rss,
                touched,
                if bad > 0 { format!("  ({bad} runs exited unexpectedly)") } else { String::new() }
            );
        }
        println!(
            "* the monitor's own peak (VmHWM) for Torito runs with a timeline; otherwise wait4's figure, which"
        );
        println!(
            "  includes the launcher's memory the child shares until exec. 'touched': guest RAM resident, KiB."
        );
        if let Some(i) = self.index(FIRECRACKER) {
            let ev = |n: &str| self.samples[i].iter().filter_map(|s| s.event(n)).collect::<Vec<_>>();
            println!(
                "\nfirecracker: exec → boot timer (the guest's write at kernel_main, from the log line's time) {}",
                fmt3(summary(&ev("boot_timer")))
            );
            println!(
                "firecracker: its own Guest-boot-time (from its VM build start)                        {}",
                fmt3(summary(&ev("firecracker_boot_time")))
            );
        }
        for name in [HELLO_PROFILE, HELLO, BARE] {
            let Some(i) = self.index(name) else { continue };
            println!("\nphases of '{name}' (µs):");
            let mut by_seg: Vec<((String, String), Vec<f64>)> = Vec::new();
            for s in &self.samples[i] {
                for (a, b, d) in segments(s) {
                    match by_seg.iter_mut().find(|(k, _)| k.0 == a && k.1 == b) {
                        Some((_, v)) => v.push(d),
                        None => by_seg.push(((a, b), vec![d])),
                    }
                }
            }
            for ((a, b), v) in by_seg {
                println!("  {:<34} {}", format!("{a} → {b}"), fmt3(summary(&v)));
            }
        }
        let stopped = |s: &Sample| s.event("guest_stopped");
        let kernel_main = |s: &Sample| s.event("kernel_main");
        let whole = |s: &Sample| Some(s.whole_us);
        println!("\nratios, round by round (min / median / max):");
        let ratios = [
            (
                "hello profile-boot / bare guest, exec → guest stopped",
                self.ratio(HELLO_PROFILE, BARE, stopped),
            ),
            (
                "hello profile-boot 4G / 128M, exec → kernel_main",
                self.ratio("torito hello profile-boot 4G", HELLO_PROFILE, kernel_main),
            ),
            (
                "hello profile-boot 1G / 128M, exec → kernel_main",
                self.ratio("torito hello profile-boot 1G", HELLO_PROFILE, kernel_main),
            ),
            (
                "hello profile-boot + disk / without, exec → kernel_main",
                self.ratio("torito hello profile-boot + disk", HELLO_PROFILE, kernel_main),
            ),
            ("hello profile-boot + NIC / without, paired, exec → kernel_main", self.nic_ratio),
            (
                "hello profile-boot + share / without, exec → kernel_main",
                self.ratio(super::launch::SHARE, HELLO_PROFILE, kernel_main),
            ),
            (
                "fscheck 4 MiB baked in / none, exec → kernel_main",
                self.ratio(super::launch::FSCHECK_BAKED, super::launch::FSCHECK, kernel_main),
            ),
            ("torito / qemu microvm, whole process", self.ratio(HELLO_PROFILE, MICROVM, whole)),
            (
                "torito / qemu pc tcg, whole process",
                self.ratio(HELLO_PROFILE, "qemu pc tcg multiboot profile-boot", whole),
            ),
            ("torito / firecracker, whole process", self.ratio(HELLO_PROFILE, FIRECRACKER, whole)),
        ];
        for (label, r) in ratios {
            if let Some((lo, med, hi)) = r {
                println!("  {label:<64} {lo:>7.3} {med:>7.3} {hi:>7.3}");
            }
        }
    }

    /// The launch targets.
    pub fn targets(&self, v: &mut Verdicts) {
        let stopped = |s: &Sample| s.event("guest_stopped");
        let kernel_main = |s: &Sample| s.event("kernel_main");
        let page_faults = |s: &Sample| s.stat("pf_taken");
        let emulated = |s: &Sample| s.stat("insn_emulation");
        if let Some((_, r, _)) = self.ratio(HELLO_PROFILE, BARE, stopped) {
            let d = self.difference(HELLO_PROFILE, BARE, stopped).unwrap_or(0.0);
            v.check(
                r <= 1.10,
                format!(
                    "exec → guest stop: hello profile-boot / bare guest (the monitor's floor), same round, \
                     median {r:.3} ≤ 1.10 ({d:+.0} µs)"
                ),
            );
        }
        if let (Some(h), Some(b)) = (self.median(HELLO_PROFILE, page_faults), self.median(BARE, page_faults))
        {
            v.check(
                h - b <= 6.0,
                format!(
                    "entering the kernel: hello profile-boot takes {h:.0} guest page faults, the bare guest {b:.0}: \
                     {:.0} more ≤ 6",
                    h - b
                ),
            );
        }
        if let Some(e) = self.median(HELLO_PROFILE, emulated) {
            v.check(
                e <= 1.0,
                format!(
                    "profile-boot run emulates {e:.0} instruction(s) (the exit store): none before kernel_main"
                ),
            );
        }
        if let (Some(f), Some(k)) =
            (self.median(HELLO_PROFILE, |s| s.event("first_run")), self.median(HELLO_PROFILE, kernel_main))
        {
            v.note(format!(
                "(first KVM_RUN → kernel_main {:.0} µs: entering the guest; kernel_main is its first instruction)",
                k - f
            ));
        }
        if let (Some(h), Some(p)) = (self.median(HELLO, page_faults), self.median(HELLO_PROFILE, page_faults))
        {
            let kh = self.median(HELLO, |s| Some(s.event("app_main")? - s.event("kernel_main")?));
            v.check(
                h - p <= 10.0,
                format!(
                    "kernel_main → app exit: hello takes {:.0} guest page faults after kernel_main (hello − hello \
                     profile-boot, same run) ≤ 10 (kernel_main → app main {:.1} µs)",
                    h - p,
                    kh.unwrap_or(f64::NAN)
                ),
            );
        }
        if let Some(r) = self.median(HELLO, |s| Some(s.kvm_runs as f64)) {
            v.check(r <= 10.0, format!("hello: {r:.0} returns from KVM_RUN ≤ 10"));
        }
        if let Some(e) = self.median(HELLO, emulated) {
            v.check(e <= 100.0, format!("hello: {e:.0} emulated instructions ≤ 100"));
        }
        if let Some((lo, m, hi)) = self.seccomp_cost {
            v.check(
                m <= 50.0,
                format!(
                    "installing the seccomp filters: exec → kernel_main with − without, paired runs, median \
                     {m:.0} µs (min {lo:.0}, max {hi:.0}) ≤ 50"
                ),
            );
        }
        if let Some((_, r, _)) = self.nic_ratio {
            v.check(
                r <= 1.10,
                format!(
                    "attaching a NIC: exec → kernel_main with / without, paired runs, median {r:.3} ≤ 1.10"
                ),
            );
        }
        if let Some((_, r, _)) = self.ratio("torito hello profile-boot + disk", HELLO_PROFILE, kernel_main) {
            v.check(
                r <= 1.10,
                format!(
                    "attaching a disk: exec → kernel_main with / without, same round, median {r:.3} ≤ 1.10"
                ),
            );
        }
        if let Some((_, r, _)) = self.ratio(super::launch::SHARE, HELLO_PROFILE, kernel_main) {
            let d = self.difference(super::launch::SHARE, HELLO_PROFILE, kernel_main).unwrap_or(f64::NAN);
            v.check(
                r <= 1.10,
                format!(
                    "attaching a share: exec → kernel_main with / without, same round, median {r:.3} ≤ 1.10 \
                     ({d:+.0} µs; the issue's goal: ≤ 100 µs)"
                ),
            );
        }
        let (baked, none) = (super::launch::FSCHECK_BAKED, super::launch::FSCHECK);
        if let Some((_, r, _)) = self.ratio(baked, none, kernel_main) {
            v.check(
                r <= 1.10,
                format!("4 MiB of baked-in files: exec → kernel_main with / without, same round, median {r:.3} ≤ 1.10"),
            );
        }
        if let (Some(b), Some(n)) = (self.median(baked, page_faults), self.median(none, page_faults)) {
            v.check(
                b - n <= 6.0,
                format!(
                    "4 MiB of baked-in files, none read: {b:.0} guest page faults, {n:.0} without: {:.0} more ≤ 6",
                    b - n
                ),
            );
        }
        if let Some((_, r, _)) = self.ratio("torito hello profile-boot 4G", HELLO_PROFILE, kernel_main) {
            v.check(r <= 1.10, format!("4 GiB guest launches at {r:.3}× the 128 MiB time ≤ 1.10"));
        }
        let size = std::fs::metadata(&self.hello).map(|m| m.len()).unwrap_or(u64::MAX);
        v.check(size <= 200 * 1024, format!("hello ELF {size} bytes ≤ 200 KiB"));
        if let Some(i) = self.index(HELLO) {
            let rss = self.samples[i].iter().map(|s| s.maxrss_kib).max().unwrap_or(u64::MAX);
            v.check(rss <= 5 * 1024, format!("monitor peak RSS {rss} KiB ≤ 5 MiB"));
        }
        if let Some((_, r, _)) = self.ratio(HELLO_PROFILE, MICROVM, |s| Some(s.whole_us)) {
            v.check(
                r <= 0.10,
                format!(
                    "whole launch {:.0}× faster than QEMU microvm on the same ELF, same round (≥ 10×)",
                    1.0 / r
                ),
            );
        }
        let boot_timer = |s: &Sample| s.event("boot_timer");
        if let Some((_, r, _)) = self.ratio_of(HELLO_PROFILE, FIRECRACKER, kernel_main, boot_timer) {
            v.check(
                r <= 0.2,
                format!(
                    "exec → kernel_main {:.1}× faster than Firecracker's exec → boot timer, same round (≥ 5×)",
                    1.0 / r
                ),
            );
        }
        for n in &self.notes {
            v.note(format!("note: {n}"));
        }
    }

    /// Every sample, and the summaries, as `launch.json` in `out`.
    pub fn write_json(&self, out: &Path) -> Result<(), String> {
        let configs: Vec<Value> = self
            .configs
            .iter()
            .zip(&self.samples)
            .map(|(c, s)| {
                let runs: Vec<Value> = s
                    .iter()
                    .map(|x| {
                        json!({"whole_us": x.whole_us, "events_us": x.events, "vcpu_stats": x.stats,
                               "kvm_run_returns": x.kvm_runs, "guest_touched_kib": x.touched_kib,
                               "monitor_peak_rss_kib": x.maxrss_kib, "status": x.status})
                    })
                    .collect();
                let whole: Vec<f64> = s.iter().map(|x| x.whole_us).collect();
                let km: Vec<f64> = s.iter().filter_map(|x| x.event("kernel_main")).collect();
                let sm = |v: &[f64]| summary(v).map(|(a, b, c)| json!({"min": a, "median": b, "max": c}));
                json!({"name": c.name, "torito": c.kind == Kind::Torito, "whole_us": sm(&whole),
                       "kernel_main_us": sm(&km), "runs": runs})
            })
            .collect();
        let doc = json!({
            "runs": self.runs, "warmup": self.warmup,
            "time_zero": "launcher CLOCK_MONOTONIC before spawn",
            "hello_elf_bytes": std::fs::metadata(&self.hello).map(|m| m.len()).ok(),
            "nic_ratio": self.nic_ratio.map(|(a, b, c)| json!({"min": a, "median": b, "max": c})),
            "seccomp_cost_us": self.seccomp_cost.map(|(a, b, c)| json!({"min": a, "median": b, "max": c})),
            "notes": self.notes, "configs": configs,
        });
        let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
        std::fs::write(out.join("launch.json"), text).map_err(|e| e.to_string())
    }
}
