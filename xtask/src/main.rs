//! `cargo xtask`: build, run and test Torito appliances.
//!
//! ```text
//! cargo xtask new <name> [--uses net,fs,process,devices]            a new appliance under apps/
//! cargo xtask build <app> [--pvh] [--profile-boot] [--debug] [--files DIR]   prints the ELF path last
//! cargo xtask run <app> [--mem 128M] [--cpus N] [--disk ..] [--net ..] [--share ..] [--vsock ..]
//!                       [--qemu MACHINE | --firecracker] [--timeline] [--timeout S] [-v] [-- args]
//! cargo xtask test [FILTER]                                     everything (or the tests whose name contains FILTER)
//! cargo xtask doc [--open]                                     the API docs (kernel and units), warning-free
//! cargo xtask install [--to DIR]                               the monitor and torito-oci, to $CARGO_HOME/bin
//! cargo xtask image <app> [-o FILE] [--mem 128M] [-- args]      an OCI image tarball (ctr images import)
//! cargo xtask symbolize <app> [--pvh] < LOG                      backtraces of a QEMU/Firecracker log, named
//! cargo xtask lint                                              fmt + clippy (the workspace on the host, the guest crates)
//! cargo xtask start-order                                       linker/start-order.ld, from QEMU traces of httpd and kvstore
//! cargo xtask bench [launch|process|block|fs|net|appliances|oci|soak]... [-n 30] [--check]
//! ```

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};

use clap::{Args, Parser, Subcommand};
use xtask::run::Target;
use xtask::{QemuMachine, Variant};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run and test Torito appliances")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct VariantArgs {
    /// Leave out the multiboot header (QEMU then boots the PVH entry).
    #[arg(long)]
    pvh: bool,
    /// Exit at the first line of kernel_main (boot-time measurements).
    #[arg(long)]
    profile_boot: bool,
    /// Debug build of the app (default: release).
    #[arg(long)]
    debug: bool,
    /// Bake the files of this directory into the ELF, served at `/` by the
    /// filesystem unit (default: the app's `files/` directory, if any).
    #[arg(long, value_name = "DIR")]
    files: Option<std::path::PathBuf>,
}

impl From<VariantArgs> for Variant {
    fn from(v: VariantArgs) -> Self {
        Variant { pvh_only: v.pvh, profile_boot: v.profile_boot, debug: v.debug, gdb: false }
    }
}

#[derive(Args)]
struct RunArgs {
    /// App name.
    app: String,
    #[command(flatten)]
    variant: VariantArgs,
    /// Guest RAM.
    #[arg(long, default_value = "128M")]
    mem: String,
    /// Number of CPUs (`--cpus` of the monitor, `-smp` of QEMU).
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// A disk, `/disk<N>` in the guest: `PATH[,ro][,iothread]`
    /// (repeatable; `iothread` on the monitor only).
    #[arg(long, value_name = "PATH[,ro]")]
    disk: Vec<String>,
    /// A NIC on an existing TAP device: `tap=NAME[,mac=MAC]`
    /// (repeatable).
    #[arg(long, value_name = "tap=NAME[,mac=MAC]")]
    net: Vec<String>,
    /// A host directory for the guest, at `/TAG`: `DIR[,tag=NAME][,ro]`
    /// (with `--qemu`: served by virtiofsd, read-write; not on
    /// Firecracker).
    #[arg(long, value_name = "DIR[,tag=NAME][,ro]")]
    share: Vec<String>,
    /// A vsock device whose host side is the Unix socket PATH:
    /// `cid=N,uds=PATH` (the monitor and Firecracker).
    #[arg(long, value_name = "cid=N,uds=PATH")]
    vsock: Option<String>,
    /// Boot on QEMU instead: pc, q35, qboot (PVH on pc) or microvm.
    #[arg(long, value_name = "MACHINE")]
    qemu: Option<String>,
    /// Boot on Firecracker instead (PVH build; its configuration file
    /// is written and removed afterwards).
    #[arg(long)]
    firecracker: bool,
    /// Print the command that boots the guest.
    #[arg(short, long)]
    verbose: bool,
    /// Wait for gdb before the first instruction, on PORT (default 1234),
    /// with full debug information in the build; prints the gdb command.
    /// On the monitor (`torito --gdb`) or QEMU with TCG (`--qemu pc`, `q35`,
    /// `qboot`); not QEMU microvm (KVM) or Firecracker.
    #[arg(long, value_name = "PORT", num_args = 0..=1, require_equals = true, default_missing_value = "1234")]
    gdb: Option<u16>,
    /// When the guest panics or faults, write an ELF core file to PATH
    /// (`gdb <ELF> PATH`; the monitor only).
    #[arg(long, value_name = "PATH")]
    core: Option<std::path::PathBuf>,
    /// Print the monitor's timeline (`--timeline=json`: one JSON line;
    /// `--timeline=json-events`: its events alone).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "text", value_name = "json")]
    timeline: Option<String>,
    /// Stop the guest after this many seconds (the monitor's
    /// `--timeout`; with `--qemu`, QEMU is stopped). Status 124.
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// Kernel command line.
    #[arg(last = true)]
    args: Vec<String>,
}

impl RunArgs {
    /// What `xtask::run` needs: the target chosen, the rest as given.
    fn into_options(self) -> Result<xtask::run::RunOptions, String> {
        let target = match (self.qemu, self.firecracker) {
            (Some(_), true) => return Err("--qemu and --firecracker: choose one target".into()),
            (Some(m), false) => Target::Qemu(QemuMachine::parse(&m)?),
            (None, true) => Target::Firecracker,
            (None, false) => Target::Torito,
        };
        Ok(xtask::run::RunOptions {
            app: self.app,
            files: self.variant.files.clone(),
            variant: self.variant.into(),
            target,
            mem: self.mem,
            cpus: self.cpus,
            disks: self.disk,
            nets: self.net,
            shares: self.share,
            vsock: self.vsock,
            timeline: self.timeline,
            timeout: self.timeout,
            verbose: self.verbose,
            core: self.core,
            gdb: self.gdb,
            args: self.args,
        })
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a new appliance under apps/ (builds, boots and has a unit
    /// test from the start) and add it to the workspace.
    New {
        /// Its name: a lowercase letter, then letters, digits, '-' or '_'.
        name: String,
        /// The kernel units it uses, beyond memory: process, fs, net,
        /// devices (comma-separated or repeated).
        #[arg(long, value_name = "UNITS")]
        uses: Vec<String>,
    },
    /// Build an app with the kernel into one ELF; prints its path last.
    Build {
        /// App name (a directory under apps/, or a test app).
        app: String,
        #[command(flatten)]
        variant: VariantArgs,
    },
    /// Build the monitor and an app, and boot it; exits with the app's code.
    Run(Box<RunArgs>),
    /// Run every test: host unit tests, boot tests on the monitor and QEMU
    /// (with FILTER: only the tests whose name contains it).
    Test {
        /// Part of the test names to run (as `cargo test FILTER`).
        filter: Option<String>,
    },
    /// Check formatting and run clippy (host crates and guest crates).
    Lint,
    /// Name the functions and lines of the backtraces in a log (stdin) of
    /// an app that ran on QEMU or Firecracker (the monitor does it itself).
    Symbolize {
        /// The app the log is from.
        app: String,
        /// It was built with `--pvh` (as for QEMU microvm and Firecracker).
        #[arg(long)]
        pvh: bool,
    },
    /// Write linker/start-order.ld: the functions an appliance's start runs,
    /// in the order it first runs them (httpd and kvstore traced on QEMU
    /// with TCG until a client's first answer), which the linker script
    /// places first. Needs root, QEMU, nm, curl and redis-cli.
    StartOrder,
    /// Build the monitor and torito-oci (static binaries) and copy them to
    /// DIR, by default `$CARGO_HOME/bin` (where `cargo install` puts
    /// programs).
    Install {
        /// The directory to install `torito` and `torito-oci` in.
        #[arg(long, value_name = "DIR")]
        to: Option<std::path::PathBuf>,
    },
    /// Write an OCI image tarball of an app (`ctr images import FILE`,
    /// then run it with `torito-oci`, see docs/kubernetes.md); prints its
    /// path and the image's name last.
    Image {
        /// App name.
        app: String,
        /// The tarball (default: target/images/<app>.oci.tar).
        #[arg(short, long, value_name = "FILE")]
        output: Option<std::path::PathBuf>,
        /// The image's name (default: docker.io/torito/<app>:latest).
        #[arg(long)]
        name: Option<String>,
        /// Guest RAM when the container has no memory limit (TORITO_MEM).
        #[arg(long, default_value = "128M")]
        mem: String,
        /// Default guest arguments (the image's Cmd).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build the API docs (the kernel with every unit), warning-free;
    /// prints the path of the kernel's index.html last.
    Doc {
        /// Open them in a browser.
        #[arg(long)]
        open: bool,
    },
    /// Measure launch-to-KernelMain against the bare-guest floor and QEMU
    /// (and Firecracker when installed), then the process unit, the block
    /// device and the network; writes JSON and an SVG chart. Missed
    /// targets are reported ([MISS]); with `--check` they also make the
    /// exit status 1 (for CI-style use).
    Bench {
        /// Sections to run (default: all).
        #[arg(value_enum)]
        sections: Vec<xtask::bench::Section>,
        /// Counted launches per configuration.
        #[arg(short = 'n', long, default_value_t = 30)]
        runs: usize,
        /// Uncounted rounds first.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Output directory.
        #[arg(long, default_value = "target/bench")]
        out: std::path::PathBuf,
        /// Exit with status 1 when a target is missed.
        #[arg(long)]
        check: bool,
    },
    /// Fuzz the monitor's guest-facing parsers with cargo-fuzz (nightly
    /// toolchain, for this only): every target, or the ones named.
    Fuzz {
        /// Targets (default: all): elf, command_line, kernel_cmdline, mmio,
        /// virtio_blk, virtio_net, virtio_vsock.
        targets: Vec<String>,
        /// Seconds per target (default 60, or no limit with `--runs`).
        #[arg(long)]
        time: Option<u64>,
        /// Inputs per target: stop after this many executions.
        #[arg(long)]
        runs: Option<u64>,
        /// Build with AddressSanitizer (cargo-fuzz's default; ~2.6× fewer
        /// inputs a second here). Off by default: the code fuzzed has no
        /// `unsafe` of its own, so what the fuzzers look for are panics
        /// (bounds, overflow with debug assertions), hangs and growth.
        #[arg(long)]
        asan: bool,
    },
}

fn status(c: &mut Command) -> Result<i32, String> {
    let s = c.status().map_err(|e| format!("cannot run {:?}: {e}", c.get_program()))?;
    Ok(s.code().unwrap_or(1))
}

fn run() -> Result<i32, String> {
    match Cli::parse().cmd {
        Cmd::New { name, uses } => {
            let uses = xtask::new::parse_uses(&uses)?;
            let c = xtask::new::create(&xtask::root(), &name, &uses)?;
            let units = if c.uses.is_empty() {
                "memory".to_string()
            } else {
                format!("memory, {}", c.uses.join(", "))
            };
            println!("xtask: created apps/{name} (units: {units}) and added it to the workspace's members");
            println!("  cargo xtask run {name} -- a b c     # build it and boot it on the Torito monitor");
            println!("  cargo test -p {name}                # its unit tests (src/lib.rs), on the host");
            println!("  cargo xtask run {name} --qemu microvm");
            println!("src/lib.rs holds the logic the host can test, src/main.rs the guest's entry point.");
            Ok(0)
        }
        Cmd::Build { app, variant } => {
            let files = variant.files.clone();
            let elf = xtask::build_app_with_files(&xtask::find_app(&app)?, variant.into(), files.as_deref())?;
            println!("{}", elf.display());
            Ok(0)
        }
        Cmd::Run(r) => xtask::run::run(&r.into_options()?),
        Cmd::Test { filter } => test(filter.as_deref()),
        Cmd::Lint => lint(),
        Cmd::StartOrder => {
            println!("{}", xtask::start_order::run()?.display());
            Ok(0)
        }
        Cmd::Symbolize { app, pvh } => {
            let monitor = xtask::build_monitor(true)?;
            let elf = xtask::build(&app, Variant { pvh_only: pvh, ..Default::default() })?;
            status(Command::new(monitor).arg("--symbolize").arg(elf))
        }
        Cmd::Install { to } => {
            let dir = match to {
                Some(d) => d,
                None => {
                    xtask::cargo_home().ok_or("cannot tell where $CARGO_HOME is: give --to DIR")?.join("bin")
                }
            };
            eprintln!("xtask: building the monitor (torito) and torito-oci…");
            let oci = xtask::build_oci(true)?;
            let installed = xtask::install(&oci.with_file_name("torito"), &dir)?;
            println!("installed {}", installed.display());
            println!("installed {}", xtask::install(&oci, &dir)?.display());
            let on_path = std::env::var_os("PATH").is_some_and(|p| {
                std::env::split_paths(&p)
                    .any(|d| d == dir || d.canonicalize().ok() == dir.canonicalize().ok())
            });
            if !on_path {
                eprintln!("xtask: {} is not on PATH; add it, or run {}", dir.display(), installed.display());
            }
            Ok(0)
        }
        Cmd::Image { app, output, name, mem, args } => {
            let digits = mem.strip_suffix(['K', 'M', 'G']).unwrap_or(&mem);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("--mem {mem}: not a size like 128M"));
            }
            let elf = xtask::build(&app, Variant::default())?;
            let bytes = std::fs::read(&elf).map_err(|e| format!("cannot read {}: {e}", elf.display()))?;
            let out = match output {
                Some(o) => o,
                None => {
                    let dir = xtask::root().join("target/images");
                    std::fs::create_dir_all(&dir)
                        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                    dir.join(format!("{app}.oci.tar"))
                }
            };
            let name = name.unwrap_or_else(|| xtask::image::default_name(&app));
            let spec = xtask::image::ImageSpec::appliance(&name, Some(&bytes), &args, &mem);
            xtask::image::write(&spec, &out)?;
            println!("{}\n{name}", out.display());
            Ok(0)
        }
        Cmd::Doc { open } => {
            let index = xtask::api_docs(open)?;
            println!("{}", index.display());
            Ok(0)
        }
        Cmd::Fuzz { targets, time, runs, asan } => {
            let limit =
                xtask::fuzz::Limit { seconds: time.or(if runs.is_some() { None } else { Some(60) }), runs };
            let outcomes = xtask::fuzz::run(&targets, limit, asan)?;
            Ok(if outcomes.iter().all(|o| o.clean) { 0 } else { 1 })
        }
        Cmd::Bench { sections, runs, warmup, out, check } => {
            let out = if out.is_absolute() { out } else { xtask::root().join(out) };
            let opts = xtask::bench::Options { runs: runs.max(1), warmup, out, sections };
            let ok = xtask::bench::run(&opts)?;
            if !ok {
                println!(
                    "\nbench: some targets were missed (the [MISS] lines above); {}",
                    if check { "exit status 1 (--check)" } else { "exit status 0 (--check makes it 1)" }
                );
            }
            Ok(if ok || !check { 0 } else { 1 })
        }
    }
}

fn test(filter: Option<&str>) -> Result<i32, String> {
    xtask::ensure_target()?;
    // Build every guest variant first, so a broken guest build fails here
    // with the compiler's message rather than inside a test.
    for app in xtask::apps() {
        for pvh_only in [false, true] {
            xtask::build_app(&app, Variant { pvh_only, ..Default::default() })?;
        }
    }
    // Tests that cannot run (a tool or KVM missing) record themselves here;
    // they are counted as skipped, not passed.
    let skip_log = xtask::root().join("target/test-skips.log");
    let _ = std::fs::remove_file(&skip_log);
    let mut cargo = xtask::cargo();
    // The whole workspace: an app's own unit tests (its library, on the
    // host) run too.
    cargo.args(["test", "--workspace", "--no-fail-fast"]);
    if let Some(f) = filter {
        cargo.args(["--", f]);
    }
    // Every process the tests start carries this mark: whatever is still
    // alive with it at the end was left behind, and fails the run.
    let mark = xtask::group::new_mark();
    let mut child = cargo
        .env(xtask::testing::SKIP_LOG, &skip_log)
        .env(xtask::group::RUN_MARK, &mark)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run cargo test: {e}"))?;
    let (mut passed, mut failed) = (0u64, 0u64);
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.map_err(|e| format!("reading cargo test output: {e}"))?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                passed += count(rest, " passed");
                failed += count(rest, " failed");
            }
        }
    }
    let mut code = child.wait().map_err(|e| format!("cargo test: {e}"))?.code().unwrap_or(1);
    // The README's first command runs the static release monitor, which
    // `cargo test` does not build: boot hello on it once.
    let mut smoke_skipped = 0;
    // (Not with a filter: the caller asked for some tests only.)
    if filter.is_none() {
        match smoke() {
            Ok(true) => passed += 1,
            Ok(false) => smoke_skipped = 1,
            Err(e) => {
                println!("smoke test FAILED: {e}");
                failed += 1;
                code = code.max(1);
            }
        }
    }
    let mut skipped: Vec<String> =
        std::fs::read_to_string(&skip_log).unwrap_or_default().lines().map(String::from).collect();
    skipped.sort();
    skipped.dedup_by(|a, b| a.split('\t').next() == b.split('\t').next());
    for s in &skipped {
        let (name, why) = s.split_once('\t').unwrap_or((s, ""));
        println!("skipped: {name}: {why}");
    }
    let skipped = skipped.len() as u64;
    let (passed, skipped) = (passed.saturating_sub(skipped), skipped + smoke_skipped);
    // Stragglers get a moment to finish dying before they count.
    let settled = xtask::testing::poll(std::time::Duration::from_secs(3), || {
        xtask::group::left_behind(&mark).is_empty()
    });
    if !settled {
        let n = xtask::group::kill_left_behind(&mark, "xtask test");
        println!("FAILED: the tests left {n} process(es) running (listed above)");
        failed += 1;
        code = code.max(1);
    }
    println!("xtask test: {passed} passed, {failed} failed, {skipped} skipped");
    Ok(code)
}

/// Build the static release monitor and boot hello on it. `Ok(false)`:
/// skipped (no usable /dev/kvm).
fn smoke() -> Result<bool, String> {
    let monitor = xtask::build_monitor(true)?;
    let elf = xtask::build("hello", Variant::default())?;
    if !xtask::kvm_usable() {
        println!("SKIPPED: /dev/kvm is not usable; smoke test of the release monitor not run");
        return Ok(false);
    }
    let out = Command::new(&monitor)
        .args(["--timeout", "20"])
        .arg(&elf)
        .args(["--", "smoke"])
        .output()
        .map_err(|e| format!("{}: {e}", monitor.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if out.status.code() != Some(0)
        || !text.contains("Hello from Torito!")
        || !text.contains("command line: smoke")
    {
        return Err(format!(
            "the release monitor did not boot hello (status {:?}): {text}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    println!("smoke test: the static release monitor boots hello ... ok");
    Ok(true)
}

/// The number before `what` in a `test result:` line.
fn count(line: &str, what: &str) -> u64 {
    line.find(what).and_then(|end| line[..end].rsplit([' ', '.']).next()?.parse().ok()).unwrap_or(0)
}

fn lint() -> Result<i32, String> {
    xtask::ensure_target()?;
    // Every guest package: the kernel and each app's package.
    let mut guest: Vec<String> = vec!["torito-kernel".into()];
    for app in xtask::apps() {
        if !guest.contains(&app.package) {
            guest.push(app.package);
        }
    }
    let mut guest_clippy: Vec<String> =
        ["clippy", "--quiet", "--target", xtask::TARGET, "--target-dir", "target/guest/clippy"]
            .map(String::from)
            .to_vec();
    for p in &guest {
        guest_clippy.extend(["-p".to_string(), p.clone()]);
    }
    guest_clippy.extend(["--", "-D", "warnings"].map(String::from));
    // The kernel alone, with no unit features (as hello builds it): the
    // apps together enable them all.
    let bare_kernel = [
        "clippy",
        "--quiet",
        "--target",
        xtask::TARGET,
        "--target-dir",
        "target/guest/clippy",
        "-p",
        "torito-kernel",
        "--",
        "-D",
        "warnings",
    ]
    .map(String::from)
    .to_vec();
    let steps: [Vec<String>; 4] = [
        ["fmt", "--all", "--", "--check"].map(String::from).to_vec(),
        // Every crate on the host, the guest ones included: what `cargo
        // check --workspace` (and so an IDE) sees must be clean.
        ["clippy", "--workspace", "--all-targets", "--quiet", "--", "-D", "warnings"]
            .map(String::from)
            .to_vec(),
        guest_clippy,
        bare_kernel,
    ];
    for s in steps {
        let code = status(xtask::cargo().args(&s))?;
        if code != 0 {
            return Err(format!("`cargo {}` failed", s.join(" ")));
        }
    }
    // The CRI client, a workspace of its own (it needs protoc to build).
    let cri = xtask::root().join("xtask/cri/Cargo.toml");
    let cri = cri.to_string_lossy();
    let mut cri_steps = vec![vec!["fmt", "--manifest-path", &cri, "--", "--check"]];
    if xtask::have("protoc") {
        cri_steps.push(vec![
            "clippy",
            "--quiet",
            "--manifest-path",
            &cri,
            "--target-dir",
            "target/cri",
            "--",
            "-D",
            "warnings",
        ]);
    } else {
        eprintln!("xtask: protoc is not installed: the CRI client (xtask/cri) is formatted but not linted");
    }
    for s in cri_steps {
        let code = status(xtask::cargo().args(&s))?;
        if code != 0 {
            return Err(format!("`cargo {}` failed", s.join(" ")));
        }
    }
    eprintln!("xtask: lint clean");
    Ok(0)
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::from(1)
        }
    }
}
