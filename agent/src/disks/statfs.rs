//! statfs that cannot hang the agent.
//!
//! statfs on a dead NFS server or a wedged device blocks in the kernel and
//! cannot be cancelled. Each call runs on its own thread and is waited for
//! at most a timeout, counted from when the call began. Callers asking about
//! a path whose call is still in flight share that call (two data paths that
//! both fall back to /var/lib are one statfs, not a "hang"); only a call
//! still stuck past its timeout makes later callers fail at once, so a hung
//! filesystem costs one parked thread, not one per report.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

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
    #[error("an earlier statfs {path} is still hanging, {} after it began; the filesystem is not answering", humantime::format_duration(*stuck_for))]
    StillHanging { path: PathBuf, stuck_for: Duration },
}

/// One call's answer, shared by everyone waiting for it (io::Error is not
/// Clone: its kind and text are kept).
type Answer = Option<Result<FsFigures, (std::io::ErrorKind, String)>>;

/// A call in flight: when it began, and where its answer will appear.
struct InFlight {
    began: Instant,
    answer: watch::Receiver<Answer>,
}

pub struct Statfs {
    call: Arc<dyn StatfsCall>,
    timeout: Duration,
    in_flight: Arc<Mutex<HashMap<PathBuf, InFlight>>>,
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
            in_flight: Arc::default(),
        }
    }

    pub async fn figures(&self, path: &Path) -> Result<FsFigures, StatfsError> {
        let (began, mut answer) = match self.join_or_start(path)? {
            Some(joined) => joined,
            None => {
                return Err(StatfsError::Failed {
                    path: path.to_owned(),
                    source: std::io::Error::other("cannot start a thread for statfs"),
                });
            }
        };
        let deadline = tokio::time::Instant::from_std(began + self.timeout);
        let waited = tokio::time::timeout_at(deadline, answer.wait_for(Option::is_some)).await;
        let answer = match waited {
            Ok(Ok(answer)) => answer.clone(),
            Ok(Err(_)) => Some(Err((
                std::io::ErrorKind::Other,
                "the statfs thread ended without an answer".to_string(),
            ))),
            Err(_) => {
                return Err(StatfsError::TimedOut {
                    path: path.to_owned(),
                    timeout: self.timeout,
                });
            }
        };
        match answer.expect("waited for an answer") {
            Ok(figures) => Ok(figures),
            Err((kind, text)) => Err(StatfsError::Failed {
                path: path.to_owned(),
                source: std::io::Error::new(kind, text),
            }),
        }
    }

    /// Joins the call in flight for `path`, or starts one; refuses when the
    /// one in flight is stuck past its timeout. `Ok(None)`: no thread.
    fn join_or_start(
        &self,
        path: &Path,
    ) -> Result<Option<(Instant, watch::Receiver<Answer>)>, StatfsError> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(call) = in_flight.get(path) {
            let stuck_for = call.began.elapsed();
            if stuck_for >= self.timeout {
                return Err(StatfsError::StillHanging {
                    path: path.to_owned(),
                    stuck_for,
                });
            }
            return Ok(Some((call.began, call.answer.clone())));
        }
        let (sender, answer) = watch::channel(None);
        let began = Instant::now();
        let (call, owned, registry) = (self.call.clone(), path.to_owned(), self.in_flight.clone());
        let spawned = std::thread::Builder::new()
            .name("statfs".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let result = call
                    .statfs(&owned)
                    .map_err(|err| (err.kind(), err.to_string()));
                // Whenever it returns, the path may be asked again.
                registry
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&owned);
                let _ = sender.send(Some(result));
            });
        if spawned.is_err() {
            return Ok(None);
        }
        in_flight.insert(
            path.to_owned(),
            InFlight {
                began,
                answer: answer.clone(),
            },
        );
        Ok(Some((began, answer)))
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
        // The next report does not start a second stuck call, and says how
        // long the stuck one has been stuck.
        let err = statfs.figures(path).await.unwrap_err();
        assert!(matches!(err, StatfsError::StillHanging { .. }), "{err}");
        assert!(err.to_string().contains("after it began"), "{err}");
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

    /// Answers after a while, like a busy but working filesystem.
    struct Slow {
        calls: AtomicUsize,
    }

    impl StatfsCall for Slow {
        fn statfs(&self, _: &Path) -> std::io::Result<FsFigures> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(300));
            Ok(FsFigures {
                size_bytes: 7,
                ..Default::default()
            })
        }
    }

    /// Two data paths that do not exist yet both fall back to /var/lib and
    /// ask at once: the second waits for the first call's answer rather than
    /// calling the filesystem hung (what `k3sfleet-agent check` printed on
    /// every fresh Debian host).
    #[tokio::test]
    async fn callers_asking_at_once_share_the_call_in_flight() {
        let call = Arc::new(Slow {
            calls: AtomicUsize::new(0),
        });
        let statfs = Statfs::new(call.clone(), Duration::from_secs(5));
        let path = Path::new("/var/lib");
        let (first, second) = tokio::join!(statfs.figures(path), statfs.figures(path));
        assert_eq!(first.unwrap().size_bytes, 7);
        assert_eq!(second.unwrap().size_bytes, 7);
        assert_eq!(call.calls.load(Ordering::SeqCst), 1, "one statfs, shared");
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
