//! Errors where the shim reads them: the `--log` file in `--log-format`
//! (`json`: one `{"level","msg","time"}` object a line, as runc writes and
//! containerd's go-runc parses), and stderr.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

/// Where and how to log.
#[derive(Debug, Clone)]
pub struct Log {
    file: Option<PathBuf>,
    json: bool,
}

impl Log {
    /// `--log FILE` and `--log-format FORMAT`.
    pub fn new(file: Option<PathBuf>, format: Option<&str>) -> Self {
        Log { file, json: format == Some("json") }
    }

    /// The log options found in a command line clap could not parse.
    pub fn from_args(argv: &[OsString]) -> Self {
        let value = |flag: &str| {
            argv.iter()
                .position(|a| a == flag)
                .and_then(|i| argv.get(i + 1))
                .map(|v| v.to_string_lossy().into_owned())
        };
        Log::new(value("--log").map(PathBuf::from), value("--log-format").as_deref())
    }

    /// The line for an error.
    pub fn line(&self, msg: &str) -> String {
        let time = humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string();
        if self.json {
            serde_json::json!({ "level": "error", "msg": msg, "time": time }).to_string()
        } else {
            format!("time={time:?} level=error msg={msg:?}")
        }
    }

    /// Log an error: to the log file (when there is one) and to stderr.
    pub fn error(&self, msg: &str) {
        if let Some(path) = &self.file {
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| writeln!(f, "{}", self.line(msg)));
            if let Err(e) = written {
                eprintln!("torito-oci: cannot write the log {}: {e}", path.display());
            }
        }
        eprintln!("torito-oci: {msg}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_are_what_go_runc_parses() {
        let line = Log::new(None, Some("json")).line("container not running");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "container not running");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
        assert!(Log::new(None, None).line("x").contains("level=error msg=\"x\""));
    }

    #[test]
    fn log_options_are_found_when_clap_gave_up() {
        let argv: Vec<OsString> =
            ["torito-oci", "--log", "/x/log.json", "--log-format", "json", "exec", "id"]
                .map(OsString::from)
                .into();
        let log = Log::from_args(&argv);
        assert_eq!(log.file.as_deref(), Some(std::path::Path::new("/x/log.json")));
        assert!(log.json);
    }
}
