//! Signal names and numbers as `kill` takes them (`SIGTERM`, `TERM`, `15`).

use rustix::process::Signal;

use crate::Error;

/// The signals by name, without `SIG`.
const NAMES: &[(&str, Signal)] = &[
    ("HUP", Signal::HUP),
    ("INT", Signal::INT),
    ("QUIT", Signal::QUIT),
    ("ABRT", Signal::ABORT),
    ("KILL", Signal::KILL),
    ("USR1", Signal::USR1),
    ("USR2", Signal::USR2),
    ("PIPE", Signal::PIPE),
    ("ALRM", Signal::ALARM),
    ("TERM", Signal::TERM),
    ("CONT", Signal::CONT),
    ("STOP", Signal::STOP),
    ("TSTP", Signal::TSTP),
    ("WINCH", Signal::WINCH),
];

/// `SIGTERM`, `TERM`, `term` or `15`.
pub fn parse(s: &str) -> Result<Signal, Error> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::from_named_raw(n).ok_or_else(|| Error::BadSignal(s.into()));
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    NAMES.iter().find(|(n, _)| *n == name).map(|(_, sig)| *sig).ok_or_else(|| Error::BadSignal(s.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_numbers_and_nonsense() {
        assert_eq!(parse("SIGTERM").unwrap(), Signal::TERM);
        assert_eq!(parse("term").unwrap(), Signal::TERM);
        assert_eq!(parse("9").unwrap(), Signal::KILL);
        assert_eq!(parse("SIGKILL").unwrap(), Signal::KILL);
        assert!(matches!(parse("SIGNOPE"), Err(Error::BadSignal(_))));
        assert!(matches!(parse("0"), Err(Error::BadSignal(_))));
        assert!(matches!(parse("-3"), Err(Error::BadSignal(_))));
    }
}
