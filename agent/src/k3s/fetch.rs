//! Where K3s release artifacts come from: a mirror laid out like GitHub
//! releases (`<base>/<version>/<asset>`), a directory on the host laid out the
//! same way, or the coordinator over the agent's mTLS channel.
//!
//! Each source yields the artifact as a sequence of chunks, so the binary is
//! hashed and written while it streams and never held in memory whole.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use k3sfleet_proto::v1::agent_service_client::AgentServiceClient;
use k3sfleet_proto::v1::{ArtifactChunk, FetchArtifactRequest};
use tokio::io::AsyncReadExt;

use crate::config::AgentConfig;
use crate::session::{SessionError, dial_coordinator};

/// Read size for artifacts from a local directory.
const FILE_CHUNK: usize = 256 * 1024;

/// A resolved artifact source.
#[derive(Clone)]
pub enum Source {
    Mirror {
        base: String,
        client: reqwest::Client,
    },
    LocalDir(PathBuf),
    Coordinator(Arc<AgentConfig>),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot download {url}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}")]
    HttpStatus { url: String, status: u16 },
    #[error("cannot read {path}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach the coordinator for {name}")]
    Dial {
        name: String,
        #[source]
        source: SessionError,
    },
    #[error("the coordinator cannot stream {name}: {message}")]
    Coordinator {
        name: String,
        message: String,
        code: tonic::Code,
    },
    #[error("no data for {name} from {source_name} in {}; gave up", humantime::format_duration(*after))]
    Stalled {
        name: String,
        source_name: String,
        after: Duration,
    },
    #[error("{name} is larger than {limit} bytes; refusing it")]
    TooLarge { name: String, limit: u64 },
    #[error("refusing {path}: {reason}")]
    Untrusted { path: PathBuf, reason: String },
}

impl FetchError {
    /// A network or server hiccup that a later try may not meet.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Http { .. } | FetchError::Dial { .. } | FetchError::Stalled { .. } => true,
            FetchError::HttpStatus { status, .. } => *status == 429 || *status >= 500,
            // Refusals (no such artifact, not allowed) stay refusals; the
            // rest is the channel failing under the stream.
            FetchError::Coordinator { code, .. } => !matches!(
                code,
                tonic::Code::NotFound
                    | tonic::Code::InvalidArgument
                    | tonic::Code::PermissionDenied
                    | tonic::Code::Unauthenticated
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::OutOfRange
                    | tonic::Code::Unimplemented
            ),
            FetchError::File { .. }
            | FetchError::TooLarge { .. }
            | FetchError::Untrusted { .. } => false,
        }
    }
}

impl Source {
    pub fn describe(&self) -> String {
        match self {
            Source::Mirror { base, .. } => format!("mirror {base}"),
            Source::LocalDir(dir) => format!("local directory {}", dir.display()),
            Source::Coordinator(_) => "the coordinator".to_string(),
        }
    }

    /// Starts fetching `<version>/<name>`.
    pub async fn open(&self, version: &str, name: &str) -> Result<ArtifactReader, FetchError> {
        let body = match self {
            Source::Mirror { base, client } => {
                let url = format!("{}/{version}/{name}", base.trim_end_matches('/'));
                let response =
                    client
                        .get(&url)
                        .send()
                        .await
                        .map_err(|source| FetchError::Http {
                            url: url.clone(),
                            source,
                        })?;
                if !response.status().is_success() {
                    return Err(FetchError::HttpStatus {
                        url,
                        status: response.status().as_u16(),
                    });
                }
                Body::Http { url, response }
            }
            Source::LocalDir(dir) => {
                let path = dir.join(version).join(name);
                let file =
                    tokio::fs::File::open(&path)
                        .await
                        .map_err(|source| FetchError::File {
                            path: path.clone(),
                            source,
                        })?;
                // The source directory was checked when the command arrived;
                // the opened file and the directories above it are checked here.
                let meta = file.metadata().await.map_err(|source| FetchError::File {
                    path: path.clone(),
                    source,
                })?;
                super::trust::check_opened_file(&path, &meta).map_err(|reason| {
                    FetchError::Untrusted {
                        path: path.clone(),
                        reason,
                    }
                })?;
                Body::File { path, file }
            }
            Source::Coordinator(config) => {
                let channel =
                    dial_coordinator(config)
                        .await
                        .map_err(|source| FetchError::Dial {
                            name: name.to_string(),
                            source,
                        })?;
                let stream = AgentServiceClient::new(channel)
                    .fetch_artifact(FetchArtifactRequest {
                        version: version.to_string(),
                        name: name.to_string(),
                    })
                    .await
                    .map_err(|status| FetchError::Coordinator {
                        name: name.to_string(),
                        message: status.message().to_string(),
                        code: status.code(),
                    })?
                    .into_inner();
                Body::Grpc(stream)
            }
        };
        Ok(ArtifactReader {
            name: name.to_string(),
            source_name: self.describe(),
            body,
        })
    }
}

enum Body {
    Http {
        url: String,
        response: reqwest::Response,
    },
    File {
        path: PathBuf,
        file: tokio::fs::File,
    },
    Grpc(tonic::Streaming<ArtifactChunk>),
}

/// One artifact being fetched.
pub struct ArtifactReader {
    name: String,
    source_name: String,
    body: Body,
}

impl ArtifactReader {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next chunk, `None` at the end. Fails if nothing arrives within `stall`.
    pub async fn next_chunk(&mut self, stall: Duration) -> Result<Option<Bytes>, FetchError> {
        let name = self.name.clone();
        let source_name = self.source_name.clone();
        let read = async {
            match &mut self.body {
                Body::Http { url, response } => {
                    response.chunk().await.map_err(|source| FetchError::Http {
                        url: url.clone(),
                        source,
                    })
                }
                Body::File { path, file } => {
                    let mut buffer = vec![0; FILE_CHUNK];
                    let read = file
                        .read(&mut buffer)
                        .await
                        .map_err(|source| FetchError::File {
                            path: path.clone(),
                            source,
                        })?;
                    buffer.truncate(read);
                    Ok((read > 0).then(|| Bytes::from(buffer)))
                }
                Body::Grpc(stream) => match stream.message().await {
                    Ok(chunk) => Ok(chunk.map(|c| Bytes::from(c.data))),
                    Err(status) => Err(FetchError::Coordinator {
                        name: name.clone(),
                        message: status.message().to_string(),
                        code: status.code(),
                    }),
                },
            }
        };
        tokio::time::timeout(stall, read)
            .await
            .map_err(|_| FetchError::Stalled {
                name,
                source_name,
                after: stall,
            })?
    }

    /// Reads a small artifact (a checksum file) whole, refusing more than `limit` bytes.
    pub async fn read_small(mut self, limit: u64, stall: Duration) -> Result<Vec<u8>, FetchError> {
        let mut data = Vec::new();
        while let Some(chunk) = self.next_chunk(stall).await? {
            data.extend_from_slice(&chunk);
            if data.len() as u64 > limit {
                return Err(FetchError::TooLarge {
                    name: self.name,
                    limit,
                });
            }
        }
        Ok(data)
    }
}

/// The HTTP client for mirrors: rustls with ring, the host's root
/// certificates plus `extra_ca` (a PEM file) when given.
pub fn mirror_client(
    extra_ca: Option<&Path>,
    connect_timeout: Duration,
    stall: Duration,
) -> Result<reqwest::Client, MirrorClientError> {
    let extra_roots = match extra_ca {
        Some(path) => {
            k3sfleet_pki::read_certificates(path).map_err(|source| MirrorClientError::ExtraCa {
                path: path.to_owned(),
                source,
            })?
        }
        None => Vec::new(),
    };
    let tls = k3sfleet_pki::platform_client_config(extra_roots).map_err(MirrorClientError::Tls)?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .user_agent(concat!("k3sfleet-agent/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(connect_timeout)
        .read_timeout(stall)
        .build()
        .map_err(MirrorClientError::Build)
}

#[derive(Debug, thiserror::Error)]
pub enum MirrorClientError {
    #[error("cannot read the mirror CA file {path}")]
    ExtraCa {
        path: PathBuf,
        #[source]
        source: k3sfleet_pki::FileError,
    },
    #[error("cannot set up TLS for mirrors")]
    Tls(#[source] rustls::Error),
    #[error("cannot set up the HTTP client for mirrors")]
    Build(#[source] reqwest::Error),
}
