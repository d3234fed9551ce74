//! systemd's notification protocol (sd_notify): READY=1 once the programs are attached,
//! WATCHDOG=1 at half the unit's WatchdogSec, STOPPING=1 on shutdown. A datagram to
//! $NOTIFY_SOCKET (a path, or an abstract name starting with '@'); nothing when it is unset.

use std::{
    io,
    os::{
        linux::net::SocketAddrExt,
        unix::net::{SocketAddr, UnixDatagram},
    },
    time::Duration,
};

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET={0:?} is neither an absolute path nor an abstract name (@...)")]
    BadAddress(String),
    #[error("NOTIFY_SOCKET: {0}")]
    Io(#[from] io::Error),
}

pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

/// The socket address named by a NOTIFY_SOCKET value.
fn address(value: &str) -> Result<SocketAddr, NotifyError> {
    if let Some(name) = value.strip_prefix('@') {
        Ok(SocketAddr::from_abstract_name(name.as_bytes())?)
    } else if value.starts_with('/') {
        Ok(SocketAddr::from_pathname(value)?)
    } else {
        Err(NotifyError::BadAddress(value.to_string()))
    }
}

/// The watchdog interval from WATCHDOG_USEC, if it is meant for this process (WATCHDOG_PID).
fn watchdog_interval(usec: Option<&str>, pid: Option<&str>) -> Option<Duration> {
    if pid.is_some_and(|p| p.parse::<u32>().ok() != Some(std::process::id())) {
        return None;
    }
    let usec: u64 = usec?.parse().ok().filter(|u| *u > 0)?;
    Some(Duration::from_micros(usec))
}

impl Notifier {
    /// From the environment systemd gives a Type=notify service.
    pub fn from_env() -> Result<Notifier, NotifyError> {
        let env = |k: &str| std::env::var(k).ok();
        let target = match env("NOTIFY_SOCKET") {
            Some(v) => Some((UnixDatagram::unbound()?, address(&v)?)),
            None => None,
        };
        let watchdog = watchdog_interval(env("WATCHDOG_USEC").as_deref(), env("WATCHDOG_PID").as_deref());
        Ok(Notifier { target, watchdog })
    }

    /// How often to send WATCHDOG=1: half the watchdog timeout, as systemd recommends.
    pub fn watchdog_period(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    fn send(&self, state: &str) {
        if let Some((sock, addr)) = &self.target
            && let Err(e) = sock.send_to_addr(state.as_bytes(), addr)
        {
            tracing::warn!("sd_notify {state:?} not delivered: {e}");
        }
    }

    pub fn ready(&self) {
        self.send("READY=1\nSTATUS=capturing");
    }

    pub fn watchdog(&self) {
        if self.watchdog.is_some() {
            self.send("WATCHDOG=1");
        }
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert!(address("/run/systemd/notify").unwrap().as_pathname().is_some());
        assert_eq!(address("@sd").unwrap().as_abstract_name(), Some(&b"sd"[..]));
        let e = address("run/notify").unwrap_err().to_string();
        assert!(e.contains("run/notify"), "{e}");
    }

    #[test]
    fn watchdog_only_for_this_process() {
        let me = std::process::id().to_string();
        assert_eq!(watchdog_interval(Some("4000000"), None), Some(Duration::from_secs(4)));
        assert_eq!(watchdog_interval(Some("4000000"), Some(&me)), Some(Duration::from_secs(4)));
        assert_eq!(watchdog_interval(Some("4000000"), Some("1")), None);
        assert_eq!(watchdog_interval(Some("0"), None), None);
        assert_eq!(watchdog_interval(Some("x"), None), None);
        assert_eq!(watchdog_interval(None, None), None);
    }

    /// A real datagram socket receives what the notifier sends.
    #[test]
    fn sends_to_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            target: Some((UnixDatagram::unbound().unwrap(), address(path.to_str().unwrap()).unwrap())),
            watchdog: Some(Duration::from_secs(2)),
        };
        n.ready();
        n.watchdog();
        n.stopping();
        let mut buf = [0u8; 256];
        let got: Vec<String> = (0..3)
            .map(|_| {
                let len = rx.recv(&mut buf).unwrap();
                String::from_utf8_lossy(&buf[..len]).into_owned()
            })
            .collect();
        assert_eq!(got, ["READY=1\nSTATUS=capturing", "WATCHDOG=1", "STOPPING=1"]);
        assert_eq!(n.watchdog_period(), Some(Duration::from_secs(1)));
    }
}
