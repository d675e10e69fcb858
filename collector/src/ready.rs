//! `DATA_DIR/ready.json`: where a started collector listens, written once both listeners are
//! bound, for scripts and tests that start it on port 0. Written atomically (a reader sees the
//! whole file or none) and carrying the writer's pid, so a file left by an earlier run is told
//! apart. The same addresses are printed on stdout for people.

use crate::error::CollectorError;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The file's name in the data directory.
pub const READY_FILE: &str = "ready.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// The collector process.
    pub pid: u32,
    /// The QUIC listener agents report to.
    pub quic: SocketAddr,
    /// The HTTP listener (page, API, metrics).
    pub http: SocketAddr,
}

impl Ready {
    /// Writes `data_dir/ready.json` through a temporary file and a rename; returns its path.
    pub fn write(&self, data_dir: &Path) -> Result<PathBuf, CollectorError> {
        let path = data_dir.join(READY_FILE);
        let tmp = data_dir.join(format!("{READY_FILE}.tmp"));
        let json = serde_json::to_vec(self)
            .map_err(|e| CollectorError::io("encoding ready.json", std::io::Error::other(e)))?;
        std::fs::write(&tmp, json)
            .map_err(|e| CollectorError::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| CollectorError::io(format!("renaming into {}", path.display()), e))?;
        Ok(path)
    }

    /// Reads `data_dir/ready.json`; `None` while it is absent or unreadable.
    pub fn read(data_dir: &Path) -> Option<Ready> {
        let bytes = std::fs::read(data_dir.join(READY_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Ready::read(dir.path()), None);
        let ready = Ready {
            pid: 42,
            quic: "127.0.0.1:4433".parse().unwrap(),
            http: "[::1]:8080".parse().unwrap(),
        };
        ready.write(dir.path()).unwrap();
        assert_eq!(Ready::read(dir.path()), Some(ready));
        assert!(!dir.path().join("ready.json.tmp").exists());
    }
}
