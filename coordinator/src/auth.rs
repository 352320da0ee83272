//! Who may call what.
//!
//! Every request passes through [`AuthLayer`]: it reads the caller's identity
//! from the verified client certificate (or finds none), looks the RPC up in
//! [`AUTHORIZATION`], and refuses anything the table does not allow. RPCs
//! missing from the table are denied to everyone. Handlers read the caller
//! from the request extensions.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use k3sfleet_pki::{PeerIdentity, Role};
use tonic::Status;
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use crate::access::Revocations;
use crate::rate_limit::AnonymousLimiter;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A TLS connection without a client certificate.
    Anonymous,
    Peer(PeerIdentity),
}

impl Caller {
    /// How the caller appears in the audit log: "admin:alice".
    pub fn audit_name(&self) -> String {
        match self {
            Caller::Anonymous => "anonymous".to_string(),
            Caller::Peer(peer) => format!("{}:{}", peer.role, peer.name),
        }
    }

    pub fn identity(&self) -> Option<&PeerIdentity> {
        match self {
            Caller::Anonymous => None,
            Caller::Peer(peer) => Some(peer),
        }
    }
}

/// Who an RPC is open to.
#[derive(Debug, Clone, Copy)]
pub enum Allow {
    /// Anyone who completed the TLS handshake, with or without a certificate.
    Anyone,
    /// Callers whose certificate carries one of these roles.
    Roles(&'static [Role]),
}

const ADMIN: Allow = Allow::Roles(&[Role::Admin]);
const READERS: Allow = Allow::Roles(&[Role::Admin, Role::Reader]);
const AGENTS: Allow = Allow::Roles(&[Role::Agent]);

/// The authorization table: full gRPC method path to who may call it.
/// Anything not listed is denied.
pub const AUTHORIZATION: &[(&str, Allow)] = &[
    ("/k3sfleet.v1.AgentService/Session", AGENTS),
    ("/k3sfleet.v1.AgentService/FetchArtifact", AGENTS),
    ("/k3sfleet.v1.AdminService/ListNodes", READERS),
    ("/k3sfleet.v1.AdminService/GetNode", READERS),
    ("/k3sfleet.v1.AdminService/ListAudit", READERS),
    ("/k3sfleet.v1.AdminService/RunCommand", ADMIN),
    // The token is the credential.
    ("/k3sfleet.v1.EnrollmentService/Enroll", Allow::Anyone),
    (
        "/k3sfleet.v1.CertificateService/Renew",
        Allow::Roles(&[Role::Agent, Role::Admin, Role::Reader]),
    ),
    ("/k3sfleet.v1.AccessService/CreateToken", ADMIN),
    ("/k3sfleet.v1.AccessService/ListTokens", READERS),
    ("/k3sfleet.v1.AccessService/RevokeToken", ADMIN),
    ("/k3sfleet.v1.AccessService/RevokeIdentity", ADMIN),
    ("/k3sfleet.v1.AccessService/ListCertificates", READERS),
    ("/k3sfleet.v1.DrainService/Drain", ADMIN),
    ("/k3sfleet.v1.DrainService/Uncordon", ADMIN),
    ("/k3sfleet.v1.DrainService/CheckWorkloads", READERS),
    ("/k3sfleet.v1.RolloutService/PlanUpgrade", READERS),
    ("/k3sfleet.v1.RolloutService/StartUpgrade", ADMIN),
    ("/k3sfleet.v1.RolloutService/GetRollout", READERS),
    ("/k3sfleet.v1.RolloutService/WatchRollout", READERS),
    ("/k3sfleet.v1.RolloutService/ControlRollout", ADMIN),
    // Load balancers probe without client certificates.
    ("/grpc.health.v1.Health/Check", Allow::Anyone),
    ("/grpc.health.v1.Health/Watch", Allow::Anyone),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        READERS,
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        READERS,
    ),
];

/// Looks up who may call `path`.
pub fn allowed(path: &str) -> Option<Allow> {
    AUTHORIZATION
        .iter()
        .find(|(method, _)| *method == path)
        .map(|(_, allow)| *allow)
}

/// Decides one request. `Ok` carries the caller for the handler.
pub fn authorize(
    path: &str,
    caller: Result<Caller, Status>,
    revocations: &Revocations,
) -> Result<Caller, Status> {
    let allow =
        allowed(path).ok_or_else(|| Status::permission_denied(format!("{path} is not allowed")))?;
    let caller = caller?;
    if let Caller::Peer(peer) = &caller
        && revocations.is_revoked(peer)
    {
        return Err(Status::unauthenticated(format!(
            "the certificate of {} {} (serial {}) has been revoked",
            peer.role, peer.name, peer.serial
        )));
    }
    match (allow, &caller) {
        (Allow::Anyone, _) => Ok(caller),
        (Allow::Roles(_), Caller::Anonymous) => Err(Status::unauthenticated(format!(
            "{path} needs a client certificate signed by the fleet CA"
        ))),
        (Allow::Roles(roles), Caller::Peer(peer)) if roles.contains(&peer.role) => Ok(caller),
        (Allow::Roles(_), Caller::Peer(peer)) => Err(Status::permission_denied(format!(
            "{} certificate {:?} may not call {path}",
            peer.role, peer.name
        ))),
    }
}

/// Reads the caller from the connection's verified certificate chain.
fn caller_of<B>(request: &Request<B>) -> Result<Caller, Status> {
    let certs = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.peer_certs());
    match certs.as_deref().and_then(|chain| chain.first()) {
        None => Ok(Caller::Anonymous),
        Some(leaf) => PeerIdentity::from_der(leaf)
            .map(Caller::Peer)
            .map_err(|err| Status::unauthenticated(format!("unusable client certificate: {err}"))),
    }
}

/// The client's address, from the connection.
fn peer_address<B>(request: &Request<B>) -> Option<std::net::IpAddr> {
    request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.get_ref().remote_addr())
        .map(|addr| addr.ip())
}

/// Holds an anonymous caller to its address's rate.
fn within_rate<B>(
    request: &Request<B>,
    caller: Caller,
    anonymous: &AnonymousLimiter,
) -> Result<Caller, Status> {
    let (Caller::Anonymous, Some(address)) = (&caller, peer_address(request)) else {
        return Ok(caller);
    };
    anonymous.take(address).map(|()| caller).map_err(|wait| {
        Status::resource_exhausted(format!(
            "too many calls without a client certificate from {address}; try again in {} ms",
            wait.as_millis().max(1)
        ))
    })
}

/// Tower layer that applies [`authorize`] to every request, and holds
/// anonymous callers to a rate.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    revocations: Arc<Revocations>,
    anonymous: Arc<AnonymousLimiter>,
}

impl AuthLayer {
    pub fn new(revocations: Arc<Revocations>, anonymous: AnonymousLimiter) -> Self {
        AuthLayer {
            revocations,
            anonymous: Arc::new(anonymous),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            revocations: self.revocations.clone(),
            anonymous: self.anonymous.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    revocations: Arc<Revocations>,
    anonymous: Arc<AnonymousLimiter>,
}

impl<S, B> Service<Request<B>> for AuthService<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = futures::future::Either<
        futures::future::Ready<Result<Response<Body>, S::Error>>,
        S::Future,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let decision = authorize(request.uri().path(), caller_of(&request), &self.revocations)
            .and_then(|caller| within_rate(&request, caller, &self.anonymous));
        match decision {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                futures::future::Either::Right(self.inner.call(request))
            }
            // A flood of calls over the rate is not logged call by call.
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                futures::future::Either::Left(futures::future::ready(Ok(status.into_http())))
            }
            Err(status) => {
                tracing::info!(
                    method = request.uri().path(),
                    reason = status.message(),
                    "request refused"
                );
                futures::future::Either::Left(futures::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// The caller, as the auth layer left it in the request.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<&Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .ok_or_else(|| Status::internal("request reached a handler without passing authorization"))
}

/// The calling peer's identity; anonymous callers are refused.
pub fn peer<T>(request: &tonic::Request<T>) -> Result<&PeerIdentity, Status> {
    caller(request)?
        .identity()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k3sfleet_pki::Fingerprint;
    use prost::Message;

    fn peer(role: Role, name: &str) -> Caller {
        Caller::Peer(PeerIdentity {
            name: name.into(),
            role,
            k3s_role: None,
            serial: format!("{name}-serial"),
            not_before: 1,
            not_after: 0,
            fingerprint: Fingerprint::of_der(name.as_bytes()),
        })
    }

    const LIST: &str = "/k3sfleet.v1.AdminService/ListNodes";
    const RUN: &str = "/k3sfleet.v1.AdminService/RunCommand";
    const SESSION: &str = "/k3sfleet.v1.AgentService/Session";

    #[test]
    fn every_rpc_of_every_service_is_in_the_table() {
        let set =
            prost_types::FileDescriptorSet::decode(k3sfleet_proto::FILE_DESCRIPTOR_SET).unwrap();
        for file in set.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    assert!(
                        allowed(&path).is_some(),
                        "{path} is missing from AUTHORIZATION"
                    );
                }
            }
        }
    }

    #[test]
    fn unlisted_methods_are_denied_to_everyone() {
        let revoked = Revocations::default();
        let err = authorize(
            "/k3sfleet.v1.AdminService/Nope",
            Ok(peer(Role::Admin, "a")),
            &revoked,
        )
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn roles_are_enforced() {
        let revoked = Revocations::default();
        let check = |path, caller| {
            authorize(path, Ok(caller), &revoked)
                .map(|_| ())
                .map_err(|s| s.code())
        };
        assert_eq!(check(LIST, peer(Role::Reader, "r")), Ok(()));
        assert_eq!(check(LIST, peer(Role::Admin, "a")), Ok(()));
        assert_eq!(
            check(LIST, peer(Role::Agent, "n")),
            Err(tonic::Code::PermissionDenied)
        );
        assert_eq!(
            check(RUN, peer(Role::Reader, "r")),
            Err(tonic::Code::PermissionDenied)
        );
        assert_eq!(check(RUN, peer(Role::Admin, "a")), Ok(()));
        assert_eq!(
            check(SESSION, peer(Role::Admin, "a")),
            Err(tonic::Code::PermissionDenied)
        );
        assert_eq!(
            check(SESSION, Caller::Anonymous),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            check("/grpc.health.v1.Health/Check", Caller::Anonymous),
            Ok(())
        );
    }

    #[test]
    fn revoked_identities_are_refused_everywhere() {
        let revoked = Revocations::default();
        revoked.revoke(Role::Admin, "a", 10_000_000);
        let err = authorize(LIST, Ok(peer(Role::Admin, "a")), &revoked).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(err.message().contains("revoked"));
    }
}
