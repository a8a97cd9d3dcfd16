//! A newcomer's first hour, as a test.
//!
//! - `cargo xtask new` end to end: in a copy of the workspace, create an
//!   app with the network unit, build it with `cargo xtask build`, boot it
//!   on the monitor (status 0, its greeting), run its unit test on the host
//!   with `cargo test -p`, and build it with a plain `cargo build` (the
//!   host binary says how to boot it). The copy lives at a fixed path under
//!   `target/` so that cargo's artifacts there are reused from run to run.
//! - `cargo xtask run` stopped by Ctrl-C: xtask waits for the monitor's
//!   timeline and exits with its status.
//! - `cargo xtask doc`: the API docs build without a warning.

use std::path::{Path, PathBuf};
use std::process::Command;

use xtask::testing::kvm;

/// Copy the workspace's sources (not `target/`, not `.git/`) into `to`,
/// whose sources are replaced and whose `target/` is kept.
fn copy_workspace(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(to).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "target" {
            let p = e.path();
            if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) }.unwrap();
        }
    }
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let name = e.file_name();
            let ty = e.file_type().unwrap();
            if ty.is_dir() {
                copy(&e.path(), &to.join(&name));
            } else if ty.is_file() {
                std::fs::copy(e.path(), to.join(&name)).unwrap();
            }
        }
    }
    let root = xtask::root();
    for e in std::fs::read_dir(&root).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name == "target" || name == ".git" {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            copy(&e.path(), &to.join(&name));
        } else {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

/// Run `cargo ARGS` in `dir` (with the outer cargo's environment removed):
/// (status, stdout, stderr).
fn cargo(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = xtask::cargo().current_dir(dir).args(args).output().expect("run cargo");
    let r = (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    eprintln!("--- cargo {args:?} in {} -> {}\n{}{}", dir.display(), r.0, r.1, r.2);
    r
}

#[test]
fn a_new_app_builds_boots_and_tests_from_the_first_minute() {
    let ws: PathBuf = xtask::root().join("target/tests/new-app-workspace");
    copy_workspace(&ws);

    let (code, out, _) = cargo(&ws, &["xtask", "new", "demo-app", "--uses", "net"]);
    assert_eq!(code, 0);
    assert!(out.contains("cargo xtask run demo-app"), "{out}");
    assert!(std::fs::read_to_string(ws.join("Cargo.toml")).unwrap().contains("\"apps/demo-app\","));
    // Twice: refused, nothing changed.
    let (code, _, err) = cargo(&ws, &["xtask", "new", "demo-app"]);
    assert_eq!(code, 1);
    assert!(err.contains("apps/demo-app already exists"), "{err}");
    // A name that is not one: refused with the rule.
    let (code, _, err) = cargo(&ws, &["xtask", "new", "Demo App"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot name an app"), "{err}");

    // The guest ELF, its path printed last.
    let (code, out, _) = cargo(&ws, &["xtask", "build", "demo-app"]);
    assert_eq!(code, 0);
    let elf = PathBuf::from(out.lines().last().expect("the ELF's path"));
    assert!(elf.is_file(), "{}", elf.display());

    // Its unit test, on the host.
    let (code, out, _) = cargo(&ws, &["test", "-p", "demo-app"]);
    assert_eq!(code, 0);
    assert!(out.contains("test tests::greets_with_its_arguments ... ok"), "{out}");

    // A plain `cargo build` in the app's directory works; the host binary
    // says how to boot the app.
    let (code, _, _) = cargo(&ws.join("apps/demo-app"), &["build", "--quiet"]);
    assert_eq!(code, 0);
    let host = Command::new(ws.join("target/debug/demo-app")).output().unwrap();
    assert_eq!(host.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&host.stderr).contains("cargo xtask run demo-app"));

    if kvm() {
        let (code, out, err) = xtask::testing::torito(&[], &elf, &["a", "b"]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("Hello from demo-app! 2 argument(s): a b"), "{out}");
    }
}

/// Ctrl-C reaches the whole foreground process group: xtask must outlive
/// it, let the monitor stop the guest and print its timeline, and exit
/// with the monitor's status (130).
#[test]
fn ctrl_c_on_xtask_run_ends_with_the_monitors_timeline_and_status() {
    use std::io::BufRead;
    if !kvm() {
        return;
    }
    xtask::build("spin", xtask::Variant::default()).unwrap_or_else(|e| panic!("{e}"));
    let mut c = Command::new(env!("CARGO_BIN_EXE_xtask"));
    c.args(["run", "spin", "--timeline", "--timeout", "60"]);
    let mut child =
        xtask::group::spawn(c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()))
            .expect("start xtask run");
    let stdout = child.take_stdout().expect("piped");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let first = lines.next().expect("a line").unwrap();
    assert!(first.contains("spin: looping forever"), "{first}");
    // As a terminal's Ctrl-C: SIGINT to every process of the group.
    let pgid = child.id();
    assert!(Command::new("kill").args(["-INT", "--", &format!("-{pgid}")]).status().unwrap().success());
    let out = child.wait_with_output_within(std::time::Duration::from_secs(30)).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("guest stopped by SIGINT") && err.contains("torito timeline"), "{err}");
}

#[test]
fn the_api_docs_build_without_warnings_and_show_every_unit() {
    let index = xtask::api_docs(false).unwrap_or_else(|e| panic!("{e}"));
    assert!(index.is_file(), "{}", index.display());
    let doc = index.parent().unwrap();
    for unit in ["net", "fs", "process", "devices", "memory", "abi"] {
        assert!(doc.join(unit).join("index.html").is_file(), "kernel::{unit} is not documented");
    }
}
