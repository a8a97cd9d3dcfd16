//! Torito's build driver, as a library: building guest apps, finding
//! tools, running QEMU. The `xtask` binary and the boot tests both use it.

#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod bare;
pub mod bench;
pub mod containerd;
pub mod devopts;
pub mod fstree;
pub mod fuzz;
pub mod group;
pub mod image;
pub mod netns;
pub mod new;
pub mod run;
pub mod start_order;
pub mod testing;
pub mod virtiofsd;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// The guest target.
pub const TARGET: &str = "x86_64-unknown-none";
/// The target the monitor is built for by `run` and `bench`: a static
/// binary starts faster (no dynamic loader), which is part of every launch.
pub const MONITOR_TARGET: &str = "x86_64-unknown-linux-musl";

/// Root of the workspace.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Errors, as messages for people.
pub type Result<T> = std::result::Result<T, String>;

/// A build variant of a guest ELF.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Variant {
    /// Leave out the multiboot header (QEMU then uses the PVH note).
    pub pvh_only: bool,
    /// Exit at the first line of `kernel_main`.
    pub profile_boot: bool,
    /// Debug build instead of release.
    pub debug: bool,
    /// Full debug information (variables, types) in the optimised build,
    /// for gdb (`cargo xtask run --gdb`).
    pub gdb: bool,
}

impl Variant {
    fn dir_name(&self) -> String {
        let mut s = String::from(if self.debug { "debug" } else { "release" });
        if self.pvh_only {
            s.push_str("-pvh");
        }
        if self.profile_boot {
            s.push_str("-profile");
        }
        if self.gdb {
            s.push_str("-gdb");
        }
        s
    }

    fn features(&self) -> Vec<&'static str> {
        let mut f = Vec::new();
        if self.pvh_only {
            f.push("kernel/no-multiboot");
        }
        if self.profile_boot {
            f.push("kernel/profile-boot");
        }
        f
    }
}

/// Where an app comes from: its package and binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct App {
    /// Cargo package.
    pub package: String,
    /// Binary name (= the app name).
    pub bin: String,
}

/// Apps under `apps/` (one package each) and test apps (binaries of
/// `apps/testapps`).
pub fn apps() -> Vec<App> {
    let mut list = Vec::new();
    let dir = root().join("apps");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    for name in names {
        if name == "testapps" {
            let bins = root().join("apps/testapps/src/bin");
            let mut bins: Vec<String> = std::fs::read_dir(bins)
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .filter_map(|e| {
                            e.file_name().to_string_lossy().strip_suffix(".rs").map(str::to_owned)
                        })
                        .collect()
                })
                .unwrap_or_default();
            bins.sort();
            list.extend(bins.into_iter().map(|b| App { package: "torito-testapps".into(), bin: b }));
        } else if dir.join(&name).join("Cargo.toml").exists() {
            list.push(App { package: name.clone(), bin: name });
        }
    }
    list
}

/// Look an app up by name.
pub fn find_app(name: &str) -> Result<App> {
    let all = apps();
    if let Some(app) = all.iter().find(|a| a.bin == name) {
        if app.package != "torito-testapps" && !is_member(&format!("apps/{name}")) {
            return Err(format!(
                "apps/{name} is not in the workspace: add \"apps/{name}\" to `members` in Cargo.toml \
                 (`cargo xtask new` does this for a new app)"
            ));
        }
        return Ok(app.clone());
    }
    let (apps, tests): (Vec<&App>, Vec<&App>) = all.iter().partition(|a| a.package != "torito-testapps");
    let names = |l: &[&App]| l.iter().map(|a| a.bin.as_str()).collect::<Vec<_>>().join(", ");
    Err(format!(
        "unknown app '{name}'; the apps are {} (test guests: {}); create one with `cargo xtask new {name}`",
        names(&apps),
        names(&tests)
    ))
}

/// Whether `member` (`apps/NAME`) is listed in the workspace's `members`.
fn is_member(member: &str) -> bool {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap_or_default();
    manifest.lines().any(|l| l.trim().trim_end_matches(',') == format!("\"{member}\""))
}

/// A `cargo` command with the environment of the outer cargo removed, so
/// nested builds see only the workspace's own configuration.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for v in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
    ] {
        c.env_remove(v);
    }
    c.current_dir(root());
    c
}

/// Make sure the guest target's standard library is installed; `rustup`
/// does not add targets from `rust-toolchain.toml` on a plain `cargo` run.
pub fn ensure_target() -> Result<()> {
    ensure(TARGET)
}

/// Make sure the standard library for `target` is installed.
pub fn ensure(target: &str) -> Result<()> {
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .current_dir(root())
        .output()
        .map_err(|e| format!("cannot run rustc: {e}"))?;
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_string();
    if Path::new(&sysroot).join("lib/rustlib").join(target).exists() {
        return Ok(());
    }
    eprintln!("xtask: the {target} target is missing; running `rustup target add {target}`");
    let ok = Command::new("rustup")
        .args(["target", "add", target])
        .current_dir(root())
        .status()
        .map_err(|e| {
            format!("cannot run rustup ({e}); install the {target} target for the toolchain in rust-toolchain.toml")
        })?
        .success();
    if ok { Ok(()) } else { Err(format!("`rustup target add {target}` failed")) }
}

static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// Build `app` in `variant`; returns the ELF's path.
pub fn build_app(app: &App, variant: Variant) -> Result<PathBuf> {
    build_app_with_files(app, variant, None)
}

/// Build `app` in `variant` with the files of `files` baked in (instead of
/// the app's own `files/`); returns the ELF's path. Such builds have a
/// target directory of their own, so they do not make the plain build stale.
pub fn build_app_with_files(app: &App, variant: Variant, files: Option<&Path>) -> Result<PathBuf> {
    let _guard = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    ensure_target()?;
    let mut dir = variant.dir_name();
    let mut c = cargo();
    if let Some(f) = files {
        let f = f.canonicalize().map_err(|e| format!("--files {}: {e}", f.display()))?;
        if !f.is_dir() {
            return Err(format!("--files {}: not a directory", f.display()));
        }
        dir.push_str("-files");
        c.env("TORITO_FILES", f);
    } else {
        c.env_remove("TORITO_FILES");
    }
    let target_dir = root().join("target/guest").join(dir);
    c.args(["build", "--quiet", "--package", &app.package, "--bin", &app.bin, "--target", TARGET]);
    c.arg("--target-dir").arg(&target_dir);
    if !variant.debug {
        c.arg("--release");
    }
    if variant.gdb {
        c.env("CARGO_PROFILE_RELEASE_DEBUG", "full").env("CARGO_PROFILE_DEV_DEBUG", "full");
    }
    let features = variant.features();
    if !features.is_empty() {
        c.arg("--features").arg(features.join(","));
    }
    let status = c.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building app '{}' failed (see the compiler output above)", app.bin));
    }
    let elf = target_dir.join(TARGET).join(if variant.debug { "debug" } else { "release" }).join(&app.bin);
    if elf.exists() { Ok(elf) } else { Err(format!("cargo succeeded but {} is missing", elf.display())) }
}

/// Build the app called `name`.
pub fn build(name: &str, variant: Variant) -> Result<PathBuf> {
    build_app(&find_app(name)?, variant)
}

/// For tests: build the app called `name` with the tree `files` baked in,
/// and copy the ELF to `to` (so a later build with other files does not
/// change it under a running test).
pub fn build_with_files(name: &str, variant: Variant, files: &Path, to: &Path) -> Result<PathBuf> {
    let elf = build_app_with_files(&find_app(name)?, variant, Some(files))?;
    std::fs::copy(&elf, to).map_err(|e| format!("copying {} to {}: {e}", elf.display(), to.display()))?;
    Ok(to.to_path_buf())
}

/// Cargo's home (`$CARGO_HOME`, else `~/.cargo`).
pub fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

/// Copy the program `from` into `dir` (created if missing) under its own
/// name, through a temporary file and a rename, so that a copy that is
/// running is replaced, not overwritten. Returns the installed path.
pub fn install(from: &Path, dir: &Path) -> Result<PathBuf> {
    let name = from.file_name().ok_or_else(|| format!("{}: not a file", from.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let to = dir.join(name);
    let tmp = dir.join(format!(".{}.{}", name.to_string_lossy(), std::process::id()));
    std::fs::copy(from, &tmp).map_err(|e| format!("copying {} to {}: {e}", from.display(), tmp.display()))?;
    std::fs::rename(&tmp, &to).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("{}: {e}", to.display())
    })?;
    Ok(to)
}

/// Build the API documentation an app's author reads: the kernel crate
/// with every unit (each at `kernel::net`, `kernel::fs`, …) and the units'
/// and the ABI's crates, for the guest target, with rustdoc's warnings as
/// errors. Returns the path of the kernel's `index.html`.
pub fn api_docs(open: bool) -> Result<PathBuf> {
    ensure_target()?;
    let target_dir = root().join("target/doc");
    let mut c = cargo();
    c.args(["doc", "--quiet", "--no-deps", "--target", TARGET]).arg("--target-dir").arg(&target_dir);
    let features = ["net", "fs", "process", "devices"].map(|f| format!("torito-kernel/{f}"));
    c.args(["--features", &features.join(",")]);
    for p in
        ["torito-kernel", "unit-memory", "unit-process", "unit-devices", "unit-net", "unit-fs", "torito-abi"]
    {
        c.args(["-p", p]);
    }
    if open {
        c.arg("--open");
    }
    c.env("RUSTDOCFLAGS", "-D warnings");
    let ok = c.status().map_err(|e| format!("cannot run cargo: {e}"))?.success();
    if !ok {
        return Err("cargo doc failed or warned (see its output above)".into());
    }
    Ok(target_dir.join(TARGET).join("doc/kernel/index.html"))
}

/// Build the monitor, static, for [`MONITOR_TARGET`]; returns the path of
/// `torito`.
pub fn build_monitor(release: bool) -> Result<PathBuf> {
    ensure(MONITOR_TARGET)?;
    let mut c = cargo();
    c.args(["build", "--quiet", "--package", "torito-vmm", "--bin", "torito", "--target", MONITOR_TARGET]);
    if release {
        c.arg("--release");
    }
    let ok = c.status().map_err(|e| format!("cannot run cargo: {e}"))?.success();
    if !ok {
        return Err("building the monitor failed (see the compiler output above)".into());
    }
    Ok(root()
        .join("target")
        .join(MONITOR_TARGET)
        .join(if release { "release" } else { "debug" })
        .join("torito"))
}

/// Build `torito-oci` (static, beside the monitor) and the monitor; the
/// path of `torito-oci` (it finds `torito` in its own directory).
pub fn build_oci(release: bool) -> Result<PathBuf> {
    let monitor = build_monitor(release)?;
    let mut c = cargo();
    c.args([
        "build",
        "--quiet",
        "--package",
        "torito-oci",
        "--bin",
        "torito-oci",
        "--target",
        MONITOR_TARGET,
    ]);
    if release {
        c.arg("--release");
    }
    let ok = c.status().map_err(|e| format!("cannot run cargo: {e}"))?.success();
    if !ok {
        return Err("building torito-oci failed (see the compiler output above)".into());
    }
    Ok(monitor.with_file_name("torito-oci"))
}

/// Build the CRI client (`xtask/cri`, a workspace of its own: `k8s-cri`
/// compiles the CRI protocol with protoc, which the rest of the project
/// does not need); its path, or why it cannot be built.
pub fn build_cri_client() -> Result<PathBuf> {
    if !have("protoc") {
        return Err(
            "protoc is not installed (Debian: protobuf-compiler): the CRI client cannot be built".into()
        );
    }
    let target = root().join("target/cri");
    let mut c = cargo();
    c.args(["build", "--quiet", "--manifest-path"])
        .arg(root().join("xtask/cri/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target);
    let ok = c.status().map_err(|e| format!("cannot run cargo: {e}"))?.success();
    if !ok {
        return Err("building the CRI client (xtask/cri) failed (see the compiler output above)".into());
    }
    Ok(target.join("debug/torito-cri"))
}

/// For tests: check that the `threads` app's "wall clock N s" line is
/// within two minutes of the host's clock; panics with the line if not.
pub fn assert_guest_wall_clock(console: &str) {
    let line = console.lines().find(|l| l.contains("wall clock")).expect("a wall clock line");
    let secs: u64 = line
        .split("wall clock ")
        .nth(1)
        .and_then(|x| x.split(' ').next())
        .and_then(|x| x.parse().ok())
        .unwrap_or_else(|| panic!("no time in: {line}"));
    let host = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    assert!(secs.abs_diff(host) < 120, "{line} (host: {host})");
}

/// `CLOCK_MONOTONIC` in ns: the clock of the monitor's `TORITO_LAUNCH_NS`
/// (a launcher reads it just before it spawns the monitor).
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    #[allow(unsafe_code)]
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts)
    };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Build the `netload` test client (host, debug); its path.
pub fn build_netload() -> Result<PathBuf> {
    let mut c = cargo();
    c.args(["build", "--quiet", "--package", "xtask", "--bin", "netload"]);
    let st = c.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !st.success() {
        return Err("building netload failed".into());
    }
    Ok(root().join("target/debug/netload"))
}

/// For tests: a disk image of `len` bytes in the temporary directory,
/// filled with the pattern `apps/blkcheck` expects to read.
pub fn blkcheck_image(name: &str, len: usize) -> PathBuf {
    let path = std::env::temp_dir().join(format!("torito-{name}-{}.img", std::process::id()));
    let data: Vec<u8> = (0..len).map(|o| ((o / 512) as u8).wrapping_mul(31) ^ (o as u8)).collect();
    std::fs::write(&path, data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}

/// For tests: `after` is `before` with blkcheck's 64 KiB written at
/// offset 64 KiB, byte for byte.
pub fn assert_blkcheck_wrote(before: &[u8], after: &[u8]) {
    const SPAN: usize = 64 * 1024;
    assert_eq!(before.len(), after.len(), "the image changed size");
    for (o, &b) in after.iter().enumerate() {
        let want = if (SPAN..2 * SPAN).contains(&o) { ((o * 13) >> 3) as u8 ^ 0x5a } else { before[o] };
        assert_eq!(b, want, "byte {o} of the image");
    }
}

/// For tests: connect to guest vsock `port` through a hybrid-vsock Unix
/// socket (`CONNECT <port>\n` → `OK <host port>\n`, the protocol of our
/// monitor and Firecracker), retrying every 50 ms for up to `within` while
/// the appliance is not listening yet. Panics with the last error.
pub fn hybrid_vsock_connect(
    uds: &Path,
    port: u32,
    within: std::time::Duration,
) -> std::os::unix::net::UnixStream {
    use std::io::{BufRead, Write};
    let t = std::time::Instant::now();
    loop {
        let attempt = std::os::unix::net::UnixStream::connect(uds).and_then(|mut s| {
            s.write_all(format!("CONNECT {port}\n").as_bytes())?;
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
            let mut line = String::new();
            std::io::BufReader::new(s.try_clone()?).read_line(&mut line)?;
            s.set_read_timeout(None)?;
            if line.starts_with("OK ") { Ok(s) } else { Err(std::io::Error::other(line)) }
        });
        match attempt {
            Ok(s) => return s,
            Err(_) if t.elapsed() < within => std::thread::sleep(std::time::Duration::from_millis(50)),
            Err(e) => panic!("no vsock connection through {}: {e}", uds.display()),
        }
    }
}

/// For tests: send `len` pattern bytes (varied by `seed`) through `s` while
/// reading the echo on another thread; panics unless every byte comes back
/// in order within 20 s.
pub fn assert_echoes(s: &mut std::os::unix::net::UnixStream, len: usize, seed: u8) {
    use std::io::{Read, Write};
    let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed) ^ (i >> 10) as u8).collect();
    let mut reader = s.try_clone().expect("a second handle on the stream");
    let back = std::thread::spawn(move || {
        let mut got = vec![0u8; len];
        reader.set_read_timeout(Some(std::time::Duration::from_secs(20)))?;
        reader.read_exact(&mut got).map(|_| got)
    });
    s.write_all(&data).expect("sending to the guest");
    let got = back.join().expect("the reader thread").expect("the echo");
    assert!(got == data, "echoed bytes differ");
}

/// Whether `/dev/kvm` can be opened for reading and writing.
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

/// Whether a program is on `PATH`.
pub fn have(program: &str) -> bool {
    Command::new(program).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// QEMU machine configurations the kernel is tested on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QemuMachine {
    /// `-M pc` with TCG (SeaBIOS; multiboot).
    PcTcg,
    /// `-M q35` with TCG.
    Q35Tcg,
    /// `-M pc` with qboot firmware and TCG (PVH).
    PcQbootTcg,
    /// `-M microvm` with KVM.
    MicrovmKvm,
}

impl QemuMachine {
    /// Whether this machine needs `/dev/kvm`.
    pub fn needs_kvm(self) -> bool {
        self == QemuMachine::MicrovmKvm
    }

    /// The name used on the command line of `cargo xtask run --qemu`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "pc" => Ok(Self::PcTcg),
            "q35" => Ok(Self::Q35Tcg),
            "qboot" => Ok(Self::PcQbootTcg),
            "microvm" => Ok(Self::MicrovmKvm),
            _ => Err(format!("unknown QEMU machine '{s}' (pc, q35, qboot, microvm)")),
        }
    }
}

/// `len` pseudo-random bytes from `seed` (xorshift64): test data that
/// nothing compresses or matches by luck, the same on every run.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A QEMU command that boots `elf` with console on stdio and the
/// `isa-debug-exit` device; QEMU then exits with `(code << 1) | 1`.
pub fn qemu(machine: QemuMachine, elf: &Path, cmdline: &str) -> Command {
    qemu_with(machine, elf, cmdline, true)
}

/// [`qemu`], optionally without `isa-debug-exit` (the guest then stops
/// through the i8042 reset, as on Firecracker, and QEMU exits with 0).
pub fn qemu_with(machine: QemuMachine, elf: &Path, cmdline: &str, debug_exit: bool) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-display", "none", "-no-reboot", "-nodefaults", "-serial", "stdio", "-m", "128M"]);
    if debug_exit {
        c.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    }
    match machine {
        QemuMachine::PcTcg => c.args(["-M", "pc", "-accel", "tcg"]),
        QemuMachine::Q35Tcg => c.args(["-M", "q35", "-accel", "tcg"]),
        QemuMachine::PcQbootTcg => {
            c.args(["-M", "pc", "-accel", "tcg", "-bios", "/usr/share/qemu/qboot.rom"])
        }
        QemuMachine::MicrovmKvm => {
            c.args(["-M", "microvm,x-option-roms=off,pit=off,pic=off,rtc=off,isa-serial=on", "-accel", "kvm"])
        }
    };
    c.arg("-kernel").arg(elf);
    if !cmdline.is_empty() {
        c.args(["-append", cmdline]);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_its_apps() {
        assert_eq!(find_app("hello").unwrap(), App { package: "hello".into(), bin: "hello".into() });
        assert_eq!(find_app("exit42").unwrap().package, "torito-testapps");
        let e = find_app("nope").unwrap_err();
        assert!(e.contains("unknown app 'nope'") && e.contains("hello"), "{e}");
    }

    #[test]
    fn variants_get_their_own_directories() {
        let a = Variant::default().dir_name();
        let b = Variant { pvh_only: true, ..Default::default() }.dir_name();
        let c = Variant { profile_boot: true, debug: true, ..Default::default() }.dir_name();
        assert_eq!((a.as_str(), b.as_str(), c.as_str()), ("release", "release-pvh", "debug-profile"));
    }

    #[test]
    fn install_replaces_a_program_in_place() {
        let d = std::env::temp_dir().join(format!("xtask-install-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("src")).unwrap();
        std::fs::write(d.join("src/torito"), b"new").unwrap();
        std::fs::create_dir_all(d.join("bin")).unwrap();
        std::fs::write(d.join("bin/torito"), b"old").unwrap();
        let to = install(&d.join("src/torito"), &d.join("bin")).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(d.join("bin")).unwrap().count(), 1, "no temporary file left");
        assert!(install(&d.join("src/missing"), &d.join("bin")).unwrap_err().contains("copying"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn qemu_machines_parse() {
        assert_eq!(QemuMachine::parse("microvm"), Ok(QemuMachine::MicrovmKvm));
        assert!(QemuMachine::parse("vax").is_err());
    }
}
