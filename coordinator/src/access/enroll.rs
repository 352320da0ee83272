//! Issuing certificates: enrollment with a token, renewal with a certificate.

use std::sync::Arc;
use std::time::Duration;

use k3sfleet_pki::{
    CERT_BACKDATE, ClientCertRequest, FleetCa, IssueError, K3sRole, PeerIdentity, Role,
};
use k3sfleet_proto::v1::{
    CertificateInfo, CreateTokenRequest, EnrollRequest, EnrollResponse, NodeRole, RenewResponse,
    TokenInfo,
};

use super::token::{Token, name_matches};
use super::{Revocations, role_from_proto, role_to_proto};
use crate::store::access as rows;
use crate::store::{CertificateRecord, Store, StoreError, TokenRecord};

/// A token may be used for at most this long.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
const MAX_TOKEN_USES: u32 = 10_000;
const MAX_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Renewed certificates live at least this long, so a renewal cannot produce
/// a certificate that needs renewing again at once.
const MIN_CERT_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Denied(String),
    #[error("no token with id {0:?}")]
    UnknownToken(String),
    #[error(
        "enrollment and renewal are off: the coordinator has no CA key (set tls.ca_key in its config)"
    )]
    NoCaKey,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("issuing the certificate failed")]
    Issue(#[source] IssueError),
}

/// Default certificate lifetimes per role.
#[derive(Debug, Clone)]
pub struct CertPolicy {
    pub agent: Duration,
    pub admin: Duration,
    pub reader: Duration,
}

impl CertPolicy {
    fn lifetime(&self, role: Role) -> Duration {
        match role {
            Role::Agent => self.agent,
            Role::Admin => self.admin,
            Role::Reader => self.reader,
        }
    }
}

#[derive(Debug)]
pub struct Access {
    store: Store,
    ca: Option<Arc<FleetCa>>,
    revocations: Arc<Revocations>,
    policy: CertPolicy,
}

impl Access {
    /// Loads the revocations and issued certificates from the store.
    pub async fn load(
        store: Store,
        ca: Option<FleetCa>,
        policy: CertPolicy,
    ) -> Result<Access, StoreError> {
        let revocations = Arc::new(Revocations::default());
        for revocation in store.revocations().await? {
            if let Ok(role) = revocation.role.parse() {
                revocations.revoke(role, &revocation.name, revocation.revoked_at_ms);
            }
        }
        for cert in store.certificates(None).await? {
            revocations.record_issued(&cert.serial, cert.issued_at_ms);
        }
        Ok(Access {
            store,
            ca: ca.map(Arc::new),
            revocations,
            policy,
        })
    }

    pub fn revocations(&self) -> Arc<Revocations> {
        self.revocations.clone()
    }

    fn ca(&self) -> Result<Arc<FleetCa>, AccessError> {
        self.ca.clone().ok_or(AccessError::NoCaKey)
    }

    pub async fn create_token(
        &self,
        request: CreateTokenRequest,
        created_by: String,
        now_ms: i64,
    ) -> Result<(String, TokenInfo), AccessError> {
        let role = role_from_proto(request.role).ok_or_else(|| {
            AccessError::Invalid("say which role the token grants: agent, admin or reader".into())
        })?;
        let ttl = Duration::from_secs(u64::from(request.ttl_seconds));
        if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
            return Err(AccessError::Invalid(
                "a token's ttl must be between 1s and 7 days".into(),
            ));
        }
        if request.uses == 0 || request.uses > MAX_TOKEN_USES {
            return Err(AccessError::Invalid(format!(
                "a token's uses must be between 1 and {MAX_TOKEN_USES}"
            )));
        }
        let pattern_char =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '*');
        if !request.name_pattern.chars().all(pattern_char) {
            return Err(AccessError::Invalid(format!(
                "invalid name pattern {:?}: use lowercase letters, digits, '-', '.' and '*'",
                request.name_pattern
            )));
        }
        let k3s_role = K3sRole::from_proto(request.k3s_role);
        if k3s_role.is_some() && role != Role::Agent {
            return Err(AccessError::Invalid(format!(
                "only agent tokens enroll a K3s role, not {role} tokens"
            )));
        }
        if Duration::from_secs(u64::from(request.cert_ttl_seconds)) > MAX_CERT_TTL {
            return Err(AccessError::Invalid(
                "certificates may live at most 365 days".into(),
            ));
        }
        let token = Token::generate();
        let record = TokenRecord {
            id: token.id.clone(),
            secret_sha256: token.secret_hash(),
            role: role.to_string(),
            name_pattern: request.name_pattern,
            uses_total: request.uses,
            uses_left: request.uses,
            expires_at_ms: now_ms + ttl.as_millis() as i64,
            cert_ttl_s: request.cert_ttl_seconds,
            created_at_ms: now_ms,
            created_by,
            revoked_at_ms: None,
            description: request.description,
            enrolled_names: Vec::new(),
            k3s_role,
        };
        let info = token_info(&record);
        self.store
            .call(move |conn| rows::insert_token(conn, &record))
            .await?;
        Ok((token.reveal(), info))
    }

    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, AccessError> {
        Ok(self.store.tokens().await?.iter().map(token_info).collect())
    }

    pub async fn revoke_token(&self, id: String, now_ms: i64) -> Result<TokenInfo, AccessError> {
        match self.store.revoke_token(id.clone(), now_ms).await? {
            Some(record) => Ok(token_info(&record)),
            None => Err(AccessError::UnknownToken(id)),
        }
    }

    /// Exchanges a token and a CSR for a certificate, all in one transaction:
    /// the token's use and the certificate's record commit together.
    pub async fn enroll(
        &self,
        request: EnrollRequest,
        now_ms: i64,
    ) -> Result<EnrollResponse, AccessError> {
        let ca = self.ca()?;
        let token =
            Token::parse(&request.token).map_err(|err| AccessError::Invalid(err.to_string()))?;
        let role = role_from_proto(request.role).ok_or_else(|| {
            AccessError::Invalid("say which role to enroll as: agent, admin or reader".into())
        })?;
        k3sfleet_pki::validate_name(&request.name)
            .map_err(|err| AccessError::Invalid(err.to_string()))?;
        let requested_k3s_role = K3sRole::from_proto(request.k3s_role);
        if requested_k3s_role.is_some() && role != Role::Agent {
            return Err(AccessError::Invalid(format!(
                "only agents have a K3s role, not {role}s"
            )));
        }
        let revoked_at = self.revocations.revoked_at(role, &request.name);
        let default_lifetime = self.policy.lifetime(role);
        let name = request.name.clone();
        let csr = request.csr_pem;
        let outcome = self
            .store
            .call(move |conn| {
                let tx = conn.transaction()?;
                let record = match rows::token(&tx, &token.id)? {
                    // The same answer whether the id or the secret is wrong.
                    Some(record) if token.matches(&record.secret_sha256) => record,
                    _ => return Ok(Err(AccessError::Denied("unknown token".into()))),
                };
                if let Err(reason) = check_token(&record, role, &name, revoked_at, now_ms) {
                    return Ok(Err(AccessError::Denied(reason)));
                }
                let k3s_role = match bound_k3s_role(&record, requested_k3s_role) {
                    Ok(k3s_role) => k3s_role,
                    Err(reason) => return Ok(Err(AccessError::Denied(reason))),
                };
                // A token never takes over a live identity: whoever holds a
                // leaked token would get the node's session and its commands.
                let role_name = role.to_string();
                if let Some(live) =
                    rows::live_certificate(&tx, &name, &role_name, revoked_at, now_ms)?
                {
                    return Ok(Err(AccessError::Denied(live_identity(role, &name, &live))));
                }
                let lifetime = match record.cert_ttl_s {
                    0 => default_lifetime,
                    seconds => Duration::from_secs(u64::from(seconds)),
                };
                let request = ClientCertRequest {
                    name: name.clone(),
                    role,
                    k3s_role,
                    validity: lifetime,
                };
                let issued = match ca.sign_csr(&csr, &request) {
                    Ok(issued) => issued,
                    Err(IssueError::BadCsr(_)) => {
                        return Ok(Err(AccessError::Invalid(
                            "the certificate signing request is malformed or its signature does not verify".into(),
                        )));
                    }
                    Err(err) => return Ok(Err(AccessError::Issue(err))),
                };
                rows::record_enrollment(&tx, &record.id, &name, now_ms)?;
                let cert = certificate_record(&issued, &name, role, now_ms, format!("token:{}", record.id));
                rows::insert_certificate(&tx, &cert)?;
                tx.commit()?;
                Ok(Ok((issued, cert, ca.cert_pem().to_string())))
            })
            .await??;
        let (issued, cert, ca_pem) = outcome;
        self.revocations
            .record_issued(&cert.serial, cert.issued_at_ms);
        Ok(EnrollResponse {
            certificate_pem: issued.cert_pem,
            ca_pem,
            not_after_unix_ms: cert.not_after_ms,
            serial: cert.serial,
        })
    }

    /// Issues a fresh certificate for the caller, with the lifetime of the one
    /// it holds.
    pub async fn renew(
        &self,
        peer: &PeerIdentity,
        csr: String,
        now_ms: i64,
    ) -> Result<RenewResponse, AccessError> {
        let ca = self.ca()?;
        let held = Duration::from_secs((peer.not_after - peer.not_before).max(0) as u64)
            .saturating_sub(CERT_BACKDATE);
        // A renewed certificate keeps the K3s role the old one was bound to.
        let request = ClientCertRequest {
            name: peer.name.clone(),
            role: peer.role,
            k3s_role: peer.k3s_role,
            validity: held.clamp(MIN_CERT_TTL, MAX_CERT_TTL),
        };
        let issued = ca.sign_csr(&csr, &request).map_err(|err| match err {
            IssueError::BadCsr(_) => AccessError::Invalid(
                "the certificate signing request is malformed or its signature does not verify"
                    .into(),
            ),
            other => AccessError::Issue(other),
        })?;
        let cert = certificate_record(&issued, &peer.name, peer.role, now_ms, "renewal".into());
        let record = cert.clone();
        self.store
            .call(move |conn| rows::insert_certificate(conn, &record))
            .await?;
        self.revocations
            .record_issued(&cert.serial, cert.issued_at_ms);
        Ok(RenewResponse {
            certificate_pem: issued.cert_pem,
            not_after_unix_ms: cert.not_after_ms,
            serial: cert.serial,
        })
    }

    /// Denies every certificate issued to `name` in `role` so far; returns the
    /// serials the coordinator knows of.
    pub async fn revoke_identity(
        &self,
        role: Role,
        name: &str,
        by: String,
        now_ms: i64,
    ) -> Result<Vec<String>, AccessError> {
        let serials = self
            .store
            .revoke_identity(role.to_string(), name.to_string(), now_ms, by)
            .await?;
        self.revocations.revoke(role, name, now_ms);
        Ok(serials)
    }

    pub async fn certificates(
        &self,
        name: Option<String>,
    ) -> Result<Vec<CertificateInfo>, AccessError> {
        let records = self.store.certificates(name).await?;
        Ok(records
            .into_iter()
            .map(|cert| {
                let role = cert.role.parse().unwrap_or(Role::Reader);
                let revoked = self
                    .revocations
                    .revoked_at(role, &cert.name)
                    .is_some_and(|at| cert.issued_at_ms <= at);
                CertificateInfo {
                    serial: cert.serial,
                    name: cert.name,
                    role: role_to_proto(role) as i32,
                    not_before_unix_ms: cert.not_before_ms,
                    not_after_unix_ms: cert.not_after_ms,
                    issued_via: cert.issued_via,
                    revoked,
                }
            })
            .collect())
    }
}

/// Whether `token` may enroll `name` in `role` at `now_ms`; the reason if not.
pub fn check_token(
    token: &TokenRecord,
    role: Role,
    name: &str,
    name_revoked_at: Option<i64>,
    now_ms: i64,
) -> Result<(), String> {
    if token.revoked_at_ms.is_some() {
        return Err(format!("token {} was revoked", token.id));
    }
    if now_ms >= token.expires_at_ms {
        return Err(format!("token {} has expired", token.id));
    }
    if token.role != role.as_str() {
        return Err(format!(
            "token {} grants the {} role, not {role}",
            token.id, token.role
        ));
    }
    if !name_matches(&token.name_pattern, name) {
        return Err(format!(
            "token {} only enrolls names matching {:?}, not {name:?}",
            token.id, token.name_pattern
        ));
    }
    if let Some(revoked_at) = name_revoked_at
        && token.created_at_ms <= revoked_at
    {
        return Err(format!(
            "{role} {name:?} was revoked; enrolling it again needs a token created after the revocation"
        ));
    }
    let enrolled_before = token.enrolled_names.iter().any(|n| n == name);
    if !enrolled_before && token.uses_left == 0 {
        return Err(format!(
            "token {} is used up ({} of {} uses)",
            token.id, token.uses_total, token.uses_total
        ));
    }
    Ok(())
}

/// The K3s role to bind into an agent's certificate: the one the host asks
/// for, which the token must allow; the token's own when the host asks for
/// none.
pub fn bound_k3s_role(
    token: &TokenRecord,
    requested: Option<K3sRole>,
) -> Result<Option<K3sRole>, String> {
    match (token.k3s_role, requested) {
        (Some(allowed), Some(asked)) if allowed != asked => Err(format!(
            "token {} enrolls K3s {allowed}s only, not a K3s {asked}",
            token.id
        )),
        (allowed, asked) => Ok(asked.or(allowed)),
    }
}

/// Why a token cannot enroll a name that holds a live certificate.
fn live_identity(role: Role, name: &str, live: &CertificateRecord) -> String {
    format!(
        "{role} {name:?} already holds a live certificate (serial {}, valid until {}); a token \
         cannot take over a live identity: revoke it first (`k3sfleet cert revoke {name} --role {role}`) \
         and enroll with a token created after that",
        live.serial,
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_millis(live.not_after_ms.max(0) as u64)
        )
    )
}

fn certificate_record(
    issued: &k3sfleet_pki::IssuedCert,
    name: &str,
    role: Role,
    now_ms: i64,
    via: String,
) -> CertificateRecord {
    CertificateRecord {
        serial: issued.serial.clone(),
        name: name.to_string(),
        role: role.to_string(),
        not_before_ms: now_ms - CERT_BACKDATE.as_millis() as i64,
        not_after_ms: issued.not_after * 1000,
        issued_at_ms: now_ms,
        issued_via: via,
    }
}

fn token_info(record: &TokenRecord) -> TokenInfo {
    TokenInfo {
        id: record.id.clone(),
        role: record
            .role
            .parse()
            .map(|role| role_to_proto(role) as i32)
            .unwrap_or_default(),
        expires_unix_ms: record.expires_at_ms,
        uses_total: record.uses_total,
        uses_left: record.uses_left,
        name_pattern: record.name_pattern.clone(),
        cert_ttl_seconds: record.cert_ttl_s,
        created_unix_ms: record.created_at_ms,
        created_by: record.created_by.clone(),
        revoked_unix_ms: record.revoked_at_ms.unwrap_or(0),
        description: record.description.clone(),
        enrolled_names: record.enrolled_names.clone(),
        k3s_role: record
            .k3s_role
            .map_or(NodeRole::Unspecified, NodeRole::from) as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> TokenRecord {
        TokenRecord {
            id: "0123abcd".into(),
            secret_sha256: vec![],
            role: "agent".into(),
            name_pattern: "worker-*".into(),
            uses_total: 2,
            uses_left: 2,
            expires_at_ms: 10_000,
            cert_ttl_s: 0,
            created_at_ms: 1_000,
            created_by: "admin:alice".into(),
            revoked_at_ms: None,
            description: String::new(),
            enrolled_names: vec![],
            k3s_role: None,
        }
    }

    #[test]
    fn the_k3s_role_bound_is_the_one_asked_for_within_what_the_token_allows() {
        let servers_only = TokenRecord {
            k3s_role: Some(K3sRole::Server),
            ..token()
        };
        assert_eq!(
            bound_k3s_role(&servers_only, Some(K3sRole::Server)),
            Ok(Some(K3sRole::Server))
        );
        assert_eq!(
            bound_k3s_role(&servers_only, None),
            Ok(Some(K3sRole::Server))
        );
        let refused = bound_k3s_role(&servers_only, Some(K3sRole::Agent)).unwrap_err();
        assert!(
            refused.contains("enrolls K3s servers only, not a K3s agent"),
            "{refused}"
        );
        assert_eq!(
            bound_k3s_role(&token(), Some(K3sRole::Agent)),
            Ok(Some(K3sRole::Agent))
        );
        assert_eq!(bound_k3s_role(&token(), None), Ok(None));
    }

    #[test]
    fn a_valid_token_enrolls_a_matching_name() {
        assert_eq!(
            check_token(&token(), Role::Agent, "worker-01", None, 5_000),
            Ok(())
        );
    }

    #[test]
    fn each_rule_refuses_with_its_reason() {
        let check = |token: &TokenRecord, role, name, revoked, now| {
            check_token(token, role, name, revoked, now).unwrap_err()
        };
        assert!(check(&token(), Role::Agent, "worker-01", None, 10_000).contains("expired"));
        assert!(
            check(&token(), Role::Admin, "worker-01", None, 5_000)
                .contains("grants the agent role, not admin")
        );
        assert!(check(&token(), Role::Agent, "server-1", None, 5_000).contains("worker-*"));
        let revoked = TokenRecord {
            revoked_at_ms: Some(2_000),
            ..token()
        };
        assert!(check(&revoked, Role::Agent, "worker-01", None, 5_000).contains("revoked"));
        let used_up = TokenRecord {
            uses_left: 0,
            enrolled_names: vec!["worker-01".into(), "worker-02".into()],
            ..token()
        };
        assert!(
            check(&used_up, Role::Agent, "worker-03", None, 5_000)
                .contains("used up (2 of 2 uses)")
        );
        // The name was revoked after this token was made: a new token is needed.
        assert!(
            check(&token(), Role::Agent, "worker-01", Some(1_500), 5_000)
                .contains("needs a token created after")
        );
    }

    #[test]
    fn enrolling_again_with_the_same_token_and_name_is_allowed_when_used_up() {
        let used_up = TokenRecord {
            uses_left: 0,
            enrolled_names: vec!["worker-01".into(), "worker-02".into()],
            ..token()
        };
        assert_eq!(
            check_token(&used_up, Role::Agent, "worker-01", None, 5_000),
            Ok(())
        );
    }

    #[test]
    fn a_token_made_after_a_revocation_works() {
        let fresh = TokenRecord {
            created_at_ms: 3_000,
            ..token()
        };
        assert_eq!(
            check_token(&fresh, Role::Agent, "worker-01", Some(2_000), 5_000),
            Ok(())
        );
    }
}
