//! Printing for people (aligned tables) and for programs (JSON).

use std::time::Duration;

use k3sfleet_proto::v1::{Connectivity, Health, NodeRole};

/// How a listing is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    Table,
    /// The k3sfleet.v1 response message in proto3 JSON form.
    Json,
}

/// Prints rows as left-aligned columns separated by three spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}   "));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// "4s", "3m", "2h", "5d": the coarse age kubectl prints.
pub fn age(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0..120 => format!("{secs}s"),
        120..7200 => format!("{}m", secs / 60),
        7200..172_800 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

pub fn role(role: i32) -> &'static str {
    match NodeRole::try_from(role).unwrap_or(NodeRole::Unspecified) {
        NodeRole::Server => "server",
        NodeRole::Agent => "agent",
        NodeRole::Unspecified => "unknown",
    }
}

pub fn connectivity(value: i32) -> &'static str {
    match Connectivity::try_from(value).unwrap_or(Connectivity::Unspecified) {
        Connectivity::Connected => "yes",
        Connectivity::Unreachable => "unreachable",
        Connectivity::Disconnected => "no",
        Connectivity::Unspecified => "unknown",
    }
}

pub fn health(value: i32) -> &'static str {
    match Health::try_from(value).unwrap_or(Health::Unspecified) {
        Health::Ok => "ok",
        Health::Warning => "warning",
        Health::Error => "error",
        Health::Unspecified => "unknown",
    }
}

/// Prints a message as pretty proto3 JSON.
pub fn json<T: serde::Serialize>(message: &T) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(message)? + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let text = table(
            &["NAME", "ROLE"],
            &[
                vec!["server-1".into(), "server".into()],
                vec!["w".into(), "agent".into()],
            ],
        );
        assert_eq!(
            text,
            "NAME       ROLE\nserver-1   server\nw          agent\n"
        );
    }

    #[test]
    fn ages_are_coarse() {
        assert_eq!(age(Duration::from_secs(4)), "4s");
        assert_eq!(age(Duration::from_secs(119)), "119s");
        assert_eq!(age(Duration::from_secs(180)), "3m");
        assert_eq!(age(Duration::from_secs(3 * 3600)), "3h");
        assert_eq!(age(Duration::from_secs(5 * 86_400)), "5d");
    }
}
