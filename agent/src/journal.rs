//! The command journal: what makes "run each command id at most once" true
//! across reconnects and agent restarts.
//!
//! One small JSON file per command id in `<state_dir>/commands/`, written
//! atomically: "running" before the command starts, "done" with its result
//! when it ends. A re-sent id that is done gets the stored result back; one
//! that is running in this process is not started again; one whose file says
//! running but that no task runs was interrupted by a restart and runs again
//! (every command is idempotent on the host, so finishing it is safe).

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use k3sfleet_proto::v1::CommandResult;
use serde::{Deserialize, Serialize};

/// Done entries kept; older ones are pruned at start-up.
const KEEP_DONE: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot use the command journal in {dir}")]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid command id {id:?}: use 1-128 letters, digits, '-', '_', '.', ':'")]
    BadId { id: String },
}

/// What to do with a command id the coordinator sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// Run it. `interrupted` when an earlier run was cut off by a restart.
    Start { interrupted: bool },
    /// It is running in this process already.
    AlreadyRunning,
    /// It ran before; here is its result.
    Replay(Box<CommandResult>),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
enum Entry {
    Running,
    Done { result: Box<CommandResult> },
}

#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    running: Mutex<HashSet<String>>,
}

impl Journal {
    /// Opens (creating) the journal directory and prunes old entries.
    pub fn open(state_dir: &Path) -> Result<Journal, JournalError> {
        let dir = state_dir.join("commands");
        let io = |source| JournalError::Io {
            dir: state_dir.join("commands"),
            source,
        };
        fs::create_dir_all(&dir).map_err(io)?;
        let journal = Journal {
            dir,
            running: Mutex::new(HashSet::new()),
        };
        journal.prune().map_err(io)?;
        Ok(journal)
    }

    /// Decides what to do with `id` and, for `Start`, records it as running.
    pub fn admit(&self, id: &str) -> Result<Admission, JournalError> {
        let path = self.path(id)?;
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.contains(id) {
            return Ok(Admission::AlreadyRunning);
        }
        let interrupted = match fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Entry>(&bytes) {
                Ok(Entry::Done { mut result }) => {
                    result.replayed = true;
                    return Ok(Admission::Replay(result));
                }
                Ok(Entry::Running) => true,
                // A torn or foreign file: treat the command as never finished.
                Err(_) => true,
            },
            Err(_) => false,
        };
        self.write(&path, &Entry::Running)?;
        running.insert(id.to_string());
        Ok(Admission::Start { interrupted })
    }

    /// Records the result of a command that was admitted.
    pub fn finish(&self, id: &str, result: &CommandResult) -> Result<(), JournalError> {
        let path = self.path(id)?;
        let written = self.write(
            &path,
            &Entry::Done {
                result: Box::new(result.clone()),
            },
        );
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        written
    }

    fn path(&self, id: &str) -> Result<PathBuf, JournalError> {
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
        if id.is_empty() || id.len() > 128 || id.starts_with('.') || !id.chars().all(plain) {
            return Err(JournalError::BadId { id: id.to_string() });
        }
        Ok(self.dir.join(format!("{id}.json")))
    }

    fn write(&self, path: &Path, entry: &Entry) -> Result<(), JournalError> {
        let io = |source| JournalError::Io {
            dir: self.dir.clone(),
            source,
        };
        let tmp = path.with_extension(format!("tmp-{:08x}", rand::random::<u32>()));
        let bytes = serde_json::to_vec(entry).map_err(|err| io(std::io::Error::other(err)))?;
        let result = (|| {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, path)?;
            fs::File::open(&self.dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(io)
    }

    /// Removes leftovers of interrupted writes and all but the newest done entries.
    fn prune(&self) -> std::io::Result<()> {
        let mut entries = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            if name.contains(".tmp-") {
                let _ = fs::remove_file(&path);
            } else if name.ends_with(".json") {
                let modified = entry.metadata()?.modified()?;
                entries.push((modified, path));
            }
        }
        if entries.len() > KEEP_DONE {
            entries.sort();
            for (_, path) in &entries[..entries.len() - KEEP_DONE] {
                let _ = fs::remove_file(path);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k3sfleet_proto::v1::CommandOutcome;

    fn result(id: &str) -> CommandResult {
        CommandResult {
            command_id: id.into(),
            outcome: CommandOutcome::Succeeded as i32,
            message: "done".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_command_runs_once_then_replays() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        assert_eq!(
            journal.admit("c1").unwrap(),
            Admission::Start { interrupted: false }
        );
        assert_eq!(journal.admit("c1").unwrap(), Admission::AlreadyRunning);
        journal.finish("c1", &result("c1")).unwrap();
        match journal.admit("c1").unwrap() {
            Admission::Replay(replayed) => {
                assert!(replayed.replayed);
                assert_eq!(replayed.message, "done");
            }
            other => panic!("expected a replay, got {other:?}"),
        }
    }

    #[test]
    fn results_survive_a_restart_and_interrupted_commands_run_again() {
        let dir = tempfile::tempdir().unwrap();
        {
            let journal = Journal::open(dir.path()).unwrap();
            journal.admit("finished").unwrap();
            journal.finish("finished", &result("finished")).unwrap();
            journal.admit("cut-off").unwrap();
        }
        let journal = Journal::open(dir.path()).unwrap();
        assert!(matches!(
            journal.admit("finished").unwrap(),
            Admission::Replay(_)
        ));
        assert_eq!(
            journal.admit("cut-off").unwrap(),
            Admission::Start { interrupted: true }
        );
    }

    #[test]
    fn ids_that_could_escape_the_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        for bad in ["../x", "a/b", "", ".x"] {
            assert!(
                matches!(journal.admit(bad), Err(JournalError::BadId { .. })),
                "{bad:?}"
            );
        }
    }
}
