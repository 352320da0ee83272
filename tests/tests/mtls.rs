//! Who may talk to the coordinator, and as whom. Each rejection is its own
//! test, against a real coordinator process.

use std::time::Duration;

use k3sfleet_pki::{DialTarget, Role};
use k3sfleet_proto::PROTOCOL;
use k3sfleet_proto::v1::admin_service_client::AdminServiceClient;
use k3sfleet_proto::v1::agent_service_client::AgentServiceClient;
use k3sfleet_proto::v1::{
    AgentMessage, Command, EtcdSnapshot, Hello, ListNodesRequest, NodeRole, RunCommandRequest,
    agent_message, command, coordinator_message,
};
use k3sfleet_tests::pki::CertFiles;
use k3sfleet_tests::{CoordinatorProcess, TestPki};
use tonic::Code;
use tonic::transport::Channel;

struct Setup {
    _dir: tempfile::TempDir,
    pki: TestPki,
    coordinator: CoordinatorProcess,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&dir.path().join("pki"));
    let coordinator = CoordinatorProcess::start(dir.path(), &pki, "");
    Setup {
        _dir: dir,
        pki,
        coordinator,
    }
}

impl Setup {
    async fn channel(
        &self,
        identity: Option<&CertFiles>,
    ) -> Result<Channel, k3sfleet_pki::DialError> {
        let target = DialTarget::new(self.coordinator.addr.to_string());
        k3sfleet_pki::dial(&target, self.pki.client_tls(identity)).await
    }

    async fn channel_as(&self, role: Role, name: &str) -> Channel {
        let files = self.pki.issue(role, name);
        self.channel(Some(&files)).await.unwrap()
    }
}

fn hello(name: &str) -> AgentMessage {
    AgentMessage {
        body: Some(agent_message::Body::Hello(Hello {
            node_name: name.into(),
            role: NodeRole::Agent as i32,
            agent_version: "0.0.0-test".into(),
            protocol: Some(PROTOCOL),
            report_interval_ms: 1000,
            ..Default::default()
        })),
    }
}

/// An open session: its first answer, and the sender that keeps it open.
#[derive(Debug)]
struct Session {
    first: coordinator_message::Body,
    _keep_open: tokio::sync::mpsc::Sender<AgentMessage>,
}

/// Opens a session with `first` as the first message; returns the first answer or the error.
async fn open_session(channel: Channel, first: AgentMessage) -> Result<Session, tonic::Status> {
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    sender.send(first).await.unwrap();
    let mut inbound = AgentServiceClient::new(channel)
        .session(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await?
        .into_inner();
    let answer = tokio::time::timeout(Duration::from_secs(10), inbound.message())
        .await
        .expect("an answer within 10s")?;
    Ok(Session {
        first: answer.and_then(|m| m.body).expect("a message"),
        _keep_open: sender,
    })
}

fn snapshot_command() -> RunCommandRequest {
    RunCommandRequest {
        node: "worker-01".into(),
        command: Some(Command {
            id: String::new(),
            action: Some(command::Action::EtcdSnapshot(EtcdSnapshot {
                name: "x".into(),
            })),
        }),
        timeout_seconds: 5,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_client_certificate_is_refused() {
    let setup = setup();
    // The handshake itself succeeds (health checks and enrollment need no
    // certificate); every RPC that needs an identity must then fail.
    let channel = setup.channel(None).await.unwrap();
    let listed = AdminServiceClient::new(channel.clone())
        .list_nodes(ListNodesRequest {})
        .await;
    assert_eq!(listed.unwrap_err().code(), Code::Unauthenticated);
    let session = open_session(channel, hello("worker-01")).await;
    assert_eq!(session.unwrap_err().code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_from_another_ca_is_refused() {
    let setup = setup();
    let other_dir = tempfile::tempdir().unwrap();
    let other = TestPki::create(other_dir.path());
    let foreign = other.issue(Role::Admin, "mallory");
    let result = match setup.channel(Some(&foreign)).await {
        Err(err) => Err(err.to_string()),
        Ok(channel) => AdminServiceClient::new(channel)
            .list_nodes(ListNodesRequest {})
            .await
            .map(|_| ())
            .map_err(|status| status.to_string()),
    };
    assert!(result.is_err(), "a foreign CA's certificate was accepted");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_certificate_cannot_call_admin_rpcs() {
    let setup = setup();
    let channel = setup.channel_as(Role::Agent, "worker-01").await;
    let mut admin = AdminServiceClient::new(channel);
    assert_eq!(
        admin
            .list_nodes(ListNodesRequest {})
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    assert_eq!(
        admin
            .run_command(snapshot_command())
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn node_a_cannot_say_hello_as_node_b() {
    let setup = setup();
    let channel = setup.channel_as(Role::Agent, "worker-a").await;
    let status = open_session(channel, hello("worker-b")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("worker-a") && status.message().contains("worker-b"),
        "{status}"
    );

    // Node A speaking as itself works, and B never entered the registry.
    let channel = setup.channel_as(Role::Agent, "worker-a").await;
    let session = open_session(channel, hello("worker-a")).await.unwrap();
    assert!(matches!(
        session.first,
        coordinator_message::Body::Welcome(_)
    ));
    let admin = setup.channel_as(Role::Admin, "alice").await;
    let nodes = AdminServiceClient::new(admin)
        .list_nodes(ListNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes;
    let names: Vec<_> = nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["worker-a"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_can_list_but_not_change_anything() {
    let setup = setup();
    let channel = setup.channel_as(Role::Reader, "grafana").await;
    let mut admin = AdminServiceClient::new(channel);
    admin
        .list_nodes(ListNodesRequest {})
        .await
        .expect("readers may list");
    let status = admin.run_command(snapshot_command()).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("reader"), "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_certificate_cannot_act_as_an_agent() {
    let setup = setup();
    let channel = setup.channel_as(Role::Admin, "alice").await;
    let status = open_session(channel, hello("alice")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_checks_work_without_a_certificate_and_reflection_lists_the_services() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let setup = setup();
    let anonymous = setup.channel(None).await.unwrap();
    // NOT_SERVING until the first readiness probe (every 5 s) has passed.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let status = HealthClient::new(anonymous.clone())
            .check(HealthCheckRequest {
                service: "k3sfleet.v1.AgentService".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        if status == ServingStatus::Serving as i32 {
            break;
        }
        assert_eq!(status, ServingStatus::NotServing as i32);
        assert!(std::time::Instant::now() < deadline, "never serving");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let reader = setup.channel_as(Role::Reader, "grpcurl").await;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(reader)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "k3sfleet.v1.AgentService",
        "k3sfleet.v1.AdminService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
}
