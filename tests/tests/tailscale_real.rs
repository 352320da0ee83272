//! Real Tailscale: Headscale on the coordinator's host, tailscaled on every
//! host, the real agent driving the real CLI (see tests/src/tailnet.rs).
//! They need root, /dev/net/tun and `scripts/build-testbed.sh tailscale
//! headscale`, and are recorded as skipped otherwise.

use std::time::{Duration, Instant};

use k3sfleet_tests::tailnet::{CmdlineWatch, LAB_SETTINGS, World};
use serde_json::Value;

fn lab_settings(_: &str) -> String {
    LAB_SETTINGS.to_string()
}

fn ips(state: &Value) -> Vec<String> {
    state["tailscaleIps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.as_str().map(str::to_string))
        .collect()
}

fn assert_absent(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!text.contains(secret), "an auth key is in {what}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn up_joins_under_the_requested_name_reports_real_facts_and_is_idempotent() {
    let Some(world) = World::start(lab_settings).await else {
        return;
    };
    let started = Instant::now();
    let server_key = world.key(false, &["tag:k3s", "tag:server"]);
    let worker_key = world.key(true, &["tag:k3s", "tag:worker"]);
    let user_key = world.key(false, &[]);
    let secrets = [
        server_key.key.as_str(),
        worker_key.key.as_str(),
        user_key.key.as_str(),
    ];
    let watch = CmdlineWatch::start(secrets.iter().map(|s| s.to_string()).collect());

    // A single-use tagged key, a reusable one for two hosts, an untagged one.
    let (ok, out) = world.up("server-1", &world.key_file("server", &server_key), &[]);
    assert!(ok, "{out}");
    assert!(out.contains("server-1: succeeded"), "{out}");
    assert!(out.contains("joined with the auth key"), "{out}");
    let worker_file = world.key_file("worker", &worker_key);
    let (ok, out) = world.up("worker-01", &worker_file, &["--hostname", "w01-tailnet"]);
    assert!(ok, "{out}");
    let coordinator_ip = world
        .tailnet
        .enroll_directly("coordinator", &worker_key)
        .unwrap();
    let (ok, out) = world.up("worker-02", &world.key_file("user", &user_key), &[]);
    assert!(ok, "{out}");
    let (samples, leaks) = watch.finish();
    eprintln!("sampled every process's cmdline and environ {samples} times during enrollment");
    assert!(samples > 10, "the watch sampled only {samples} times");
    assert!(leaks.is_empty(), "an auth key was visible: {leaks:#?}");

    // Headscale has them under the requested names, with the keys' tags.
    let nodes = world.tailnet.headscale.nodes().unwrap();
    eprintln!("headscale nodes list: {nodes:#?}");
    let server = world.tailnet.headscale.node("server-1").unwrap().unwrap();
    assert_eq!(server.tags, ["tag:k3s", "tag:server"]);
    let w01 = world
        .tailnet
        .headscale
        .node("w01-tailnet")
        .unwrap()
        .unwrap();
    assert_eq!(w01.tags, ["tag:k3s", "tag:worker"]);
    assert!(
        world
            .tailnet
            .headscale
            .node("worker-02")
            .unwrap()
            .unwrap()
            .tags
            .is_empty()
    );
    assert_eq!(
        nodes.len(),
        4,
        "server, two workers, the coordinator's host"
    );

    // The next report and `node show` carry the real status facts.
    let state =
        world.wait_for_tailscale("server-1", "Running", |ts| ts["backendState"] == "Running");
    assert_eq!(state["hostname"], "server-1");
    assert_eq!(state["dnsName"], "server-1.fleet.test");
    assert_eq!(state["tags"], serde_json::json!(["tag:k3s", "tag:server"]));
    assert_eq!(ips(&state), server.ip_addresses);
    assert!(
        state.get("keyExpiryUnixMs").is_none(),
        "tagged nodes do not expire: {state}"
    );
    let user_node =
        world.wait_for_tailscale("worker-02", "Running", |ts| ts["backendState"] == "Running");
    let expiry: i64 = user_node["keyExpiryUnixMs"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let days = (expiry - now_ms) / 86_400_000;
    assert!(
        (88..=90).contains(&days),
        "Headscale's node.expiry is 90d, the report says {days} days"
    );
    let shown = world.lab.cli_ok(&["node", "show", "worker-02"]).unwrap();
    eprintln!("{shown}");
    assert!(shown.contains("worker-02.fleet.test"), "{shown}");
    assert!(shown.contains("key:       expires"), "{shown}");
    assert!(
        shown.contains(&format!("Running {}", ips(&user_node).join(" "))),
        "{shown}"
    );

    // /metrics shows them.
    let metrics = world.agent_metrics("server-1");
    let info = metrics
        .lines()
        .find(|l| l.starts_with("k3sfleet_tailscale_info{"))
        .unwrap_or_else(|| panic!("no k3sfleet_tailscale_info in\n{metrics}"));
    assert!(info.contains(r#"dns_name="server-1.fleet.test""#), "{info}");
    assert!(info.contains(&server.ip_addresses[0]), "{info}");
    assert!(info.contains(r#"version="1.98.10""#), "{info}");
    assert!(
        metrics.contains("k3sfleet_tailscale_backend_state{state=\"Running\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("k3sfleet_tailscale_online 1"), "{metrics}");

    // The same settings again change nothing, and say so.
    let (ok, out) = world.up(
        "server-1",
        &world.key_file("server-again", &server_key),
        &[],
    );
    assert!(ok, "{out}");
    assert!(out.contains("server-1: no-op"), "{out}");
    assert!(out.contains("nothing changed"), "{out}");
    let again = world.tailnet.headscale.node("server-1").unwrap().unwrap();
    assert_eq!(again.id, server.id, "still the same node");
    // Changed settings are applied, in place (the single-use key is spent).
    let (ok, out) = world.up(
        "server-1",
        &world.key_file("server-shields", &server_key),
        &["--extra-flag=--shields-up"],
    );
    assert!(ok, "{out}");
    assert!(out.contains("settings changed in place"), "{out}");
    assert_eq!(world.prefs("server-1")["ShieldsUp"], true);
    // Leaving the flag out turns it off again (`up` takes the full set).
    let (ok, out) = world.up(
        "server-1",
        &world.key_file("server-plain", &server_key),
        &[],
    );
    assert!(ok, "{out}");
    assert_eq!(world.prefs("server-1")["ShieldsUp"], false);
    assert_eq!(world.tailnet.headscale.nodes().unwrap().len(), 4);

    // Hosts reach each other over their tailnet addresses, and the CLI on a
    // node reaches the coordinator at the coordinator's tailnet address.
    let route = std::process::Command::new("ip")
        .args([
            "-n",
            &world.lab.hosts[1].netns.as_ref().unwrap().netns,
            "route",
            "get",
            &coordinator_ip,
        ])
        .output()
        .unwrap();
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(
        route.contains("dev tailscale0"),
        "not over the tailnet: {route}"
    );
    for (from, to) in [
        ("worker-01", coordinator_ip.as_str()),
        ("worker-02", server.ip_addresses[0].as_str()),
    ] {
        let took = world
            .tailnet
            .ping(from, to, Duration::from_secs(60))
            .unwrap();
        eprintln!(
            "{from} -> {to}: first pong after {:.1}s",
            took.as_secs_f64()
        );
    }
    let reach = Instant::now();
    let mut attempts = 0;
    let listed = loop {
        attempts += 1;
        let output = world
            .cli_on("worker-01", &format!("{coordinator_ip}:7443"))
            .args(["nodes"])
            .output()
            .unwrap();
        if output.status.success() {
            break String::from_utf8_lossy(&output.stdout).into_owned();
        }
        let status = world
            .tailnet
            .daemon("worker-01")
            .cli()
            .args(["status"])
            .output()
            .unwrap();
        assert!(
            reach.elapsed() < Duration::from_secs(60),
            "k3sfleet nodes over the tailnet: {}\nworker-01's tailscale status:\n{}",
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&status.stdout)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        listed.contains("server-1") && listed.contains("worker-02"),
        "{listed}"
    );
    eprintln!(
        "k3sfleet nodes from worker-01 via {coordinator_ip} (over tailscale0): {attempts} attempt(s), {:.2}s",
        reach.elapsed().as_secs_f64()
    );
    let server_ip = server.ip_addresses[0].clone();
    let hosts = &world.lab.hosts;
    let listener = hosts[0]
        .netns
        .as_ref()
        .unwrap()
        .inside(|| std::net::TcpListener::bind((server_ip.as_str(), 7777)))
        .unwrap()
        .unwrap();
    let address: std::net::SocketAddr = format!("{server_ip}:7777").parse().unwrap();
    hosts[2].netns.as_ref().unwrap().connect(address).unwrap();
    drop(listener);

    // The keys are nowhere: logs, reports, audit, metrics.
    let audit = world.lab.cli_ok(&["audit", "-o", "json"]).unwrap();
    let up_entry = audit
        .lines()
        .find(|l| l.contains("tailscale-up hostname=w01-tailnet"))
        .unwrap_or_else(|| panic!("no audit entry for worker-01's up:\n{audit}"));
    assert!(
        up_entry.contains("tags= login_server=http://10.77.0.1:8080 flags=--accept-dns=false"),
        "{up_entry}"
    );
    assert_absent("the audit log", &audit, &secrets);
    assert_absent("the logs", &world.k3sfleet_logs(), &secrets);
    for node in world.node_names() {
        assert_absent("a report", &world.node(&node).to_string(), &secrets);
        assert_absent("the metrics", &world.agent_metrics(&node), &secrets);
    }
    let agent_dirs = world.lab.dir.join("hosts");
    let leftovers: Vec<_> = std::fs::read_dir(&agent_dirs)
        .unwrap()
        .flatten()
        .flat_map(|h| {
            std::fs::read_dir(h.path().join("state/secrets"))
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|e| e.path())
        .collect();
    assert!(leftovers.is_empty(), "key files left: {leftovers:?}");
    eprintln!(
        "enrollment, facts, idempotency and reachability: {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn used_and_expired_keys_and_unsafe_flags_are_refused_leaving_nothing_half_done() {
    let Some(mut world) = World::start(lab_settings).await else {
        return;
    };
    let single = world.key(false, &["tag:k3s"]);
    let file = world.key_file("single", &single);
    let (ok, out) = world.up("worker-01", &file, &[]);
    assert!(ok, "{out}");

    // The used single-use key on another host.
    let registers_before = registers(&world);
    let (ok, out) = world.up("worker-02", &file, &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("worker-02: failed: tailscale up for worker-02 failed: the control server refused it: authkey already used"),
        "{out}"
    );
    assert!(out.contains("settings are as they were"), "{out}");
    assert_nothing_half_done(&world, "worker-02", registers_before);

    // An expired one.
    let expired = world.key(true, &["tag:k3s"]);
    world.tailnet.headscale.expire_key(&expired).unwrap();
    let registers_before = registers(&world);
    let (ok, out) = world.up("worker-02", &world.key_file("expired", &expired), &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("worker-02: failed") && out.contains("expired"),
        "{out}"
    );
    assert_nothing_half_done(&world, "worker-02", registers_before);

    // Tags requested beside a Headscale key that carries them: refused by
    // Headscale, named, undone.
    let fresh = world.key(false, &["tag:k3s"]);
    let (ok, out) = world.up(
        "worker-02",
        &world.key_file("fresh", &fresh),
        &["--tag", "tag:k3s"],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("requested tags"), "{out}");
    assert_eq!(world.prefs("worker-02")["ControlURL"], "");

    // Unsafe flags and plain http need the agent's config.
    let good = world.key(true, &["tag:k3s"]);
    let good_file = world.key_file("good", &good);
    let (ok, out) = world.up("worker-02", &good_file, &["--extra-flag=--ssh"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("worker-02: rejected") && out.contains("--ssh is refused"),
        "{out}"
    );
    let (ok, out) = world.up(
        "worker-02",
        &good_file,
        &["--extra-flag=--exit-node=100.64.0.1"],
    );
    assert!(!ok && out.contains("--exit-node is refused"), "{out}");
    world.reconfigure("worker-02", "up_timeout = \"20s\"\n");
    let (ok, out) = world.up("worker-02", &good_file, &[]);
    assert!(!ok && out.contains("allow_http_login_server"), "{out}");
    let open = format!("{LAB_SETTINGS}allow_flags = [\"--ssh\"]\n");
    world.reconfigure("worker-02", &open);
    let (ok, out) = world.up("worker-02", &good_file, &["--extra-flag=--ssh"]);
    assert!(ok, "{out}");
    assert_eq!(world.prefs("worker-02")["RunSSH"], true);
    let audit = world
        .lab
        .cli_ok(&["audit", "--node", "worker-02", "-o", "json"])
        .unwrap();
    assert!(audit.contains("flags=--accept-dns=false --ssh"), "{audit}");
    assert_absent(
        "the audit log",
        &audit,
        &[&single.key, &expired.key, &fresh.key, &good.key],
    );
    assert_absent(
        "the logs",
        &world.k3sfleet_logs(),
        &[&single.key, &expired.key, &fresh.key, &good.key],
    );
}

/// Registration requests Headscale has logged so far.
fn registers(world: &World) -> usize {
    world
        .tailnet
        .headscale
        .log_text()
        .matches("/machine/register")
        .count()
}

/// After a refused `up`: the node is not in Headscale, its tailscaled has
/// its earlier settings, and it does not keep trying the key behind the
/// agent's back.
fn assert_nothing_half_done(world: &World, host: &str, registers_before: usize) {
    assert!(world.tailnet.headscale.node(host).unwrap().is_none());
    let prefs = world.prefs(host);
    assert_eq!(prefs["ControlURL"], "", "{prefs}");
    assert_eq!(prefs["WantRunning"], false, "{prefs}");
    assert_eq!(prefs["Hostname"], "", "{prefs}");
    // A request tailscaled had already sent when the agent undid the up
    // lands (and is logged) a moment later; what must not come is another.
    std::thread::sleep(Duration::from_secs(2));
    let after_undo = registers(world);
    std::thread::sleep(Duration::from_secs(8));
    let later = registers(world);
    eprintln!(
        "{host}: {} register requests during the refused up and the 2 s after, {} in the 8 s after that",
        after_undo - registers_before,
        later - after_undo
    );
    assert_eq!(
        later, after_undo,
        "tailscaled kept retrying the refused key"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn headscale_down_during_enrollment_is_retryable_and_later_is_reported_without_flapping() {
    let settings = |_: &str| "allow_http_login_server = true\nup_timeout = \"8s\"\n".to_string();
    let Some(mut world) = World::start(settings).await else {
        return;
    };
    let key = world.key(false, &["tag:k3s"]);
    let file = world.key_file("key", &key);
    world.tailnet.headscale.stop();
    let (ok, out) = world.up("worker-01", &file, &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("worker-01: failed"), "{out}");
    assert!(out.contains("connection refused"), "{out}");
    assert!(
        out.contains("retry once the control server answers"),
        "{out}"
    );
    assert_eq!(world.prefs("worker-01")["WantRunning"], false);
    world.tailnet.headscale.resume().unwrap();
    // The single-use key was never spent: the retry joins with it.
    let (ok, out) = world.up("worker-01", &file, &[]);
    assert!(ok, "{out}");
    let state = world.wait_for_tailscale("worker-01", "online", |ts| ts["online"] == true);
    assert_eq!(state["backendState"], "Running");
    let healthy_message = world.check("worker-01")["message"].clone();

    // Down later: the node says so at once, steadily, and keeps running.
    world.tailnet.headscale.stop();
    let went = Instant::now();
    world.wait_for_tailscale("worker-01", "offline", |ts| ts["online"] != true);
    eprintln!(
        "the report showed the control server gone after {:.1}s",
        went.elapsed().as_secs_f64()
    );
    let mut seen = Vec::new();
    let watch_until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < watch_until {
        let check = world.check("worker-01");
        seen.push((
            check["status"].as_str().unwrap_or("").to_string(),
            check["message"].as_str().unwrap_or("").to_string(),
        ));
        world.lab.host("worker-01").agent.check_running().unwrap();
        std::thread::sleep(Duration::from_millis(500));
    }
    let states: std::collections::BTreeSet<_> = seen.iter().collect();
    assert_eq!(
        states.len(),
        1,
        "the check changed while Headscale was down: {states:?}"
    );
    let (status, message) = &seen[0];
    assert_eq!(status, "HEALTH_WARNING");
    assert!(
        message.contains("not connected to its control server"),
        "{message}"
    );
    let nodes = world.lab.cli_ok(&["nodes", "-o", "json"]).unwrap();
    assert!(nodes.contains("CONNECTIVITY_CONNECTED"), "{nodes}");
    world.tailnet.headscale.resume().unwrap();
    let back = Instant::now();
    world.wait_for_tailscale("worker-01", "online again", |ts| ts["online"] == true);
    eprintln!(
        "back online {:.1}s after Headscale returned",
        back.elapsed().as_secs_f64()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while world.check("worker-01")["message"] != healthy_message {
        assert!(
            Instant::now() < deadline,
            "the check did not recover: {}",
            world.check("worker-01")
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_with_enrollment_configured_joins_at_start_and_once() {
    let Some(mut world) = World::start(lab_settings).await else {
        return;
    };
    let key = world.key(false, &["tag:k3s", "tag:worker"]);
    let file = world.key_file("enroll", &key);
    let settings = format!(
        "{LAB_SETTINGS}\n[host.tailscale.enroll]\nauth_key_file = {:?}\nlogin_server = {:?}\nflags = [\"--accept-dns=false\"]\n",
        file.display().to_string(),
        world.tailnet.headscale.url()
    );
    world.reconfigure("worker-02", &settings);
    let state =
        world.wait_for_tailscale("worker-02", "Running", |ts| ts["backendState"] == "Running");
    assert_eq!(state["hostname"], "worker-02");
    let node = world.tailnet.headscale.node("worker-02").unwrap().unwrap();
    assert_eq!(node.tags, ["tag:k3s", "tag:worker"]);
    // A restart with the same config (and the key now spent) changes nothing.
    world.lab.host("worker-02").restart_agent().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !world
        .lab
        .host("worker-02")
        .agent
        .log_text()
        .contains("nothing changed")
    {
        assert!(
            Instant::now() < deadline,
            "no second enrollment result:\n{}",
            world.lab.host("worker-02").agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(world.tailnet.headscale.nodes().unwrap().len(), 1);
    assert_absent("the logs", &world.k3sfleet_logs(), &[&key.key]);
}
