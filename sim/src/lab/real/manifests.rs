//! The scenario as YAML manifest files, as the real tier applies them with
//! kubectl and as sim/manifests/<scenario>/ holds them.

use std::path::Path;

use k3sfleet_kubesim::Scenario;
use k3sfleet_kubesim::scenario::manifests;

/// The scenario's manifests as YAML files in `dir`, numbered in apply order.
pub fn write_manifests(dir: &Path, scenario: &Scenario) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (index, (stem, objects)) in manifests::render(scenario).files.iter().enumerate() {
        let path = dir.join(format!("{:02}-{stem}.yaml", index + 1));
        let yaml = render_yaml(objects)?;
        let text = if yaml.is_empty() {
            String::new()
        } else {
            format!(
                "# Rendered from the scenario (sim/src/lab/real: write_manifests); do not edit.\n{yaml}"
            )
        };
        std::fs::write(&path, text)?;
    }
    Ok(())
}

/// Objects as one multi-document YAML file.
pub fn render_yaml(objects: &[serde_json::Value]) -> anyhow::Result<String> {
    if objects.is_empty() {
        return Ok(String::new());
    }
    Ok(serde_saphyr::to_string_multiple(objects)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::{DEMO_SCENARIO, SMALL_SCENARIO};

    /// sim/manifests/<scenario>/ holds what the real tier applies for the
    /// demo and small scenarios, rendered from the scenario files (their one
    /// source): `K3SFLEET_UPDATE_MANIFESTS=1 cargo test -p k3sfleet-sim
    /// committed_manifests` rewrites them after a scenario changes.
    #[test]
    fn the_committed_manifests_are_rendered_from_the_scenarios() {
        for (name, toml) in [("demo", DEMO_SCENARIO), ("small", SMALL_SCENARIO)] {
            let scenario = Scenario::from_toml(toml, name).unwrap();
            let committed = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("manifests")
                .join(name);
            if std::env::var_os("K3SFLEET_UPDATE_MANIFESTS").is_some() {
                let _ = std::fs::remove_dir_all(&committed);
                write_manifests(&committed, &scenario).unwrap();
            }
            let rendered = tempfile::tempdir().unwrap();
            write_manifests(rendered.path(), &scenario).unwrap();
            let mut files: Vec<_> = std::fs::read_dir(rendered.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            files.sort();
            assert!(!files.is_empty());
            for file in files {
                let want = std::fs::read_to_string(rendered.path().join(&file)).unwrap();
                let have = std::fs::read_to_string(committed.join(&file)).unwrap_or_default();
                assert!(
                    want == have,
                    "sim/manifests/{name}/{} differs from its scenario: \
                     K3SFLEET_UPDATE_MANIFESTS=1 cargo test -p k3sfleet-sim committed_manifests",
                    file.to_string_lossy()
                );
            }
        }
    }
}
