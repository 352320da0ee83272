//! Threats that span every RPC and every log: a reader trying each mutating
//! call, an anonymous caller trying everything but enrollment and health, an
//! oversized message, and secrets leaking into any log output of a whole
//! enrollment story. (Signed releases: agent/tests/signed_releases.rs and
//! release_signing.rs; token takeover of a live node: enrollment.rs.)

use std::process::Command;
use std::time::Duration;

use k3sfleet_coordinator::auth::{AUTHORIZATION, Allow};
use k3sfleet_pki::{DialTarget, Role};
use k3sfleet_tests::process::{AgentHome, AgentSpec};
use k3sfleet_tests::{AgentProcess, Cli, CoordinatorProcess, TestPki, bin, wait_until};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Sends an empty message (valid for every request type) and ignores replies,
/// so any RPC can be called by path.
#[derive(Debug, Clone, Default)]
struct EmptyCodec;

impl Codec for EmptyCodec {
    type Encode = ();
    type Decode = ();
    type Encoder = EmptyCodec;
    type Decoder = EmptyCodec;

    fn encoder(&mut self) -> Self::Encoder {
        EmptyCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        EmptyCodec
    }
}

impl Encoder for EmptyCodec {
    type Item = ();
    type Error = tonic::Status;

    fn encode(&mut self, _item: (), _dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        Ok(())
    }
}

impl Decoder for EmptyCodec {
    type Item = ();
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        use bytes::Buf;
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_is_denied_every_mutating_rpc() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&dir.path().join("pki"));
    let coordinator = CoordinatorProcess::start(dir.path(), &pki, "");
    let reader = pki.issue(Role::Reader, "auditor");
    let channel = k3sfleet_pki::dial(
        &DialTarget::new(coordinator.addr.to_string()),
        pki.client_tls(Some(&reader)),
    )
    .await
    .unwrap();

    let closed_to_readers: Vec<&str> = AUTHORIZATION
        .iter()
        .filter(|(_, allow)| match allow {
            Allow::Anyone => false,
            Allow::Roles(roles) => !roles.contains(&Role::Reader),
        })
        .map(|(path, _)| *path)
        .collect();
    assert!(closed_to_readers.len() >= 6, "{closed_to_readers:?}");
    for path in closed_to_readers {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let path = http::uri::PathAndQuery::from_static(path);
        // Streaming and unary methods both answer a refused call on the first message.
        let result = grpc
            .streaming(
                tonic::Request::new(tokio_stream::iter([()])),
                path.clone(),
                EmptyCodec,
            )
            .await;
        let status = result
            .err()
            .unwrap_or_else(|| panic!("{path} was allowed for a reader"));
        assert_eq!(
            status.code(),
            tonic::Code::PermissionDenied,
            "{path}: {status}"
        );
    }
}

#[test]
fn no_token_or_key_material_reaches_any_log() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&dir.path().join("pki"));
    let coordinator = CoordinatorProcess::start(dir.path(), &pki, "");
    let admin = Cli::new(&pki, coordinator.addr, pki.issue(Role::Admin, "alice"));
    let mut outputs = Vec::new();

    let token = admin.ok(&[
        "token",
        "create",
        "--role",
        "agent",
        "--uses",
        "1",
        "--name-pattern",
        "worker-*",
    ]);
    let token = token.trim().to_string();
    let secret = token.rsplit('.').next().unwrap().to_string();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token).unwrap();
    let wrong_file = dir.path().join("wrong-token");
    std::fs::write(
        &wrong_file,
        format!("{}{}", &token[..token.len() - 4], "ffff"),
    )
    .unwrap();

    let enroll = |name: &str, file: &std::path::Path| {
        let home = AgentHome::create(dir.path(), coordinator.addr, &AgentSpec::new(name, "agent"));
        let output = Command::new(bin("k3sfleet-agent"))
            .args(["enroll", "--config"])
            .arg(&home.config)
            .arg("--token-file")
            .arg(file)
            .args(["--ca-fingerprint", &pki.fingerprint(), "--name", name])
            .env("RUST_LOG", "debug")
            .output()
            .unwrap();
        (home, output)
    };
    // Failures first (wrong secret, forbidden name), then success, then a replay.
    for (name, file) in [
        ("worker-01", &wrong_file),
        ("server-9", &token_file),
        ("worker-01", &token_file),
        ("worker-02", &token_file),
    ] {
        let (_, output) = enroll(name, file);
        outputs.push(String::from_utf8_lossy(&output.stdout).to_string());
        outputs.push(String::from_utf8_lossy(&output.stderr).to_string());
    }
    let home = AgentHome::create(
        dir.path(),
        coordinator.addr,
        &AgentSpec::new("worker-01", "agent"),
    );
    let agent = AgentProcess::spawn(home.clone());
    wait_until(
        "the enrolled agent to connect",
        Duration::from_secs(30),
        || {
            admin
                .node("worker-01")
                .is_some_and(|n| n["connectivity"] == "CONNECTIVITY_CONNECTED")
        },
    );
    outputs.push(admin.ok(&["audit"]));
    outputs.push(admin.ok(&["token", "list", "-o", "json"]));
    outputs.push(agent.daemon.log());
    outputs.push(coordinator.daemon.log());
    let database = std::fs::read(coordinator.data_dir.join("coordinator.db")).unwrap_or_default();

    let key_pem = std::fs::read_to_string(&home.tls.key).unwrap();
    let key_body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let everything = outputs.join("\n");
    assert!(
        !everything.contains(&secret),
        "the token secret reached a log"
    );
    assert!(
        !everything.contains("PRIVATE KEY"),
        "key material reached a log"
    );
    assert!(
        !everything.contains(&key_body[..40]),
        "the agent's key reached a log"
    );
    assert!(
        !database
            .windows(secret.len())
            .any(|w| w == secret.as_bytes()),
        "the database stores the token secret"
    );
    // The story really happened: the refusals and the enrollment are in the logs.
    assert!(everything.contains("unknown token"), "{everything}");
    assert!(
        everything.contains("only enrolls names matching"),
        "{everything}"
    );
    assert!(everything.contains("enrollment.succeeded"), "{everything}");
}

/// Every path an anonymous caller (TLS without a client certificate) may not call.
fn closed_to_anonymous() -> Vec<&'static str> {
    AUTHORIZATION
        .iter()
        .filter(|(_, allow)| !matches!(allow, Allow::Anyone))
        .map(|(path, _)| *path)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_anonymous_caller_reaches_only_enrollment_health_and_reflection() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&dir.path().join("pki"));
    let coordinator = CoordinatorProcess::start(dir.path(), &pki, "");
    let channel = k3sfleet_pki::dial(
        &DialTarget::new(coordinator.addr.to_string()),
        pki.client_tls(None),
    )
    .await
    .unwrap();
    let open: Vec<_> = AUTHORIZATION
        .iter()
        .filter(|(_, allow)| matches!(allow, Allow::Anyone))
        .map(|(path, _)| *path)
        .collect();
    for path in &open {
        assert!(
            path.starts_with("/k3sfleet.v1.EnrollmentService/")
                || path.starts_with("/grpc.health.v1.Health/")
                || path.starts_with("/grpc.reflection."),
            "{path} is open to anonymous callers"
        );
    }
    let closed = closed_to_anonymous();
    assert!(closed.len() >= 10, "{closed:?}");
    for path in closed {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let path = http::uri::PathAndQuery::from_static(path);
        let status = grpc
            .streaming(
                tonic::Request::new(tokio_stream::iter([()])),
                path.clone(),
                EmptyCodec,
            )
            .await
            .err()
            .unwrap_or_else(|| panic!("{path} was allowed for an anonymous caller"));
        assert!(
            matches!(
                status.code(),
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
            ),
            "{path}: {status}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_message_is_refused_and_the_coordinator_keeps_serving() {
    use k3sfleet_proto::v1::EnrollRequest;
    use k3sfleet_proto::v1::enrollment_service_client::EnrollmentServiceClient;

    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&dir.path().join("pki"));
    let coordinator = CoordinatorProcess::start(dir.path(), &pki, "");
    let channel = k3sfleet_pki::dial(
        &DialTarget::new(coordinator.addr.to_string()),
        pki.client_tls(None),
    )
    .await
    .unwrap();
    let mut client =
        EnrollmentServiceClient::new(channel.clone()).max_encoding_message_size(64 * 1024 * 1024);
    let huge = EnrollRequest {
        csr_pem: "A".repeat(8 * 1024 * 1024),
        ..Default::default()
    };
    let status = client.enroll(huge).await.unwrap_err();
    assert!(
        matches!(
            status.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "an 8 MiB message: {status}"
    );
    // A small (bad) request afterwards gets its ordinary answer.
    let status = client.enroll(EnrollRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
}
