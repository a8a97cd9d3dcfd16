//! `cargo xtask new <name> [--uses net,fs,…]`: a new appliance that builds,
//! boots and has a unit test from its first minute.
//!
//! It writes `apps/<name>/` (a manifest whose kernel features are the
//! `uses` clause, the one-line build script, `src/lib.rs` for the app's
//! logic with a unit test the host runs, `src/main.rs` for the guest's
//! entry point) and adds `apps/<name>` to the workspace's `members`, the
//! step a hand-made app most often misses.

use std::path::{Path, PathBuf};

use crate::Result;

/// The kernel units an app may name (`memory` is always in).
pub const UNITS: [&str; 4] = ["process", "fs", "net", "devices"];

/// What [`create`] made.
#[derive(Debug)]
pub struct Created {
    /// The app's directory.
    pub dir: PathBuf,
    /// The units it uses, as written in its manifest.
    pub uses: Vec<String>,
}

/// Names a new app may not take: the crates every app links, and Rust's
/// own (a library called `core` or `kernel` would shadow them).
const RESERVED: [&str; 8] = ["kernel", "core", "std", "alloc", "test", "proc_macro", "self", "crate"];

/// Check a new app's name: it becomes a directory, a package, a binary and
/// (with `-` as `_`) a library name.
pub fn check_name(name: &str) -> Result<()> {
    let ok_chars = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_lowercase()) || !ok_chars || name.len() > 64
    {
        return Err(format!(
            "'{name}' cannot name an app: use a lowercase letter, then letters, digits, '-' or '_' (e.g. 'kvcache')"
        ));
    }
    if RESERVED.contains(&name.replace('-', "_").as_str()) {
        return Err(format!("'{name}' is taken by a crate every app links: choose another name"));
    }
    Ok(())
}

/// Parse `--uses` (`net,fs`): known units, deduplicated, `memory` dropped
/// (always in).
pub fn parse_uses(list: &[String]) -> Result<Vec<String>> {
    let mut uses = Vec::new();
    for u in list.iter().flat_map(|s| s.split(',')).map(str::trim).filter(|s| !s.is_empty()) {
        if u == "memory" {
            continue;
        }
        if !UNITS.contains(&u) {
            return Err(format!(
                "--uses {u}: no such unit; the units are memory (always in), {}",
                UNITS.join(", ")
            ));
        }
        if !uses.iter().any(|x| x == u) {
            uses.push(u.to_string());
        }
    }
    Ok(uses)
}

/// Create `apps/<name>` in the workspace at `root` and add it to the
/// workspace's members. Nothing is written when a check fails.
pub fn create(root: &Path, name: &str, uses: &[String]) -> Result<Created> {
    check_name(name)?;
    let dir = root.join("apps").join(name);
    if dir.exists() {
        return Err(format!("apps/{name} already exists: choose another name"));
    }
    let manifest_path = root.join("Cargo.toml");
    let manifest = std::fs::read_to_string(&manifest_path)
        .map_err(|e| format!("reading {}: {e}", manifest_path.display()))?;
    if package_names(root).iter().any(|p| p == name) {
        return Err(format!("a package called '{name}' is already in the workspace: choose another name"));
    }
    let manifest = add_member(&manifest, &format!("apps/{name}"))?;
    let files = [
        ("Cargo.toml", cargo_toml(name, uses)),
        ("build.rs", BUILD_RS.to_string()),
        ("src/lib.rs", lib_rs(name)),
        ("src/main.rs", main_rs(name, uses)),
    ];
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir.join("src"))?;
        for (path, text) in &files {
            std::fs::write(dir.join(path), text)?;
        }
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(format!("writing apps/{name}: {e}"));
    }
    if let Err(e) = std::fs::write(&manifest_path, manifest) {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(format!("writing {}: {e}", manifest_path.display()));
    }
    Ok(Created { dir, uses: uses.to_vec() })
}

/// The package names of the crates under `apps/` (their manifests'
/// `name = "…"` line).
fn package_names(root: &Path) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(root.join("apps")) else { return Vec::new() };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("Cargo.toml")).ok())
        .filter_map(|text| {
            text.lines().find_map(|l| {
                l.trim().strip_prefix("name = \"").and_then(|r| r.strip_suffix('"')).map(str::to_owned)
            })
        })
        .collect()
}

/// `manifest` with `member` added to `[workspace] members`, after the last
/// `apps/` entry (or at the end of the list). The list must be written one
/// entry per line, as it is in this repository.
pub fn add_member(manifest: &str, member: &str) -> Result<String> {
    let lines: Vec<&str> = manifest.lines().collect();
    let cannot =
        || format!("cannot find the [workspace] members list in Cargo.toml: add \"{member}\" to it by hand");
    let start = lines.iter().position(|l| l.trim_start().starts_with("members = [")).ok_or_else(cannot)?;
    let end = start + lines[start..].iter().position(|l| l.trim() == "]").ok_or_else(cannot)?;
    let entry = format!("\"{member}\"");
    if lines[start..end].iter().any(|l| l.trim().trim_end_matches(',') == entry) {
        return Ok(manifest.to_string());
    }
    let after =
        (start + 1..end).rev().find(|&i| lines[i].trim_start().starts_with("\"apps/")).unwrap_or(end - 1);
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    out.insert(after + 1, format!("    {entry},"));
    let mut text = out.join("\n");
    if manifest.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

const BUILD_RS: &str =
    "//! Link with the Torito linker script.\nfn main() {\n    torito_linker::link();\n}\n";

fn cargo_toml(name: &str, uses: &[String]) -> String {
    let features: Vec<String> = uses.iter().map(|u| format!("\"{u}\"")).collect();
    let units = if uses.is_empty() {
        "memory (always in)".to_string()
    } else {
        format!("memory, {}", uses.join(", "))
    };
    format!(
        r#"[package]
name = "{name}"
description = "A Torito appliance."
version.workspace = true
edition.workspace = true
license.workspace = true
publish = false

# The app's logic: plain no_std Rust, unit-tested on the host with
# `cargo test -p {name}`.
[lib]
path = "src/lib.rs"

# The guest's entry point, built for x86_64-unknown-none by `cargo xtask`.
[[bin]]
name = "{name}"
path = "src/main.rs"
test = false
bench = false

[dependencies]
# The `uses` clause: the kernel units this appliance links ({units}).
# Features: process, fs, net, devices.
kernel = {{ package = "torito-kernel", path = "../../kernel", features = [{features}] }}

[build-dependencies]
torito-linker = {{ path = "../../linker" }}

[lints]
workspace = true
"#,
        features = features.join(", ")
    )
}

fn lib_rs(name: &str) -> String {
    format!(
        r#"//! {name}: the appliance's logic.
//!
//! Kept apart from the entry point (`main.rs`) so that the host can test
//! it: `cargo test -p {name}` builds this library with std and runs the
//! tests below. Put here what does not need a device, a thread or the
//! network; `kernel::println!` prints to standard output on the host.

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

use alloc::format;
use alloc::string::String;

/// The line the appliance prints for its command line's words.
pub fn greeting<'a>(args: impl IntoIterator<Item = &'a str>) -> String {{
    let words: alloc::vec::Vec<&str> = args.into_iter().collect();
    match words.len() {{
        0 => String::from("Hello from {name}!"),
        n => format!("Hello from {name}! {{n}} argument(s): {{}}", words.join(" ")),
    }}
}}

#[cfg(test)]
mod tests {{
    use super::*;

    #[test]
    fn greets_with_its_arguments() {{
        assert_eq!(greeting([]), "Hello from {name}!");
        assert_eq!(greeting(["a", "b"]), "Hello from {name}! 2 argument(s): a b");
    }}
}}
"#
    )
}

fn main_rs(name: &str, uses: &[String]) -> String {
    let lib = name.replace('-', "_");
    let hint = if uses.iter().any(|u| u == "net") {
        "\n// Networking: `kernel::net::TcpListener::bind(port)` as in apps/echo;\n// give the guest a NIC with `cargo xtask run NAME --net tap=tap0 -- torito.ip=10.0.2.15/24`.\n"
            .replace("NAME", name)
    } else if uses.iter().any(|u| u == "fs") {
        "\n// Files: `kernel::fs` (shaped like std::fs); files in this app's `files/`\n// directory are baked into the ELF at `/`.\n".to_string()
    } else {
        String::new()
    };
    format!(
        r#"//! {name}: a Torito appliance.
//!
//! `cargo xtask run {name} -- words…` builds it with the kernel units its
//! manifest names and boots it on the Torito monitor; `main`'s return value
//! is the monitor's exit status.

#![no_std]
#![no_main]
#![deny(unsafe_code)]

kernel::entry!(main);
{hint}
fn main() -> i32 {{
    kernel::println!("{{}}", {lib}::greeting(kernel::args()));
    0
}}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = "[workspace]\nmembers = [\n    \"abi\",\n    \"apps/hello\",\n    \"apps/echo\",\n    \"vmm\",\n]\ndefault-members = [\n    \"abi\",\n]\n";

    #[test]
    fn a_member_goes_after_the_last_app() {
        let m = add_member(MANIFEST, "apps/demo").unwrap();
        assert!(m.contains("    \"apps/echo\",\n    \"apps/demo\",\n    \"vmm\","), "{m}");
        assert!(!m[m.find("default-members").unwrap()..].contains("demo"));
        // Twice is once.
        assert_eq!(add_member(&m, "apps/demo").unwrap(), m);
    }

    #[test]
    fn a_manifest_without_a_members_list_is_refused() {
        let e = add_member("[package]\nname = \"x\"\n", "apps/demo").unwrap_err();
        assert!(e.contains("add \"apps/demo\" to it by hand"), "{e}");
    }

    #[test]
    fn names_and_units_are_checked() {
        for bad in ["", "Demo", "1app", "my app", "a/b", "kernel", "core", "std"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        for good in ["demo", "kv-cache", "web_2"] {
            check_name(good).unwrap();
        }
        let uses = parse_uses(&["net,fs".into(), "memory".into(), "net".into()]).unwrap();
        assert_eq!(uses, ["net", "fs"]);
        let e = parse_uses(&["netw".into()]).unwrap_err();
        assert!(e.contains("no such unit") && e.contains("process, fs, net, devices"), "{e}");
    }

    #[test]
    fn create_writes_the_app_and_the_member_and_refuses_twice() {
        let root = std::env::temp_dir().join(format!("xtask-new-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("apps/hello")).unwrap();
        std::fs::write(root.join("apps/hello/Cargo.toml"), "[package]\nname = \"hello\"\n").unwrap();
        std::fs::write(root.join("Cargo.toml"), MANIFEST).unwrap();
        let c = create(&root, "kv-cache", &["net".into()]).unwrap();
        let toml = std::fs::read_to_string(c.dir.join("Cargo.toml")).unwrap();
        assert!(toml.contains("features = [\"net\"]") && toml.contains("test = false"), "{toml}");
        let main = std::fs::read_to_string(c.dir.join("src/main.rs")).unwrap();
        assert!(main.contains("kv_cache::greeting") && main.contains("--net tap=tap0"), "{main}");
        assert!(std::fs::read_to_string(root.join("Cargo.toml")).unwrap().contains("\"apps/kv-cache\","));
        let e = create(&root, "kv-cache", &[]).unwrap_err();
        assert!(e.contains("already exists"), "{e}");
        // A package name an app already has (in another directory).
        std::fs::remove_dir_all(root.join("apps/kv-cache")).unwrap();
        std::fs::create_dir_all(root.join("apps/other")).unwrap();
        std::fs::write(root.join("apps/other/Cargo.toml"), "[package]\nname = \"taken\"\n").unwrap();
        let e = create(&root, "taken", &[]).unwrap_err();
        assert!(e.contains("already in the workspace"), "{e}");
        assert!(!root.join("apps/taken").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
