//! Tokens, issued certificates and revocations.
//!
//! The checks that decide an enrollment live in `access::enroll`; this module
//! only reads and writes rows, inside the caller's transaction where the
//! decision and its effects must commit together.

use k3sfleet_pki::K3sRole;
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use super::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub secret_sha256: Vec<u8>,
    pub role: String,
    pub name_pattern: String,
    pub uses_total: u32,
    pub uses_left: u32,
    pub expires_at_ms: i64,
    pub cert_ttl_s: u32,
    pub created_at_ms: i64,
    pub created_by: String,
    pub revoked_at_ms: Option<i64>,
    pub description: String,
    pub enrolled_names: Vec<String>,
    /// For agent tokens: the only K3s role it enrolls; `None` allows either.
    pub k3s_role: Option<K3sRole>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRecord {
    pub serial: String,
    pub name: String,
    pub role: String,
    pub not_before_ms: i64,
    pub not_after_ms: i64,
    pub issued_at_ms: i64,
    pub issued_via: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationRecord {
    pub role: String,
    pub name: String,
    pub revoked_at_ms: i64,
}

const TOKEN_COLUMNS: &str =
    "id, secret_sha256, role, name_pattern, uses_total, uses_left, expires_at_ms,
    cert_ttl_s, created_at_ms, created_by, revoked_at_ms, description, k3s_role";

fn token_from_row(row: &Row<'_>) -> rusqlite::Result<TokenRecord> {
    Ok(TokenRecord {
        id: row.get(0)?,
        secret_sha256: row.get(1)?,
        role: row.get(2)?,
        name_pattern: row.get(3)?,
        uses_total: row.get(4)?,
        uses_left: row.get(5)?,
        expires_at_ms: row.get(6)?,
        cert_ttl_s: row.get(7)?,
        created_at_ms: row.get(8)?,
        created_by: row.get(9)?,
        revoked_at_ms: row.get(10)?,
        description: row.get(11)?,
        enrolled_names: Vec::new(),
        k3s_role: match row.get::<_, String>(12)?.as_str() {
            "" => None,
            text => Some(text.parse().map_err(|err| {
                rusqlite::Error::FromSqlConversionFailure(12, Type::Text, Box::new(err))
            })?),
        },
    })
}

fn certificate_from_row(row: &Row<'_>) -> rusqlite::Result<CertificateRecord> {
    Ok(CertificateRecord {
        serial: row.get(0)?,
        name: row.get(1)?,
        role: row.get(2)?,
        not_before_ms: row.get(3)?,
        not_after_ms: row.get(4)?,
        issued_at_ms: row.get(5)?,
        issued_via: row.get(6)?,
    })
}

pub fn insert_token(conn: &Connection, token: &TokenRecord) -> Result<(), StoreError> {
    conn.execute(
        &format!("INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"),
        params![
            token.id,
            token.secret_sha256,
            token.role,
            token.name_pattern,
            token.uses_total,
            token.uses_left,
            token.expires_at_ms,
            token.cert_ttl_s,
            token.created_at_ms,
            token.created_by,
            token.revoked_at_ms,
            token.description,
            token.k3s_role.map_or("", K3sRole::as_str)
        ],
    )?;
    Ok(())
}

pub fn token(conn: &Connection, id: &str) -> Result<Option<TokenRecord>, StoreError> {
    let token = conn
        .query_row(
            &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?1"),
            [id],
            token_from_row,
        )
        .optional()?;
    token
        .map(|mut token| {
            token.enrolled_names = enrolled_names(conn, &token.id)?;
            Ok(token)
        })
        .transpose()
}

fn enrolled_names(conn: &Connection, token_id: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT name FROM enrollments WHERE token_id = ?1 ORDER BY enrolled_at_ms",
    )?;
    let names = stmt.query_map([token_id], |row| row.get(0))?;
    Ok(names.collect::<Result<_, _>>()?)
}

/// Records that `name` enrolled with the token and uses one of its uses.
/// Returns false (and changes nothing) if `name` had enrolled with it before.
pub fn record_enrollment(
    tx: &Transaction<'_>,
    token_id: &str,
    name: &str,
    at_ms: i64,
) -> Result<bool, StoreError> {
    let inserted = tx.execute(
        "INSERT OR IGNORE INTO enrollments (token_id, name, enrolled_at_ms) VALUES (?1, ?2, ?3)",
        params![token_id, name, at_ms],
    )?;
    if inserted == 1 {
        tx.execute(
            "UPDATE tokens SET uses_left = uses_left - 1 WHERE id = ?1",
            [token_id],
        )?;
    }
    Ok(inserted == 1)
}

/// The newest certificate of `name` in `role` still valid at `now_ms` and
/// issued after `revoked_at_ms` (the identity's revocation, if any).
pub fn live_certificate(
    conn: &Connection,
    name: &str,
    role: &str,
    revoked_at_ms: Option<i64>,
    now_ms: i64,
) -> Result<Option<CertificateRecord>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT serial, name, role, not_before_ms, not_after_ms, issued_at_ms, issued_via
         FROM certificates WHERE name = ?1 AND role = ?2 AND not_after_ms > ?3 AND issued_at_ms > ?4
         ORDER BY issued_at_ms DESC LIMIT 1",
    )?;
    let mut rows = stmt.query_map(
        params![name, role, now_ms, revoked_at_ms.unwrap_or(i64::MIN)],
        certificate_from_row,
    )?;
    Ok(rows.next().transpose()?)
}

pub fn insert_certificate(conn: &Connection, cert: &CertificateRecord) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO certificates (serial, name, role, not_before_ms, not_after_ms, issued_at_ms, issued_via)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            cert.serial,
            cert.name,
            cert.role,
            cert.not_before_ms,
            cert.not_after_ms,
            cert.issued_at_ms,
            cert.issued_via
        ],
    )?;
    Ok(())
}

impl Store {
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.call(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at_ms"
            ))?;
            let mut tokens: Vec<TokenRecord> = stmt
                .query_map([], token_from_row)?
                .collect::<Result<_, _>>()?;
            for token in &mut tokens {
                token.enrolled_names = enrolled_names(conn, &token.id)?;
            }
            Ok(tokens)
        })
        .await
    }

    /// Marks a token revoked; returns it, or None if there is no such token.
    pub async fn revoke_token(
        &self,
        id: String,
        at_ms: i64,
    ) -> Result<Option<TokenRecord>, StoreError> {
        self.call(move |conn| {
            conn.execute(
                "UPDATE tokens SET revoked_at_ms = COALESCE(revoked_at_ms, ?2) WHERE id = ?1",
                params![id, at_ms],
            )?;
            token(conn, &id)
        })
        .await
    }

    /// Records a revocation and returns the serials it denies.
    pub async fn revoke_identity(
        &self,
        role: String,
        name: String,
        at_ms: i64,
        by: String,
    ) -> Result<Vec<String>, StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction()?;
            tx.execute(
                "INSERT INTO revocations (role, name, revoked_at_ms, revoked_by) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (role, name) DO UPDATE SET revoked_at_ms = excluded.revoked_at_ms,
                                                        revoked_by = excluded.revoked_by",
                params![role, name, at_ms, by],
            )?;
            let serials = {
                let mut stmt = tx.prepare(
                    "SELECT serial FROM certificates WHERE role = ?1 AND name = ?2 AND issued_at_ms <= ?3
                     ORDER BY issued_at_ms",
                )?;
                let rows = stmt.query_map(params![role, name, at_ms], |row| row.get(0))?;
                rows.collect::<Result<Vec<String>, _>>()?
            };
            tx.commit()?;
            Ok(serials)
        })
        .await
    }

    pub async fn revocations(&self) -> Result<Vec<RevocationRecord>, StoreError> {
        self.call(|conn| {
            let mut stmt = conn.prepare("SELECT role, name, revoked_at_ms FROM revocations")?;
            let rows = stmt.query_map([], |row| {
                Ok(RevocationRecord {
                    role: row.get(0)?,
                    name: row.get(1)?,
                    revoked_at_ms: row.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    pub async fn certificates(
        &self,
        name: Option<String>,
    ) -> Result<Vec<CertificateRecord>, StoreError> {
        self.call(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT serial, name, role, not_before_ms, not_after_ms, issued_at_ms, issued_via
                 FROM certificates WHERE ?1 IS NULL OR name = ?1 ORDER BY name, issued_at_ms",
            )?;
            let rows = stmt.query_map([name], certificate_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }
}
