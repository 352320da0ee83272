//! Kubernetes API clients, from the coordinator's `[kubernetes]` config.
//!
//! Every client is built with kube's default retry layer off: it silently
//! retries 429 answers (up to 15 times, backing off to minutes), which would
//! hide refused evictions from the drain engine and stall it without a word.
//! Whoever retries decides so explicitly, with the reason visible.

use std::path::{Path, PathBuf};

use ::kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};

#[derive(Debug, thiserror::Error)]
pub enum KubeClientError {
    #[error("cannot read kubeconfig {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: KubeconfigError,
    },
    /// The YAML parser's message may quote the file, credentials included.
    #[error("kubeconfig {path} is not valid kubeconfig YAML")]
    Parse { path: PathBuf },
    #[error("kubeconfig {path}: cannot use {context}")]
    Context {
        path: PathBuf,
        /// "context \"x\"" or "its current context".
        context: String,
        #[source]
        source: KubeconfigError,
    },
    #[error("cannot build a Kubernetes client from kubeconfig {path}")]
    Client {
        path: PathBuf,
        #[source]
        source: ::kube::Error,
    },
}

/// A client for the cluster `kubeconfig` points at, through `context` (else
/// the file's current context), that never retries by itself.
pub async fn client(
    kubeconfig: &Path,
    context: Option<&str>,
) -> Result<::kube::Client, KubeClientError> {
    let path = kubeconfig.to_owned();
    let file = Kubeconfig::read_from(kubeconfig).map_err(|source| match source {
        KubeconfigError::Parse(_) => KubeClientError::Parse { path: path.clone() },
        source => KubeClientError::Read {
            path: path.clone(),
            source,
        },
    })?;
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = ::kube::Config::from_custom_kubeconfig(file, &options)
        .await
        .map_err(|source| KubeClientError::Context {
            path: path.clone(),
            context: match context {
                Some(name) => format!("context {name:?}"),
                None => "its current context".into(),
            },
            source,
        })?;
    without_retries(config).map_err(|source| KubeClientError::Client { path, source })
}

/// A client from `config` with kube's silent retries turned off.
pub fn without_retries(mut config: ::kube::Config) -> Result<::kube::Client, ::kube::Error> {
    config.default_retry = false;
    ::kube::Client::try_from(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECONFIG: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster:\n    server: http://127.0.0.1:1\ncontexts:\n- name: sim\n  context:\n    cluster: sim\n    user: sim\ncurrent-context: sim\nusers:\n- name: sim\n  user:\n    token: s3cret-token\n";

    #[tokio::test]
    async fn errors_name_the_file_and_context_and_never_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");

        let err = client(&path, None).await.err().unwrap().to_string();
        assert!(
            err.contains("kubeconfig") && err.contains(&path.display().to_string()),
            "{err}"
        );

        std::fs::write(&path, KUBECONFIG).unwrap();
        client(&path, None)
            .await
            .expect("the current context works");
        client(&path, Some("sim"))
            .await
            .expect("a named context works");
        let err = client(&path, Some("prod")).await.err().unwrap().to_string();
        assert!(err.contains("context \"prod\""), "{err}");

        std::fs::write(&path, "clusters: [\n  token: s3cret-token").unwrap();
        let err = client(&path, None).await.err().unwrap();
        let text = format!("{err}: {:?}", std::error::Error::source(&err));
        assert!(text.contains("not valid kubeconfig YAML"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }
}
