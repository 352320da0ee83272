//! Which extra `tailscale up` flags a request may carry.
//!
//! A coordinator (or whoever holds an admin certificate) must not be able to
//! open a host through its enrollment: SSH into it, route other hosts'
//! traffic through it, or send its own traffic elsewhere. So extra flags are
//! an allow-list: the safe ones pass, the host's config may allow more, and
//! the flags the command sets itself (or that carry secrets) never pass.

/// Flags that change only how this host uses the tailnet.
const SAFE: [&str; 3] = ["--accept-routes", "--accept-dns", "--shields-up"];

/// Flags the command sets itself, that carry a secret, or that make `up`
/// interactive; allowing them in config is an error too.
const RESERVED: [&str; 16] = [
    "--auth-key",
    "--authkey",
    "--client-id",
    "--client-secret",
    "--id-token",
    "--audience",
    "--hostname",
    "--advertise-tags",
    "--login-server",
    "--reset",
    "--timeout",
    "--force-reauth",
    "--json",
    "--qr",
    "--qr-format",
    "--socket",
];

/// The name of `--name` or `--name=value`.
pub fn name(flag: &str) -> &str {
    flag.split_once('=').map_or(flag, |(name, _)| name)
}

fn well_formed(flag: &str) -> Result<(), String> {
    let name = name(flag);
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '-';
    if !name.starts_with("--") || name.len() < 3 || !name[2..].chars().all(plain) {
        return Err(format!(
            "invalid flag {flag:?}: expected --name or --name=value"
        ));
    }
    if flag.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("invalid flag {flag:?}: it contains whitespace"));
    }
    Ok(())
}

/// Whether the host's config may allow `flag` (a flag name).
pub fn allowable(flag: &str) -> Result<(), String> {
    well_formed(flag)?;
    if flag.contains('=') {
        return Err(format!(
            "{flag:?}: allow a flag by its name, without a value"
        ));
    }
    if RESERVED.contains(&flag) {
        return Err(format!(
            "{flag} cannot be allowed: the command sets it itself or it carries a secret"
        ));
    }
    Ok(())
}

/// Whether a request may carry `flag` on a host that allows `allowed` too.
pub fn check(flag: &str, allowed: &[String]) -> Result<(), String> {
    well_formed(flag)?;
    let name = name(flag);
    if RESERVED.contains(&name) {
        return Err(format!(
            "flag {name} is not allowed: the command sets it itself or it carries a secret"
        ));
    }
    if SAFE.contains(&name) || allowed.iter().any(|a| a == name) {
        return Ok(());
    }
    Err(format!(
        "flag {name} is refused: this host accepts {} (add it to host.tailscale.allow_flags in the agent's config to accept it)",
        accepted(allowed)
    ))
}

fn accepted(allowed: &[String]) -> String {
    let mut all: Vec<&str> = SAFE.to_vec();
    all.extend(allowed.iter().map(String::as_str));
    all.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_flags_pass_others_need_the_config() {
        check("--accept-routes", &[]).unwrap();
        check("--accept-dns=false", &[]).unwrap();
        for risky in [
            "--ssh",
            "--exit-node=100.64.0.9",
            "--advertise-exit-node",
            "--advertise-routes=10.0.0.0/8",
        ] {
            let err = check(risky, &[]).unwrap_err();
            assert!(err.contains("refused"), "{err}");
            assert!(err.contains("host.tailscale.allow_flags"), "{err}");
        }
        check("--ssh", &["--ssh".into()]).unwrap();
        check("--exit-node=x", &["--exit-node".into()]).unwrap();
        assert!(check("--exit-node=x", &["--ssh".into()]).is_err());
    }

    #[test]
    fn reserved_and_malformed_flags_never_pass() {
        for flag in [
            "--auth-key=x",
            "--authkey=x",
            "--client-secret=x",
            "--login-server=http://x",
            "--force-reauth",
        ] {
            let err = check(flag, &["--auth-key".into()]).unwrap_err();
            assert!(err.contains("not allowed"), "{err}");
        }
        for flag in ["ssh", "-ssh", "--", "--a b", "--x\n"] {
            assert!(check(flag, &[flag.to_string()]).is_err(), "{flag:?}");
        }
        assert!(allowable("--auth-key").is_err());
        assert!(allowable("--ssh=true").is_err());
        allowable("--ssh").unwrap();
    }
}
