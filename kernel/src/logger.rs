//! Logging with levels: the `log` crate's macros, printed on the console.
//!
//! ```ignore
//! kernel::log::info!("listening on port {port}");
//! kernel::log::warn!("{peer}: request too long");
//! kernel::log::debug!("request {n}: {path}");
//! ```
//!
//! A line reads `[INFO  httpd] listening on port 80` (the level, the
//! module path the message came from). `torito.log=LEVEL` on the command
//! line sets the most detailed level shown: `off`, `error`, `warn`,
//! `info` (the default), `debug` or `trace`. Messages above it cost one
//! comparison.

use log::{LevelFilter, Log, Metadata, Record};

struct Console;

static CONSOLE: Console = Console;

impl Log for Console {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            // One console write per line (see `console`).
            crate::println!("[{:<5} {}] {}", record.level(), record.target(), record.args());
        }
    }

    fn flush(&self) {}
}

/// The level `torito.log=` names in `cmdline` (`Info` when absent), or the
/// word that is not a level.
pub(crate) fn level(cmdline: &str) -> Result<LevelFilter, &str> {
    match cmdline.split_ascii_whitespace().find_map(|w| w.strip_prefix("torito.log=")) {
        None => Ok(LevelFilter::Info),
        Some(v) => v.parse().map_err(|_| v),
    }
}

static READY: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Set the logger up if it is not yet (the first message does): nothing
/// of it runs at boot, so an app that never logs touches none of its
/// pages. Two cores racing both set the same level; the logger once.
pub(crate) fn ensure() {
    use core::sync::atomic::Ordering;
    if !READY.load(Ordering::Acquire) {
        init();
        READY.store(true, Ordering::Release);
    }
}

/// Print `log` records on the console from now on, up to the level the
/// command line asks for.
fn init() {
    let max = level(crate::cmdline()).unwrap_or_else(|bad| {
        crate::println!(
            "[torito] torito.log={bad}: not a level (off, error, warn, info, debug, trace); using info"
        );
        LevelFilter::Info
    });
    // Only the first call sets the logger; there is no other.
    let _ = log::set_logger(&CONSOLE);
    log::set_max_level(max);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_sets_the_level() {
        assert_eq!(level("a b"), Ok(LevelFilter::Info));
        assert_eq!(level("torito.log=debug x"), Ok(LevelFilter::Debug));
        assert_eq!(level("torito.log=OFF"), Ok(LevelFilter::Off));
        assert_eq!(level("torito.log=loud"), Err("loud"));
    }
}
