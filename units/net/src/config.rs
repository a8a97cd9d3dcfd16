//! The interface's configuration from the kernel command line:
//! `torito.ip=10.0.2.15/24` and optionally `torito.gw=10.0.2.1`.

/// An IPv4 configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Address.
    pub ip: [u8; 4],
    /// Prefix length.
    pub prefix: u8,
    /// Default gateway.
    pub gateway: Option<[u8; 4]>,
}

fn ipv4(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split('.');
    for b in &mut out {
        *b = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

impl NetConfig {
    /// Read `cmdline`; `Ok(None)` when it names no address.
    pub fn from_cmdline(cmdline: &str) -> Result<Option<Self>, &str> {
        let mut cfg: Option<NetConfig> = None;
        let mut gateway = None;
        for w in cmdline.split_ascii_whitespace() {
            if let Some(v) = w.strip_prefix("torito.ip=") {
                let (ip, prefix) = v.split_once('/').unwrap_or((v, "24"));
                let ip = ipv4(ip).ok_or(w)?;
                let prefix: u8 = prefix.parse().ok().filter(|&p| p <= 32).ok_or(w)?;
                cfg = Some(NetConfig { ip, prefix, gateway: None });
            } else if let Some(v) = w.strip_prefix("torito.gw=") {
                gateway = Some(ipv4(v).ok_or(w)?);
            }
        }
        Ok(cfg.map(|c| NetConfig { gateway, ..c }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fuzz corpus of the kernel's command-line parsers
    /// (`fuzz/corpus/kernel_cmdline`, findings included) parses without a
    /// panic.
    #[test]
    fn the_fuzz_corpus_parses() {
        let dir =
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/kernel_cmdline");
        for e in std::fs::read_dir(dir).unwrap() {
            let line = String::from_utf8_lossy(&std::fs::read(e.unwrap().path()).unwrap()).into_owned();
            let _ = NetConfig::from_cmdline(&line);
        }
    }

    #[test]
    fn addresses_from_the_command_line() {
        assert_eq!(
            NetConfig::from_cmdline("a torito.ip=10.0.2.15/24 torito.gw=10.0.2.1"),
            Ok(Some(NetConfig { ip: [10, 0, 2, 15], prefix: 24, gateway: Some([10, 0, 2, 1]) }))
        );
        assert_eq!(NetConfig::from_cmdline("torito.ip=192.168.1.2").unwrap().unwrap().prefix, 24);
        assert_eq!(NetConfig::from_cmdline("nothing here"), Ok(None));
        assert_eq!(NetConfig::from_cmdline("torito.ip=10.0.2/24"), Err("torito.ip=10.0.2/24"));
        assert_eq!(NetConfig::from_cmdline("torito.ip=10.0.2.15/33"), Err("torito.ip=10.0.2.15/33"));
        assert!(NetConfig::from_cmdline("torito.ip=1.2.3.4 torito.gw=x").is_err());
    }
}
