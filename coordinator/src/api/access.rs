//! EnrollmentService, CertificateService and AccessService.

use std::sync::Arc;

use k3sfleet_pki::Role;
use k3sfleet_proto::v1::access_service_server::AccessService;
use k3sfleet_proto::v1::certificate_service_server::CertificateService;
use k3sfleet_proto::v1::enrollment_service_server::EnrollmentService;
use k3sfleet_proto::v1::{
    CreateTokenRequest, CreateTokenResponse, EnrollRequest, EnrollResponse,
    ListCertificatesRequest, ListCertificatesResponse, ListTokensRequest, ListTokensResponse,
    RenewRequest, RenewResponse, RevokeIdentityRequest, RevokeIdentityResponse, RevokeTokenRequest,
    RevokeTokenResponse,
};
use tonic::{Request, Response, Status};

use crate::access::{Access, AccessError, role_from_proto};
use crate::auth;
use crate::clock::unix_ms;
use crate::fleet::Fleet;
use crate::store::{AuditEvent, Store};

#[derive(Debug)]
pub struct AccessApi {
    access: Arc<Access>,
    fleet: Arc<Fleet>,
    store: Store,
}

impl AccessApi {
    pub fn new(access: Arc<Access>, fleet: Arc<Fleet>, store: Store) -> Self {
        AccessApi {
            access,
            fleet,
            store,
        }
    }

    async fn audit(
        &self,
        actor: String,
        action: &str,
        node: Option<String>,
        detail: String,
    ) -> Result<(), Status> {
        self.store
            .audit(
                AuditEvent {
                    actor,
                    action: action.to_string(),
                    node,
                    detail,
                },
                unix_ms(),
            )
            .await
            .map(|_| ())
            .map_err(|err| Status::internal(format!("writing the audit log failed: {err}")))
    }
}

fn status(err: AccessError) -> Status {
    match err {
        AccessError::Invalid(message) => Status::invalid_argument(message),
        AccessError::Denied(message) => Status::permission_denied(message),
        AccessError::UnknownToken(_) => Status::not_found(err.to_string()),
        AccessError::NoCaKey => Status::failed_precondition(err.to_string()),
        AccessError::Store(_) | AccessError::Issue(_) => {
            tracing::error!(error = %err, "access operation failed");
            Status::internal(err.to_string())
        }
    }
}

#[tonic::async_trait]
impl EnrollmentService for AccessApi {
    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let request = request.into_inner();
        let (name, role) = (request.name.clone(), request.role);
        match self.access.enroll(request, unix_ms()).await {
            Ok(response) => {
                let role = role_from_proto(role).map_or("unknown", Role::as_str);
                tracing::info!(name, role, serial = response.serial, "enrolled");
                self.audit(
                    format!("{role}:{name}"),
                    "enrollment.succeeded",
                    Some(name),
                    format!("certificate {}", response.serial),
                )
                .await?;
                Ok(Response::new(response))
            }
            Err(err) => {
                // Refusals are worth an operator's attention; the token is never logged.
                tracing::warn!(name, error = %err, "enrollment refused");
                Err(status(err))
            }
        }
    }
}

#[tonic::async_trait]
impl CertificateService for AccessApi {
    async fn renew(
        &self,
        request: Request<RenewRequest>,
    ) -> Result<Response<RenewResponse>, Status> {
        let peer = auth::peer(&request)?.clone();
        let response = self
            .access
            .renew(&peer, request.into_inner().csr_pem, unix_ms())
            .await
            .map_err(status)?;
        tracing::info!(name = peer.name, role = %peer.role, serial = response.serial, "certificate renewed");
        Ok(Response::new(response))
    }
}

#[tonic::async_trait]
impl AccessService for AccessApi {
    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let actor = auth::caller(&request)?.audit_name();
        let (token, info) = self
            .access
            .create_token(request.into_inner(), actor.clone(), unix_ms())
            .await
            .map_err(status)?;
        let detail = format!(
            "token {} for role {} uses {} pattern {:?}",
            info.id,
            role_from_proto(info.role).map_or("unknown", Role::as_str),
            info.uses_total,
            info.name_pattern
        );
        self.audit(actor, "token.created", None, detail).await?;
        Ok(Response::new(CreateTokenResponse {
            token,
            info: Some(info),
        }))
    }

    async fn list_tokens(
        &self,
        _request: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        Ok(Response::new(ListTokensResponse {
            tokens: self.access.tokens().await.map_err(status)?,
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenResponse>, Status> {
        let actor = auth::caller(&request)?.audit_name();
        let id = request.into_inner().id;
        let info = self
            .access
            .revoke_token(id.clone(), unix_ms())
            .await
            .map_err(status)?;
        self.audit(actor, "token.revoked", None, format!("token {id}"))
            .await?;
        Ok(Response::new(RevokeTokenResponse { info: Some(info) }))
    }

    async fn revoke_identity(
        &self,
        request: Request<RevokeIdentityRequest>,
    ) -> Result<Response<RevokeIdentityResponse>, Status> {
        let actor = auth::caller(&request)?.audit_name();
        let RevokeIdentityRequest { name, role } = request.into_inner();
        let role = role_from_proto(role)
            .ok_or_else(|| Status::invalid_argument("say which role to revoke"))?;
        k3sfleet_pki::validate_name(&name)
            .map_err(|err| Status::invalid_argument(err.to_string()))?;
        // Record first, then cut the session: a reconnect finds the revocation in force.
        let serials = self
            .access
            .revoke_identity(role, &name, actor.clone(), unix_ms())
            .await
            .map_err(status)?;
        let session_closed = role == Role::Agent
            && self.fleet.close_session(
                &name,
                Status::unauthenticated(format!("the certificates of {name} were revoked")),
            );
        self.audit(
            actor,
            "certificate.revoked",
            Some(name.clone()),
            format!("{role} {name}: serials [{}]", serials.join(", ")),
        )
        .await?;
        Ok(Response::new(RevokeIdentityResponse {
            revoked_serials: serials,
            session_closed,
        }))
    }

    async fn list_certificates(
        &self,
        request: Request<ListCertificatesRequest>,
    ) -> Result<Response<ListCertificatesResponse>, Status> {
        let name = request.into_inner().name;
        let name = (!name.is_empty()).then_some(name);
        Ok(Response::new(ListCertificatesResponse {
            certificates: self.access.certificates(name).await.map_err(status)?,
        }))
    }
}
