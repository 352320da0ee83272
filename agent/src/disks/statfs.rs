//! statfs that cannot hang the agent.
//!
//! statfs on a dead NFS server or a wedged device blocks in the kernel and
//! cannot be cancelled. Each call runs on its own thread and is waited for
//! at most a timeout; a call still stuck is remembered, and no second call
//! for the same path is started until it returns, so a hung filesystem costs
//! one parked thread, not one per report.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What statfs says about a filesystem.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsFigures {
    pub size_bytes: u64,
    pub available_bytes: u64,
    pub inodes_total: u64,
    pub inodes_free: u64,
    pub read_only: bool,
}

/// The system call, behind a trait so the hang can be tested.
pub trait StatfsCall: Send + Sync + 'static {
    fn statfs(&self, path: &Path) -> std::io::Result<FsFigures>;
}

/// The real statvfs(3).
#[derive(Debug, Default, Clone, Copy)]
pub struct RealStatfs;

impl StatfsCall for RealStatfs {
    fn statfs(&self, path: &Path) -> std::io::Result<FsFigures> {
        use nix::sys::statvfs::{FsFlags, statvfs};
        let stat = statvfs(path).map_err(std::io::Error::from)?;
        let block = stat.fragment_size();
        Ok(FsFigures {
            size_bytes: stat.blocks().saturating_mul(block),
            available_bytes: stat.blocks_available().saturating_mul(block),
            inodes_total: stat.files(),
            inodes_free: stat.files_free(),
            read_only: stat.flags().contains(FsFlags::ST_RDONLY),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StatfsError {
    #[error("statfs {path} failed")]
    Failed {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("statfs {path} did not return within {}; the filesystem may be hanging", humantime::format_duration(*timeout))]
    TimedOut { path: PathBuf, timeout: Duration },
    #[error("an earlier statfs {path} is still hanging; the filesystem is not answering")]
    StillHanging { path: PathBuf },
}

pub struct Statfs {
    call: Arc<dyn StatfsCall>,
    timeout: Duration,
    hanging: Arc<Mutex<HashSet<PathBuf>>>,
}

impl std::fmt::Debug for Statfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Statfs")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Statfs {
    pub fn new(call: Arc<dyn StatfsCall>, timeout: Duration) -> Self {
        Statfs {
            call,
            timeout,
            hanging: Arc::default(),
        }
    }

    pub async fn figures(&self, path: &Path) -> Result<FsFigures, StatfsError> {
        {
            let mut hanging = self.hanging.lock().unwrap_or_else(|p| p.into_inner());
            if hanging.contains(path) {
                return Err(StatfsError::StillHanging {
                    path: path.to_owned(),
                });
            }
            hanging.insert(path.to_owned());
        }
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let (call, owned, hanging) = (self.call.clone(), path.to_owned(), self.hanging.clone());
        let spawned = std::thread::Builder::new()
            .name("statfs".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let result = call.statfs(&owned);
                // Whenever it returns, the path is usable again.
                hanging
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&owned);
                let _ = sender.send(result);
            });
        if let Err(source) = spawned {
            self.hanging
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(path);
            return Err(StatfsError::Failed {
                path: path.to_owned(),
                source,
            });
        }
        match tokio::time::timeout(self.timeout, receiver).await {
            Ok(Ok(Ok(figures))) => Ok(figures),
            Ok(Ok(Err(source))) => Err(StatfsError::Failed {
                path: path.to_owned(),
                source,
            }),
            Ok(Err(_)) => Err(StatfsError::Failed {
                path: path.to_owned(),
                source: std::io::Error::other("the statfs thread ended without an answer"),
            }),
            Err(_) => Err(StatfsError::TimedOut {
                path: path.to_owned(),
                timeout: self.timeout,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Blocks every call until released, like a dead NFS server.
    struct Hanging {
        calls: AtomicUsize,
        release: Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl StatfsCall for Hanging {
        fn statfs(&self, _: &Path) -> std::io::Result<FsFigures> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let _ = self.release.lock().unwrap().recv();
            Ok(FsFigures {
                size_bytes: 1,
                ..Default::default()
            })
        }
    }

    #[tokio::test]
    async fn a_hanging_filesystem_is_an_error_not_a_hang() {
        let (release, receiver) = std::sync::mpsc::channel();
        let call = Arc::new(Hanging {
            calls: AtomicUsize::new(0),
            release: Mutex::new(receiver),
        });
        let statfs = Statfs::new(call.clone(), Duration::from_millis(200));
        let path = Path::new("/mnt/nfs");
        let err = statfs.figures(path).await.unwrap_err();
        assert!(matches!(err, StatfsError::TimedOut { .. }), "{err}");
        // The next report does not start a second stuck call.
        let err = statfs.figures(path).await.unwrap_err();
        assert!(matches!(err, StatfsError::StillHanging { .. }), "{err}");
        assert_eq!(call.calls.load(Ordering::SeqCst), 1);
        // Once the filesystem answers, the path is measured again.
        release.send(()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let _ = release.send(());
            match statfs.figures(path).await {
                Ok(figures) => {
                    assert_eq!(figures.size_bytes, 1);
                    break;
                }
                Err(_) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(err) => panic!("never recovered: {err}"),
            }
        }
    }

    #[tokio::test]
    async fn measures_a_real_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let statfs = Statfs::new(Arc::new(RealStatfs), Duration::from_secs(10));
        let figures = statfs.figures(dir.path()).await.unwrap();
        assert!(figures.size_bytes >= figures.available_bytes);
        assert!(figures.size_bytes > 0);
        let err = statfs
            .figures(&dir.path().join("missing"))
            .await
            .unwrap_err();
        assert!(matches!(err, StatfsError::Failed { .. }));
    }
}
