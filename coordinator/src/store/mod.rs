//! The coordinator's state: an SQLite database in its data directory.
//!
//! SQLite because the state is small and relational (nodes, audit entries,
//! rollout steps, tokens), because its atomic commit survives power loss and
//! `kill -9` at any instant (WAL journal, synchronous=FULL), and because
//! operators can inspect it with the `sqlite3` shell when something is odd.
//! All access goes through one connection on the blocking thread pool.

pub(crate) mod access;
mod audit;
mod hellos;
mod lock;
mod nodes;
mod rollouts;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

pub use access::{CertificateRecord, RevocationRecord, TokenRecord};
pub use audit::{AuditEntry, AuditEvent};
pub use hellos::HelloLog;
pub use lock::{DataDirLock, LockError};
pub use nodes::NodeRecord;
pub use rollouts::{NodeProgress, RolloutRecord};

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "coordinator.db";

/// Schema migrations, applied in order; `PRAGMA user_version` counts how many
/// have run. Never edit a released one: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: node registry and audit log.
    "CREATE TABLE nodes (
        name            TEXT PRIMARY KEY,
        role            INTEGER NOT NULL,
        first_seen_ms   INTEGER NOT NULL,
        last_seen_ms    INTEGER NOT NULL,
        last_hello      BLOB,
        last_hello_ms   INTEGER,
        last_report     BLOB,
        last_report_ms  INTEGER
    ) STRICT;
    CREATE TABLE audit (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms   INTEGER NOT NULL,
        actor   TEXT NOT NULL,
        action  TEXT NOT NULL,
        node    TEXT,
        detail  TEXT NOT NULL
    ) STRICT;
    CREATE INDEX audit_by_node ON audit (node, id);",
    // 2: enrollment: bootstrap tokens, issued certificates, revocations.
    "CREATE TABLE tokens (
        id                TEXT PRIMARY KEY,
        secret_sha256     BLOB NOT NULL,
        role              TEXT NOT NULL,
        name_pattern      TEXT NOT NULL,
        uses_total        INTEGER NOT NULL,
        uses_left         INTEGER NOT NULL,
        expires_at_ms     INTEGER NOT NULL,
        cert_ttl_s        INTEGER NOT NULL,
        created_at_ms     INTEGER NOT NULL,
        created_by        TEXT NOT NULL,
        revoked_at_ms     INTEGER,
        description       TEXT NOT NULL
    ) STRICT;
    CREATE TABLE enrollments (
        token_id          TEXT NOT NULL REFERENCES tokens (id),
        name              TEXT NOT NULL,
        enrolled_at_ms    INTEGER NOT NULL,
        PRIMARY KEY (token_id, name)
    ) STRICT;
    CREATE TABLE certificates (
        serial            TEXT PRIMARY KEY,
        name              TEXT NOT NULL,
        role              TEXT NOT NULL,
        not_before_ms     INTEGER NOT NULL,
        not_after_ms      INTEGER NOT NULL,
        issued_at_ms      INTEGER NOT NULL,
        issued_via        TEXT NOT NULL
    ) STRICT;
    CREATE INDEX certificates_by_name ON certificates (name, role);
    CREATE TABLE revocations (
        role              TEXT NOT NULL,
        name              TEXT NOT NULL,
        revoked_at_ms     INTEGER NOT NULL,
        revoked_by        TEXT NOT NULL,
        PRIMARY KEY (role, name)
    ) STRICT;",
    // 3: rolling upgrades.
    "CREATE TABLE rollouts (
        id                INTEGER PRIMARY KEY AUTOINCREMENT,
        target            TEXT NOT NULL,
        phase             TEXT NOT NULL,
        pause_reason      TEXT NOT NULL,
        options           BLOB NOT NULL,
        created_at_ms     INTEGER NOT NULL,
        updated_at_ms     INTEGER NOT NULL,
        finished_at_ms    INTEGER,
        created_by        TEXT NOT NULL,
        waves_started     INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE rollout_nodes (
        rollout_id        INTEGER NOT NULL REFERENCES rollouts (id),
        node              TEXT NOT NULL,
        server            INTEGER NOT NULL,
        position          INTEGER NOT NULL,
        wave              INTEGER NOT NULL,
        step              TEXT NOT NULL,
        attempt           INTEGER NOT NULL,
        step_started_ms   INTEGER,
        started_ms        INTEGER,
        finished_ms       INTEGER,
        was_unschedulable INTEGER,
        cordoned_by_us    INTEGER NOT NULL,
        from_version      TEXT NOT NULL,
        failure           TEXT NOT NULL,
        snapshot          TEXT NOT NULL,
        waits             TEXT NOT NULL,
        PRIMARY KEY (rollout_id, node)
    ) STRICT;",
    // 4: the rebuilt rollout core: a generation guarding every write, the
    // alert hold, and per node whether its step's operation was sent, its
    // passing failures so far (so a restart does not start them over), the
    // binary to roll back to, and the settle hold.
    "ALTER TABLE rollouts ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE rollouts ADD COLUMN alert_hold_since_ms INTEGER;
    ALTER TABLE rollout_nodes ADD COLUMN dispatched INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE rollout_nodes ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE rollout_nodes ADD COLUMN retry_at_ms INTEGER;
    ALTER TABLE rollout_nodes ADD COLUMN from_sha256 TEXT NOT NULL DEFAULT '';
    ALTER TABLE rollout_nodes ADD COLUMN healthy_since_ms INTEGER;
    ALTER TABLE rollout_nodes ADD COLUMN unseen_since_ms INTEGER;",
    // 5: Longhorn's rebuilds holding the rollout.
    "ALTER TABLE rollouts ADD COLUMN longhorn_hold_since_ms INTEGER;",
    // 6: one row rewritten every few seconds: proof the database takes writes.
    "CREATE TABLE liveness (
        id      INTEGER PRIMARY KEY CHECK (id = 1),
        at_ms   INTEGER NOT NULL
    ) STRICT;",
    // 7: the K3s role an agent token enrolls ('' allows either).
    "ALTER TABLE tokens ADD COLUMN k3s_role TEXT NOT NULL DEFAULT '';",
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "the database {path} has schema version {found}, newer than this coordinator knows ({known}); \
         run the newer coordinator or restore a backup"
    )]
    TooNew {
        path: PathBuf,
        found: usize,
        known: usize,
    },
    #[error("database query failed")]
    Query(#[from] rusqlite::Error),
    #[error("a stored {what} cannot be decoded")]
    Decode {
        what: &'static str,
        #[source]
        source: prost::DecodeError,
    },
    #[error("the database worker thread failed")]
    Worker(#[from] tokio::task::JoinError),
    #[error("saving a batch of hellos failed")]
    Batch(#[source] Arc<StoreError>),
    #[error("the writer of hellos has stopped")]
    WriterStopped,
    #[error(transparent)]
    Locked(#[from] LockError),
    #[error(
        "rollout {id} was changed by someone else (it is at generation {found}, this \
         coordinator expected {expected}): is another coordinator using this database?"
    )]
    Stale { id: i64, expected: u64, found: u64 },
}

/// A handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

impl Store {
    /// Takes the data directory's lock, then opens the database: what the
    /// coordinator does at start (see [`DataDirLock`]).
    pub fn open_exclusive(data_dir: &Path) -> Result<(DataDirLock, Store), StoreError> {
        create_private_dir(data_dir)?;
        let lock = DataDirLock::acquire(data_dir)?;
        Ok((lock, Store::open(data_dir)?))
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Store {
    /// Opens (creating if needed) the database in `data_dir` and brings its
    /// schema up to date.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        create_private_dir(data_dir)?;
        let path = data_dir.join(DATABASE_FILE);
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let mut conn = Connection::open(&path).map_err(open_err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 5000;",
        )
        .map_err(open_err)?;
        migrate(&mut conn, &path)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `work` against the connection on the blocking pool.
    pub async fn call<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&mut conn)
        })
        .await?
    }

    /// Writes and commits a timestamp: proof that the database takes writes
    /// (readiness probes it).
    pub async fn record_liveness(&self) -> Result<(), StoreError> {
        let now = crate::clock::unix_ms();
        self.call(move |conn| {
            conn.execute(
                "INSERT INTO liveness (id, at_ms) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET at_ms = excluded.at_ms",
                [now],
            )?;
            Ok(())
        })
        .await
    }

    /// Runs `work` against the connection on the current thread. For start-up
    /// and shutdown paths outside the async runtime.
    pub fn call_blocking<T>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self
            .conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        work(&mut conn)
    }
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let applied: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let applied = usize::try_from(applied).unwrap_or(usize::MAX);
    if applied > MIGRATIONS.len() {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found: applied,
            known: MIGRATIONS.len(),
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (index + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopening_keeps_the_schema() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let store = Store::open(dir.path()).unwrap();
        let version: i64 = store
            .call_blocking(|conn| Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(version as usize, MIGRATIONS.len());
    }

    #[test]
    fn a_database_from_a_newer_coordinator_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let conn = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
    }
}
