//! The embedded default store: a static TOML file listing every node (the peers file),
//! reread when its bytes change.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{ClusterStore, ClusterView, OnChange, StoreError};
use crate::control::config::read_peers;

/// How often the file is checked for changes.
pub const POLL: Duration = Duration::from_secs(1);

/// The peers file at `path`.
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// The store kept in the file at `path`.
    pub fn new(path: PathBuf) -> FileStore {
        FileStore { path }
    }
}

impl ClusterStore for FileStore {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn load(&self) -> Result<ClusterView, StoreError> {
        Ok(ClusterView {
            nodes: read_peers(&self.path)?,
        })
    }

    fn watch(self: Arc<Self>, on_change: OnChange) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            // The file is small: compare its bytes, which catches rewrites within one
            // mtime tick and atomic renames alike.
            let mut last = tokio::fs::read(&self.path).await.ok();
            loop {
                tokio::time::sleep(POLL).await;
                let now = tokio::fs::read(&self.path).await.ok();
                if now == last {
                    continue;
                }
                last = now;
                match self.load() {
                    Ok(view) => on_change(view),
                    Err(e) => log::error!(
                        "peers file {}: {e}; keeping the previous peers",
                        self.path.display()
                    ),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_the_file_and_reports_a_bad_one() {
        let dir = std::env::temp_dir().join(format!("weft-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("peers.toml");
        std::fs::write(
            &path,
            "[[node]]\nname = \"a\"\nunderlay-ip = \"10.250.0.1\"\npod-subnet = \"10.244.1.0/24\"\nvtep-mac = \"02:00:00:00:00:01\"\n",
        )
        .unwrap();
        let store = FileStore::new(path.clone());
        assert_eq!(store.kind(), "file");
        assert_eq!(store.load().unwrap().nodes[0].name, "a");
        std::fs::write(&path, "[[node]]\nname = 3\n").unwrap();
        assert!(store.load().unwrap_err().to_string().contains("peers.toml"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
