//! `cargo xtask bench`: what Torito costs and delivers, measured honestly,
//! by section:
//!
//! - [`launch`]: launch-to-KernelMain and the whole launch, our monitor
//!   against its bare-guest floor, QEMU and Firecracker, configurations
//!   interleaved round by round;
//! - [`process`]: the process unit (context switch, channels, sleeps);
//! - [`block`]: the block device (throughput, IOPS, exits per request);
//! - [`fs`]: the filesystem unit (a share, ext4 and FAT against the raw
//!   disk and QEMU with virtiofsd; exits per small file);
//! - [`net`]: the network data path (stream, request/response);
//! - [`appliances`]: httpd and kvstore with wrk and redis-benchmark against
//!   QEMU and the native servers, exits per request, cold start to first
//!   response;
//! - [`soak`] (only when named): httpd under 1,000 connections for a
//!   minute, memory flat.
//!
//! Verdicts hold on any machine: each target is a ratio against a
//! reference measured in the same run (the bare guest, QEMU, Firecracker,
//! the same launch without a device) or a deterministic count (exits,
//! emulated instructions, guest page faults, bytes), never an absolute
//! time alone. Absolute times are printed for information. [`report`]
//! prints the figures and the targets; `chart` draws `launch.svg`.

pub mod appliances;
pub mod block;
mod chart;
pub mod fs;
pub mod launch;
pub mod net;
pub mod oci;
pub mod process;
pub mod report;
pub mod soak;

use std::path::PathBuf;

use report::Verdicts;

/// A section of the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    /// Launch-to-KernelMain and the whole launch.
    Launch,
    /// The process unit.
    Process,
    /// The block device.
    Block,
    /// The filesystem unit.
    Fs,
    /// The network data path.
    Net,
    /// httpd and kvstore under real clients; cold start to first response.
    Appliances,
    /// httpd under 1,000 connections for a minute (only when named).
    Soak,
    /// torito-oci under containerd: ctr run against runc, each verb, a
    /// detached echo's start.
    Oci,
}

/// Options of a bench run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Counted launches per configuration.
    pub runs: usize,
    /// Uncounted rounds first.
    pub warmup: usize,
    /// Where `launch.json`, `launch.svg` and the disk images go.
    pub out: PathBuf,
    /// Sections to run (all when empty).
    pub sections: Vec<Section>,
}

impl Options {
    fn wants(&self, s: Section) -> bool {
        (self.sections.is_empty() && s != Section::Soak) || self.sections.contains(&s)
    }
}

/// Run the benchmark; `Ok(false)` when a target was missed.
pub fn run(opts: &Options) -> Result<bool, String> {
    // Every process the bench starts carries this mark, so that what
    // outlives it is found at the end.
    let mark = crate::group::mark_this_process();
    std::fs::create_dir_all(&opts.out).map_err(|e| format!("{}: {e}", opts.out.display()))?;
    eprintln!("bench: building the monitor");
    let monitor = crate::build_monitor(true)?;
    let mut verdicts = Verdicts::default();
    if opts.wants(Section::Launch) {
        let l = launch::run(&monitor, opts)?;
        l.print();
        l.targets(&mut verdicts);
        l.write_json(&opts.out)?;
        chart::write_svg(&l, &opts.out.join("launch.svg"))?;
        println!(
            "bench: wrote {} and {}",
            opts.out.join("launch.json").display(),
            opts.out.join("launch.svg").display()
        );
    }
    if opts.wants(Section::Process) {
        process::run(&monitor)?;
    }
    if opts.wants(Section::Block) {
        block::run(&monitor, &opts.out, &mut verdicts)?;
    }
    if opts.wants(Section::Fs) {
        fs::run_section(&monitor, &opts.out, &mut verdicts)?;
    }
    if opts.wants(Section::Net) {
        net::run(&monitor, &mut verdicts)?;
    }
    if opts.wants(Section::Appliances) {
        appliances::run(&monitor, &opts.out, &mut verdicts)?;
    }
    if opts.wants(Section::Oci) {
        oci::run(&opts.out, opts.runs, opts.warmup, &mut verdicts)?;
    }
    if opts.wants(Section::Soak) {
        soak::run(&monitor, &opts.out, &mut verdicts)?;
    }
    let settled = crate::testing::poll(std::time::Duration::from_secs(3), || {
        crate::group::left_behind(&mark).is_empty()
    });
    let left = if settled { 0 } else { crate::group::kill_left_behind(&mark, "bench") };
    verdicts.check(left == 0, format!("processes the bench started and left running: {left} (0)"));
    Ok(verdicts.print())
}

/// min, median, max.
pub fn summary(v: &[f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let med = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    Some((v[0], med, v[n - 1]))
}

/// A summary as three columns.
pub fn fmt3(s: Option<(f64, f64, f64)>) -> String {
    match s {
        Some((a, b, c)) => format!("{a:>9.1} {b:>9.1} {c:>9.1}"),
        None => format!("{:>9} {:>9} {:>9}", "-", "-", "-"),
    }
}

/// The `"key":<number>` of a one-line JSON object (the monitor's
/// `--timeline=json`), without parsing the rest.
pub fn json_number(json: &str, key: &str) -> Option<u64> {
    let i = json.find(&format!("\"{key}\":"))?;
    json[i + key.len() + 3..].chars().take_while(|c| c.is_ascii_digit()).collect::<String>().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_is_min_median_max() {
        assert_eq!(summary(&[3.0, 1.0, 2.0]), Some((1.0, 2.0, 3.0)));
        assert_eq!(summary(&[4.0, 1.0, 2.0, 3.0]), Some((1.0, 2.5, 4.0)));
        assert_eq!(summary(&[]), None);
    }

    #[test]
    fn numbers_from_timeline_json() {
        let j = r#"{"exits":14,"vcpu_stats":{"mmio_exits":6135,"exits":6210}}"#;
        assert_eq!(json_number(j, "mmio_exits"), Some(6135));
        assert_eq!(json_number(j, "exits"), Some(14));
        assert_eq!(json_number(j, "nothing"), None);
    }
}
