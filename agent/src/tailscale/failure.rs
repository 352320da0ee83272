//! Why a `tailscale up` failed, told apart as the CLI and tailscaled tell
//! it: the control server answered and refused (a used, expired or wrong
//! key; tags it does not allow), or it was not reached in time (down,
//! unreachable), which is worth retrying.

use k3sfleet_proto::v1::TailscaleState;

use crate::host::{ToolError, ToolOutput};

/// What the CLI prints when the backend reports an error (cmd/tailscale up.go).
const BACKEND_ERROR: &str = "backend error:";
/// What it prints when `--timeout` passes before the Running state.
const TIMED_OUT: &str = "timeout waiting for Tailscale service";
/// tailscaled's health message carrying the last login error.
const LAST_LOGIN_ERROR: &str = "The last login error was:";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: String,
    pub retryable: bool,
}

/// From how `up` ended and the node's state right after (before anything
/// was undone).
pub fn classify(ran: &Result<ToolOutput, ToolError>, state: &TailscaleState) -> Failure {
    let login_error = state.health.iter().find_map(|h| {
        h.split_once(LAST_LOGIN_ERROR)
            .map(|(_, e)| e.trim().to_string())
    });
    match ran {
        Ok(output) => {
            let text = format!("{}\n{}", output.stderr, output.stdout);
            if let Some(line) = text.lines().find(|l| l.contains(BACKEND_ERROR)) {
                let refused = line.split_once(BACKEND_ERROR).map_or(line, |(_, r)| r);
                return Failure {
                    reason: format!("the control server refused it: {}", refused.trim()),
                    retryable: false,
                };
            }
            if text.contains(TIMED_OUT) {
                return unreached(login_error);
            }
            Failure {
                reason: output.last_words(),
                retryable: false,
            }
        }
        Err(ToolError::TimedOut { .. }) => unreached(login_error),
        Err(err) => Failure {
            reason: crate::session::display_error(err),
            retryable: false,
        },
    }
}

fn unreached(login_error: Option<String>) -> Failure {
    Failure {
        reason: format!(
            "the node did not reach the Running state in time ({})",
            login_error.unwrap_or_else(|| "no answer from the control server".into())
        ),
        retryable: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(stderr: &str) -> Result<ToolOutput, ToolError> {
        Ok(ToolOutput {
            code: Some(1),
            stdout: String::new(),
            stderr: stderr.into(),
        })
    }

    #[test]
    fn a_refusal_is_final_an_unreached_server_is_worth_retrying() {
        let state = TailscaleState {
            health: vec!["You are logged out. The last login error was: fetch control key: dial tcp 10.77.0.1:8080: connect: connection refused".into()],
            ..Default::default()
        };
        let refused = classify(&output("backend error: authkey already used\n"), &state);
        assert_eq!(
            refused.reason,
            "the control server refused it: authkey already used"
        );
        assert!(!refused.retryable);
        let down = classify(
            &output("timeout waiting for Tailscale service to enter a Running state; check health"),
            &state,
        );
        assert!(down.retryable);
        assert!(
            down.reason.contains("connection refused"),
            "{}",
            down.reason
        );
        let other = classify(
            &output("can't change --login-server without --force-reauth"),
            &TailscaleState::default(),
        );
        assert!(!other.retryable);
        assert!(other.reason.contains("--force-reauth"));
    }
}
