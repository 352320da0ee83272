//! Joining the fleet with bootstrap tokens, certificate renewal and
//! revocation, and the threats they must withstand. Each threat is its own test.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use k3sfleet_pki::Role;
use k3sfleet_tests::process::{AgentHome, AgentSpec};
use k3sfleet_tests::{AgentProcess, Cli, CoordinatorProcess, TestPki, bin, wait_until};

const TIMEOUT: Duration = Duration::from_secs(30);

struct Site {
    dir: tempfile::TempDir,
    pki: TestPki,
    coordinator: CoordinatorProcess,
    admin: Cli,
}

fn site() -> Site {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&dir.path().join("pki"));
    let coordinator = CoordinatorProcess::start(dir.path(), &pki, "");
    let admin = Cli::new(&pki, coordinator.addr, pki.issue(Role::Admin, "alice"));
    Site {
        dir,
        pki,
        coordinator,
        admin,
    }
}

impl Site {
    /// `k3sfleet token create ...`; returns the path of a file holding the token.
    fn token(&self, args: &[&str]) -> std::path::PathBuf {
        let mut full = vec!["token", "create"];
        full.extend_from_slice(args);
        let token = self.admin.ok(&full);
        let path = self.dir.path().join(format!("token-{}", rand_suffix()));
        std::fs::write(&path, token.trim()).unwrap();
        path
    }

    fn agent_home(&self, name: &str) -> AgentHome {
        AgentHome::create(
            self.dir.path(),
            self.coordinator.addr,
            &AgentSpec::new(name, "agent"),
        )
    }

    /// `k3sfleet-agent enroll` for `home` with the token in `token_file`.
    fn enroll(&self, home: &AgentHome, token_file: &Path, fingerprint: &str) -> Output {
        Command::new(bin("k3sfleet-agent"))
            .args(["enroll", "--config"])
            .arg(&home.config)
            .arg("--token-file")
            .arg(token_file)
            .args(["--ca-fingerprint", fingerprint, "--name", &home.name])
            .output()
            .unwrap()
    }

    fn enroll_ok(&self, home: &AgentHome, token_file: &Path) {
        let output = self.enroll(home, token_file, &self.pki.fingerprint());
        assert!(
            output.status.success(),
            "enroll failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn connected(&self, name: &str) -> bool {
        self.admin
            .node(name)
            .is_some_and(|n| n["connectivity"] == "CONNECTIVITY_CONNECTED")
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

fn token_info(site: &Site, index: usize) -> serde_json::Value {
    let list: serde_json::Value =
        serde_json::from_str(&site.admin.ok(&["token", "list", "-o", "json"])).unwrap();
    list["tokens"][index].clone()
}

#[test]
fn an_agent_enrolls_with_a_token_and_joins_the_fleet() {
    use std::os::unix::fs::PermissionsExt;
    let site = site();
    let token = site.token(&[
        "--role",
        "agent",
        "--uses",
        "2",
        "--name-pattern",
        "worker-*",
    ]);
    let home = site.agent_home("worker-01");
    site.enroll_ok(&home, &token);
    assert_eq!(
        std::fs::metadata(&home.tls.key)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // Enrolling again while that certificate is live is refused: a leaked
    // token must not take over a node's identity (and its session).
    let cert_before = std::fs::read(&home.tls.cert).unwrap();
    let again = site.enroll(&home, &token, &site.pki.fingerprint());
    assert!(!again.status.success(), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("already holds a live certificate")
            && stderr(&again).contains("k3sfleet cert revoke worker-01 --role agent"),
        "{}",
        stderr(&again)
    );
    assert_eq!(
        std::fs::read(&home.tls.cert).unwrap(),
        cert_before,
        "the files changed"
    );
    assert_eq!(token_info(&site, 0)["usesLeft"], 1);
    assert_eq!(
        token_info(&site, 0)["enrolledNames"],
        serde_json::json!(["worker-01"])
    );

    let _agent = AgentProcess::spawn(home);
    wait_until("the enrolled agent to connect", TIMEOUT, || {
        site.connected("worker-01")
    });
    let certs = site.admin.ok(&["cert", "list"]);
    assert!(
        certs.contains("worker-01") && certs.contains("token:"),
        "{certs}"
    );
}

#[test]
fn a_used_up_token_cannot_be_replayed() {
    let site = site();
    let token = site.token(&["--role", "agent", "--uses", "1"]);
    site.enroll_ok(&site.agent_home("worker-01"), &token);
    let output = site.enroll(
        &site.agent_home("worker-02"),
        &token,
        &site.pki.fingerprint(),
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("used up (1 of 1 uses)"),
        "{}",
        stderr(&output)
    );
    assert!(!site.agent_home("worker-02").tls.cert.exists());
}

#[test]
fn an_expired_token_is_refused() {
    let site = site();
    let token = site.token(&["--role", "agent", "--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    let output = site.enroll(
        &site.agent_home("worker-01"),
        &token,
        &site.pki.fingerprint(),
    );
    assert!(!output.status.success());
    assert!(stderr(&output).contains("expired"), "{}", stderr(&output));
}

#[test]
fn an_agent_token_cannot_yield_an_admin_certificate() {
    let site = site();
    let token = site.token(&["--role", "agent", "--uses", "5"]);
    let output = Command::new(bin("k3sfleet"))
        .env("HOME", site.dir.path())
        .args([
            "--coordinator",
            &site.coordinator.addr.to_string(),
            "enroll",
            "--name",
            "mallory",
            "--role",
            "admin",
        ])
        .arg("--token-file")
        .arg(&token)
        .args(["--ca-fingerprint", &site.pki.fingerprint()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("grants the agent role, not admin"),
        "{}",
        stderr(&output)
    );
    assert!(
        !site
            .dir
            .path()
            .join(".config/k3sfleet/mallory.crt")
            .exists()
    );
    assert_eq!(
        token_info(&site, 0)["usesLeft"],
        5,
        "a refused enrollment uses nothing"
    );
}

#[test]
fn an_admin_enrolls_with_an_admin_token_and_can_list_the_fleet() {
    let site = site();
    let token = site.token(&["--role", "admin", "--cert-ttl", "2h"]);
    let home = site.dir.path().join("bob-home");
    let output = Command::new(bin("k3sfleet"))
        .env("HOME", &home)
        .args([
            "--coordinator",
            &site.coordinator.addr.to_string(),
            "enroll",
            "--name",
            "bob",
        ])
        .arg("--token-file")
        .arg(&token)
        .args(["--ca-fingerprint", &site.pki.fingerprint()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    // The written config file is all the CLI needs from now on.
    let listed = Command::new(bin("k3sfleet"))
        .env_clear()
        .env("HOME", &home)
        .args(["nodes"])
        .output()
        .unwrap();
    assert!(listed.status.success(), "{}", stderr(&listed));
    let renewed = Command::new(bin("k3sfleet"))
        .env_clear()
        .env("HOME", &home)
        .args(["cert", "renew"])
        .output()
        .unwrap();
    assert!(renewed.status.success(), "{}", stderr(&renewed));
}

#[test]
fn a_name_the_token_does_not_allow_is_refused() {
    let site = site();
    let token = site.token(&[
        "--role",
        "agent",
        "--uses",
        "3",
        "--name-pattern",
        "worker-*",
    ]);
    let output = site.enroll(
        &site.agent_home("server-1"),
        &token,
        &site.pki.fingerprint(),
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("only enrolls names matching \"worker-*\""),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_ca_fingerprint_mismatch_makes_the_agent_refuse_the_coordinator() {
    let site = site();
    let token = site.token(&["--role", "agent"]);
    let home = site.agent_home("worker-01");
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let output = site.enroll(&home, &token, &wrong);
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(
        text.contains(&wrong) && text.contains(&site.pki.fingerprint()),
        "{text}"
    );
    assert!(
        !home.tls.key.exists() && !home.tls.cert.exists(),
        "nothing written"
    );
    assert_eq!(
        token_info(&site, 0)["usesLeft"],
        1,
        "the token was never sent"
    );
}

#[test]
fn a_revoked_node_is_cut_off_and_needs_a_new_token() {
    let site = site();
    let token = site.token(&["--role", "agent", "--uses", "5"]);
    let home = site.agent_home("worker-01");
    site.enroll_ok(&home, &token);
    let mut agent = AgentProcess::spawn(home.clone());
    wait_until("worker-01 to connect", TIMEOUT, || {
        site.connected("worker-01")
    });

    let revoked = site.admin.ok(&["node", "revoke", "worker-01"]);
    assert!(revoked.contains("session was closed"), "{revoked}");
    wait_until("worker-01 to be cut off", Duration::from_secs(5), || {
        !site.connected("worker-01")
    });
    wait_until("the agent to be refused on reconnect", TIMEOUT, || {
        agent.daemon.log().contains("revoked")
    });
    assert!(!site.connected("worker-01"));

    // The old token still has uses, but not for a revoked name.
    let output = site.enroll(&home, &token, &site.pki.fingerprint());
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("needs a token created after the revocation"),
        "{}",
        stderr(&output)
    );

    let fresh = site.token(&["--role", "agent"]);
    site.enroll_ok(&home, &fresh);
    agent.restart();
    wait_until(
        "worker-01 to come back with its new certificate",
        TIMEOUT,
        || site.connected("worker-01"),
    );
}

#[test]
fn an_expired_certificate_is_refused() {
    let site = site();
    let short = site
        .pki
        .issue_valid_for(Role::Admin, "temp", Duration::from_secs(1));
    let cli = Cli::new(&site.pki, site.coordinator.addr, short);
    // Issued certificates are backdated for clock skew, never post-dated.
    std::thread::sleep(Duration::from_millis(2100));
    let output = cli.run(&["nodes"]);
    assert!(
        !output.status.success(),
        "an expired certificate was accepted"
    );
}

#[test]
fn certificates_renew_themselves_and_the_node_stays() {
    let site = site();
    let token = site.token(&["--role", "agent", "--cert-ttl", "6s"]);
    let home = site.agent_home("worker-01");
    site.enroll_ok(&home, &token);
    let first = std::fs::read(&home.tls.cert).unwrap();
    let _agent = AgentProcess::spawn(home.clone());
    wait_until("worker-01 to connect", TIMEOUT, || {
        site.connected("worker-01")
    });
    // The coordinator records the renewal before the agent has the answer and
    // writes it: the file on disk is what says the agent has renewed.
    wait_until("the certificate file to be replaced", TIMEOUT, || {
        std::fs::read(&home.tls.cert).unwrap() != first
    });
    assert!(
        site.admin
            .ok(&["cert", "list", "--name", "worker-01"])
            .contains("renewal"),
        "the coordinator lists the renewal"
    );
    // Past the first certificate's end the node is still there, on the new one.
    std::thread::sleep(Duration::from_secs(2));
    wait_until(
        "worker-01 connected on its renewed certificate",
        TIMEOUT,
        || site.connected("worker-01"),
    );
}

#[test]
fn an_enrolled_agent_cannot_impersonate_another_node() {
    let site = site();
    let token = site.token(&["--role", "agent", "--uses", "2"]);
    let home = site.agent_home("worker-a");
    site.enroll_ok(&home, &token);
    // Point worker-a's enrolled credentials at a config that claims to be worker-b.
    let text = std::fs::read_to_string(&home.config).unwrap();
    std::fs::write(&home.config, format!("node_name = \"worker-b\"\n{text}")).unwrap();
    let output = Command::new(bin("k3sfleet-agent"))
        .args(["run", "--config"])
        .arg(&home.config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("worker-b") && stderr(&output).contains("worker-a"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn the_server_certificate_is_replaced_without_a_restart() {
    let site = site();
    let before = server_certificate_serial(&site);
    let replacement = site
        .pki
        .ca
        .issue_server(&k3sfleet_pki::ServerCertRequest {
            sans: vec!["127.0.0.1".into()],
            validity: Duration::from_secs(3600),
        })
        .unwrap();
    let server = site.pki.server();
    // Key first, then certificate: the coordinator keeps the old pair until both match.
    k3sfleet_pki::write_private_file(&server.key, replacement.key_pem.as_deref().unwrap(), true)
        .unwrap();
    k3sfleet_pki::write_public_file(
        &server.cert,
        &site.pki.ca.chain_pem(&replacement.cert_pem),
        true,
    )
    .unwrap();
    wait_until("the new server certificate to be served", TIMEOUT, || {
        server_certificate_serial(&site) == replacement.serial
    });
    assert_ne!(before, replacement.serial);
    site.admin.ok(&["nodes"]);
}

/// The serial of the certificate the coordinator presents right now.
fn server_certificate_serial(site: &Site) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(site.coordinator.addr)
            .await
            .unwrap();
        let connector = tokio_rustls::TlsConnector::from(site.pki.client_tls(None));
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, cert) = X509Certificate::from_der(&leaf).unwrap();
        cert.raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    })
}

/// The K3s role of the certificate in PEM file `path`, as the coordinator
/// reads it.
fn bound_k3s_role(path: &Path) -> Option<k3sfleet_pki::K3sRole> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_file(path).unwrap();
    k3sfleet_pki::PeerIdentity::from_der(&der).unwrap().k3s_role
}

#[test]
fn the_k3s_role_is_the_certificates_and_a_hello_claiming_another_is_flagged() {
    let site = site();
    let home = site.agent_home("worker-01");

    // A token for K3s servers only does not enroll a host that runs a K3s
    // agent, and nothing is written.
    let servers_only = site.token(&["--role", "agent", "--k3s-role", "server"]);
    let refused = site.enroll(&home, &servers_only, &site.pki.fingerprint());
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("enrolls K3s servers only, not a K3s agent"),
        "{}",
        stderr(&refused)
    );
    assert!(!home.tls.cert.exists());
    assert!(
        site.admin
            .ok(&["token", "list"])
            .contains("agent (k3s server)"),
        "{}",
        site.admin.ok(&["token", "list"])
    );
    let admin_token =
        site.admin
            .run(&["token", "create", "--role", "admin", "--k3s-role", "server"]);
    assert!(!admin_token.status.success());
    assert!(
        stderr(&admin_token).contains("--k3s-role is for agent tokens only"),
        "{}",
        stderr(&admin_token)
    );

    // Enrolled: the certificate carries what the host's config says.
    site.enroll_ok(&home, &site.token(&["--role", "agent"]));
    assert_eq!(
        bound_k3s_role(&home.tls.cert),
        Some(k3sfleet_pki::K3sRole::Agent)
    );

    // The host then claims to be a server (the etcd quorum guard counts
    // servers): the certificate's role counts, and the claim is flagged.
    let config = std::fs::read_to_string(&home.config).unwrap();
    assert!(config.starts_with("role = \"agent\"\n"), "{config}");
    std::fs::write(
        &home.config,
        config.replacen("role = \"agent\"", "role = \"server\"", 1),
    )
    .unwrap();
    let _agent = AgentProcess::spawn(home);
    wait_until("worker-01 to connect", TIMEOUT, || {
        site.connected("worker-01")
    });
    let node = site.admin.node("worker-01").unwrap();
    assert_eq!(node["role"], "NODE_ROLE_AGENT", "{node:#}");
    assert_eq!(node["roleBound"], true, "{node:#}");
    let warning = node["identityWarning"].as_str().unwrap_or_default();
    assert!(
        warning.contains("says it is a K3s server but its certificate is bound to agent"),
        "{node:#}"
    );
    let table = site.admin.ok(&["nodes"]);
    assert!(
        table.contains("warning: worker-01: its hello says it is a K3s server"),
        "{table}"
    );
    let audit = site
        .admin
        .ok(&["audit", "--node", "worker-01", "-o", "json"]);
    assert!(audit.contains("hello.identity_conflict"), "{audit}");
}
