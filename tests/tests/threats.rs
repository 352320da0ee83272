//! Threats that span every RPC and every log: a reader trying each mutating
//! call, an anonymous caller trying everything but enrollment and health, an
//! oversized message, secrets leaking into any log output of a whole
//! enrollment story, a slow-handshake flood, anonymous callers past their
//! rate, and a coordinator that cannot write saying so. (Signed releases: agent/tests/signed_releases.rs and
//! release_signing.rs; token takeover of a live node and a role forged in a
//! hello: enrollment.rs.)

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

/// Opens `count` TCP connections to `coordinator` from `source` and sends
/// nothing on them: handshakes that never start.
async fn idle_connections(
    coordinator: std::net::SocketAddr,
    source: std::net::IpAddr,
    count: usize,
) -> Vec<tokio::net::TcpStream> {
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(std::net::SocketAddr::new(source, 0)).unwrap();
        streams.push(socket.connect(coordinator).await.unwrap());
    }
    streams
}

/// Whether the coordinator has closed `stream` (end of file or a reset).
fn closed_by_the_peer(stream: &tokio::net::TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.try_read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_handshake_flood_from_one_host_does_not_lock_out_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&dir.path().join("pki"));
    // Handshakes of the flood stay in flight for the whole test.
    let coordinator = CoordinatorProcess::start(
        dir.path(),
        &pki,
        "[limits]\nmax_connections = 100\nmax_handshakes = 40\n\
         max_handshakes_per_address = 8\nhandshake_timeout = \"120s\"\n",
    );
    let admin = Cli::new(&pki, coordinator.addr, pki.issue(Role::Admin, "alice"));
    let flooder: std::net::IpAddr = [127, 0, 0, 2].into();
    let flood = idle_connections(coordinator.addr, flooder, 90).await;

    // The flood holds 8 of the 40 handshake slots; the admin, from another
    // address, gets one of the rest. (With one shared cap it would wait for
    // the flood's handshakes to time out, which closes them.)
    let nodes = tokio::task::spawn_blocking(move || {
        let output = admin.run(&["nodes"]);
        (admin, output)
    });
    let (admin, output) = nodes.await.unwrap();
    assert!(
        output.status.success(),
        "the admin was locked out: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let still_open = flood.iter().filter(|s| !closed_by_the_peer(s)).count();
    assert_eq!(still_open, 90, "the flood's connections were cut instead");

    // Past max_connections, new connections are closed at once.
    let more = idle_connections(coordinator.addr, flooder, 30).await;
    let mut closed = 0;
    for _ in 0..50 {
        closed = more.iter().filter(|s| closed_by_the_peer(s)).count();
        if closed >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 10 slots were left (11 while the admin's connection was still counted).
    assert!(
        (20..=21).contains(&closed),
        "{closed} of 30 connections past the cap were closed"
    );
    assert!(
        coordinator.daemon.log().contains("limits.max_connections"),
        "the refusals are not logged"
    );

    // When the flood ends, every slot is given back.
    drop(flood);
    drop(more);
    let output = tokio::task::spawn_blocking(move || admin.run(&["nodes"]))
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "after the flood: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_callers_are_held_to_a_rate_and_certificate_holders_are_not() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&dir.path().join("pki"));
    let coordinator = CoordinatorProcess::start(
        dir.path(),
        &pki,
        "[limits]\nanonymous_calls_per_second = 2\nanonymous_burst = 5\n",
    );
    let anonymous = k3sfleet_pki::dial(
        &DialTarget::new(coordinator.addr.to_string()),
        pki.client_tls(None),
    )
    .await
    .unwrap();
    let mut health = HealthClient::new(anonymous);
    let mut answers = Vec::new();
    for _ in 0..7 {
        answers.push(health.check(HealthCheckRequest::default()).await);
    }
    assert!(
        answers[..5].iter().all(Result::is_ok),
        "the burst: {answers:?}"
    );
    let refused = answers[5].as_ref().unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    assert!(
        refused.message().contains("from 127.0.0.1") && refused.message().contains("try again in"),
        "{refused}"
    );

    // Callers with a certificate are not limited.
    let reader = pki.issue(Role::Reader, "auditor");
    let channel = k3sfleet_pki::dial(
        &DialTarget::new(coordinator.addr.to_string()),
        pki.client_tls(Some(&reader)),
    )
    .await
    .unwrap();
    let mut admin =
        k3sfleet_proto::v1::admin_service_client::AdminServiceClient::new(channel.clone());
    for _ in 0..20 {
        admin
            .list_nodes(k3sfleet_proto::v1::ListNodesRequest::default())
            .await
            .unwrap();
    }

    // The bucket refills at the sustained rate.
    tokio::time::sleep(Duration::from_millis(600)).await;
    health
        .check(HealthCheckRequest::default())
        .await
        .expect("one call after half a second at 2 per second");
}

/// Polls `condition` (a quick blocking check) until it holds.
async fn eventually(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_ready_say_so_when_the_database_takes_no_writes() {
    use k3sfleet_tests::monitoring::http_get;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&dir.path().join("pki"));
    let coordinator =
        CoordinatorProcess::start(dir.path(), &pki, "[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let metrics: std::net::SocketAddr = {
        let path = coordinator.data_dir.join("metrics-address");
        wait_until("the metrics address", Duration::from_secs(10), || {
            path.exists()
        });
        std::fs::read_to_string(&path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let reader = pki.issue(Role::Reader, "auditor");
    let channel = k3sfleet_pki::dial(
        &DialTarget::new(coordinator.addr.to_string()),
        pki.client_tls(Some(&reader)),
    )
    .await
    .unwrap();
    let status = |service: &'static str| {
        let mut health = HealthClient::new(channel.clone());
        async move {
            health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .map(|answer| answer.into_inner().status())
        }
    };
    const AGENTS: &str = "k3sfleet.v1.AgentService";
    let ready = || http_get(metrics, "/ready").unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while status("").await.ok() != Some(ServingStatus::Serving) {
        assert!(tokio::time::Instant::now() < deadline, "never serving");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status(AGENTS).await.unwrap(), ServingStatus::Serving);
    assert_eq!(ready(), (200, "ready\n".to_string()));

    // Someone holds the database's write lock (an operator's sqlite3 left in
    // a transaction): nothing the coordinator must record can be recorded.
    let other = rusqlite::Connection::open(coordinator.data_dir.join("coordinator.db")).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    eventually("/ready to answer 503", Duration::from_secs(40), || {
        ready().0 == 503
    })
    .await;
    let (_, body) = ready();
    assert!(
        body.starts_with("not ready: the database does not take writes:")
            && body.contains("locked"),
        "{body}"
    );
    assert_eq!(status("").await.unwrap(), ServingStatus::NotServing);
    assert_eq!(status(AGENTS).await.unwrap(), ServingStatus::NotServing);

    other.execute_batch("ROLLBACK").unwrap();
    eventually(
        "/ready to answer 200 again",
        Duration::from_secs(40),
        || ready().0 == 200,
    )
    .await;
    assert_eq!(status("").await.unwrap(), ServingStatus::Serving);
    assert!(
        coordinator.daemon.log().contains("not ready"),
        "the coordinator did not log that it was not ready"
    );
}
