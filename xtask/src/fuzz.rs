//! `cargo xtask fuzz [TARGET] [--time SECONDS] [--runs N] [--asan]`: the monitor's fuzz
//! targets (`fuzz/`), one after the other, with cargo-fuzz and libFuzzer.
//!
//! cargo-fuzz needs the nightly toolchain (sanitizer coverage); nothing
//! else in the project does: the build and the tests use the stable one.
//! Each target starts from its seed corpus, `fuzz/corpus/TARGET/` (small,
//! committed), and adds what it finds to `target/fuzz-corpus/TARGET/`; a
//! crash is left in
//! `fuzz/artifacts/TARGET/` by libFuzzer and should be copied into the
//! corpus once fixed: the stable unit tests replay every corpus file
//! (`vmm::fuzzing`).
//!
//! The targets are built without a sanitizer unless `--asan`: the code
//! they reach has no `unsafe` of its own (the monitor's is in `vstate`,
//! which no target calls), so what there is to find are panics, hangs
//! and growth, and AddressSanitizer would cost ~2.6× the inputs a second.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// The targets, in the order they run.
pub const TARGETS: [&str; 7] =
    ["elf", "command_line", "kernel_cmdline", "mmio", "virtio_blk", "virtio_net", "virtio_vsock"];

/// What one target's run came to.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    /// The target.
    pub target: String,
    /// Inputs run.
    pub executions: u64,
    /// Coverage points reached (libFuzzer's `cov:`).
    pub coverage: u64,
    /// Inputs in the corpus at the end.
    pub corpus: u64,
    /// Seconds spent.
    pub seconds: u64,
    /// libFuzzer's peak RSS (MB).
    pub peak_rss_mb: u64,
    /// Whether it ended without a crash, timeout or out-of-memory.
    pub clean: bool,
}

/// The nightly toolchain and cargo-fuzz, or what to install.
fn check_tools() -> Result<(), String> {
    let fuzz = Command::new("cargo").args(["+nightly", "fuzz", "--version"]).output();
    match fuzz {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err("cargo-fuzz on the nightly toolchain is needed: rustup toolchain install nightly && cargo \
                  +nightly install cargo-fuzz"
            .into()),
    }
}

/// When a target's run stops: after so many seconds, so many inputs, or
/// whichever comes first.
#[derive(Clone, Copy, Debug, Default)]
pub struct Limit {
    /// Seconds (libFuzzer's `-max_total_time`).
    pub seconds: Option<u64>,
    /// Inputs (libFuzzer's `-runs`).
    pub runs: Option<u64>,
}

/// Run `targets` (all of [`TARGETS`] when empty) each until `limit`,
/// under AddressSanitizer if `asan`.
pub fn run(targets: &[String], limit: Limit, asan: bool) -> Result<Vec<Outcome>, String> {
    for t in targets {
        if !TARGETS.contains(&t.as_str()) {
            return Err(format!("no fuzz target '{t}' (there are: {})", TARGETS.join(", ")));
        }
    }
    check_tools()?;
    let all: Vec<String> = TARGETS.iter().map(|t| t.to_string()).collect();
    let targets = if targets.is_empty() { &all[..] } else { targets };
    let dir = crate::root().join("fuzz");
    let mut outcomes = Vec::new();
    for t in targets {
        let mut stop = Vec::new();
        if let Some(s) = limit.seconds {
            stop.push(format!("-max_total_time={}", s.max(1)));
        }
        if let Some(n) = limit.runs {
            stop.push(format!("-runs={n}"));
        }
        eprintln!("fuzz: {t} until {}", stop.join(" "));
        let started = std::time::Instant::now();
        let corpus = dir.join("corpus").join(t);
        // The corpus grows in a scratch copy; the committed seeds stay few.
        let work = crate::root().join("target/fuzz-corpus").join(t);
        std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
        let mut c = Command::new("cargo");
        c.current_dir(crate::root())
            .args(["+nightly", "fuzz", "run", "--fuzz-dir"])
            .arg(&dir)
            .args([
                "--release",
                "--debug-assertions",
                "--sanitizer",
                if asan { "address" } else { "none" },
                t,
            ])
            .arg(&work)
            .arg(&corpus)
            .arg("--")
            .args(&stop)
            .args(["-print_final_stats=1", "-timeout=10"])
            .args(["-rss_limit_mb=2048", "-max_len=16384", "-print_pcs=0"])
            // For the cargo that cargo-fuzz runs, under this checkout's
            // pinned stable toolchain file.
            .env("RUSTUP_TOOLCHAIN", "nightly")
            .stderr(Stdio::piped());
        let mut child = crate::group::spawn(&mut c).map_err(|e| format!("cannot run cargo fuzz: {e}"))?;
        let mut out = Outcome { target: t.clone(), ..Default::default() };
        if let Some(err) = child.take_stderr() {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                parse_line(&line, &mut out);
                if line.contains("ERROR: libFuzzer")
                    || line.contains("SUMMARY:")
                    || line.starts_with("stat::")
                {
                    eprintln!("{line}");
                }
            }
        }
        let status = child.wait_with_output().map_err(|e| format!("cargo fuzz: {e}"))?.status;
        out.clean = status.success();
        if out.seconds == 0 {
            // Killed before libFuzzer's last words: the build included.
            out.seconds = started.elapsed().as_secs();
        }
        eprintln!(
            "fuzz: {t}: {} executions, coverage {}, corpus {}, {} s, peak RSS {} MB: {}",
            out.executions,
            out.coverage,
            out.corpus,
            out.seconds,
            out.peak_rss_mb,
            if out.clean { "no crash, timeout or OOM" } else { "FAILED (see fuzz/artifacts)" }
        );
        outcomes.push(out);
    }
    Ok(outcomes)
}

/// Take what libFuzzer says into `out`: status lines (`#N ... cov: C
/// ... corp: K/...`) and final statistics (`stat::name: value`).
pub fn parse_line(line: &str, out: &mut Outcome) {
    let after = |key: &str| {
        line.split_whitespace()
            .skip_while(|w| *w != key)
            .nth(1)
            .and_then(|v| v.split('/').next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    if line.starts_with('#') {
        if let Some(c) = after("cov:") {
            out.coverage = c;
        }
        if let Some(c) = after("corp:") {
            out.corpus = c;
        }
    }
    if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
        out.executions = v.trim().parse().unwrap_or(out.executions);
    }
    if let Some(v) = line.strip_prefix("stat::peak_rss_mb:") {
        out.peak_rss_mb = v.trim().parse().unwrap_or(out.peak_rss_mb);
    }
    // `Done 10000000 runs in 612 second(s)`
    if let Some(rest) = line.strip_prefix("Done ") {
        let words: Vec<&str> = rest.split_whitespace().collect();
        if let Some(v) = words.first() {
            out.executions = v.parse().unwrap_or(out.executions);
        }
        if let (Some(&"in"), Some(v)) = (words.get(2), words.get(3)) {
            out.seconds = v.parse().unwrap_or(out.seconds);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libfuzzer_lines_are_read() {
        let mut o = Outcome::default();
        parse_line(
            "#1048576\tpulse  cov: 1234 ft: 4567 corp: 89/12Kb lim: 4096 exec/s: 9000 rss: 80Mb",
            &mut o,
        );
        parse_line("stat::number_of_executed_units: 10000001", &mut o);
        parse_line("stat::peak_rss_mb:              91", &mut o);
        assert_eq!((o.coverage, o.corpus, o.executions, o.peak_rss_mb), (1234, 89, 10_000_001, 91));
        parse_line("Done 10000000 runs in 612 second(s)", &mut o);
        assert_eq!((o.executions, o.seconds), (10_000_000, 612));
    }

    #[test]
    fn every_target_has_a_file_and_seeds() {
        for t in TARGETS {
            let root = crate::root().join("fuzz");
            assert!(root.join("fuzz_targets").join(format!("{t}.rs")).exists(), "{t}");
            assert!(std::fs::read_dir(root.join("corpus").join(t)).unwrap().count() > 0, "{t}");
        }
    }
}
