//! K3s release artifacts kept on the coordinator for hosts without internet
//! access, laid out like the release mirror: `<dir>/<version>/<asset>`.

use std::path::{Path, PathBuf};

use bytes_stream::chunks;
use k3sfleet_proto::v1::ArtifactChunk;

/// Chunk size for streaming: big enough to keep per-message overhead low,
/// well under gRPC's default 4 MiB message limit.
const CHUNK_SIZE: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("invalid artifact request {version:?}/{name:?}: {reason}")]
    Invalid {
        version: String,
        name: String,
        reason: &'static str,
    },
    #[error("no artifact {name} for {version} in {dir}")]
    NotFound {
        dir: PathBuf,
        version: String,
        name: String,
    },
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The one rule both sides of the protocol use for a version string.
pub use k3sfleet_proto::is_release_tag;

/// Whether `name` is a K3s release asset this coordinator serves.
pub fn is_servable_asset(name: &str) -> bool {
    matches!(name, "k3s" | "k3s-arm64" | "k3s-armhf" | "k3s-s390x")
        || name == k3sfleet_release::MANIFEST_NAME
        || name == k3sfleet_release::SIGNATURE_NAME
        || (name.starts_with("sha256sum-")
            && name.ends_with(".txt")
            && name["sha256sum-".len()..name.len() - 4]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric()))
}

/// The path of an artifact, refusing anything that could leave `dir`.
pub fn path_of(dir: &Path, version: &str, name: &str) -> Result<PathBuf, ArtifactError> {
    let invalid = |reason| ArtifactError::Invalid {
        version: version.to_string(),
        name: name.to_string(),
        reason,
    };
    if !is_release_tag(version) {
        return Err(invalid(
            "the version is not a K3s release tag like v1.31.5+k3s1",
        ));
    }
    if !is_servable_asset(name) {
        return Err(invalid(
            "the name is not a K3s binary, sha256sum-<arch>.txt or a signed release manifest",
        ));
    }
    Ok(dir.join(version).join(name))
}

/// Streams an artifact in chunks; the first chunk carries the total size.
pub async fn stream(
    dir: &Path,
    version: &str,
    name: &str,
) -> Result<
    impl futures::Stream<Item = std::io::Result<ArtifactChunk>> + Send + 'static,
    ArtifactError,
> {
    let path = path_of(dir, version, name)?;
    let file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(ArtifactError::NotFound {
                dir: dir.to_owned(),
                version: version.to_string(),
                name: name.to_string(),
            });
        }
        Err(source) => return Err(ArtifactError::Io { path, source }),
    };
    let total = file
        .metadata()
        .await
        .map_err(|source| ArtifactError::Io {
            path: path.clone(),
            source,
        })?
        .len();
    Ok(chunks(file, CHUNK_SIZE, total))
}

mod bytes_stream {
    //! A file as a stream of ArtifactChunks.
    use futures::Stream;
    use k3sfleet_proto::v1::ArtifactChunk;
    use tokio::io::AsyncReadExt;

    pub fn chunks(
        file: tokio::fs::File,
        size: usize,
        total: u64,
    ) -> impl Stream<Item = std::io::Result<ArtifactChunk>> + Send + 'static {
        futures::stream::unfold((file, true), move |(mut file, first)| async move {
            let mut buffer = vec![0u8; size];
            let mut filled = 0;
            // Fill whole chunks so the stream's shape does not depend on the page cache.
            while filled < size {
                match file.read(&mut buffer[filled..]).await {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(err) => return Some((Err(err), (file, false))),
                }
            }
            if filled == 0 && !first {
                return None;
            }
            buffer.truncate(filled);
            let chunk = ArtifactChunk {
                data: buffer,
                total_size: if first { total } else { 0 },
            };
            Some((Ok(chunk), (file, false)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_tags() {
        for good in ["v1.31.5+k3s1", "v1.32.0-rc1+k3s2", "v1.30.10+k3s12"] {
            assert!(is_release_tag(good), "{good}");
        }
        for bad in [
            "1.31.5+k3s1",
            "v1.31+k3s1",
            "v1.31.5",
            "v1.31.5+k3s",
            "v1.31.5+k3s1/../x",
            "v../../etc+k3s1",
        ] {
            assert!(!is_release_tag(bad), "{bad}");
        }
    }

    #[test]
    fn only_release_assets_are_served() {
        for good in [
            "k3s",
            "k3s-arm64",
            "sha256sum-amd64.txt",
            "sha256sum-arm.txt",
            "k3sfleet-release.json",
            "k3sfleet-release.json.minisig",
        ] {
            assert!(is_servable_asset(good), "{good}");
        }
        for bad in ["", "../k3s", "sha256sum-../x.txt", "k3s.tar", "passwd"] {
            assert!(!is_servable_asset(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn streams_whole_files_in_chunks() {
        use futures::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("v1.31.5+k3s1")).unwrap();
        let data: Vec<u8> = (0..(CHUNK_SIZE * 2 + 10)).map(|i| i as u8).collect();
        std::fs::write(dir.path().join("v1.31.5+k3s1/k3s"), &data).unwrap();
        let chunks: Vec<_> = stream(dir.path(), "v1.31.5+k3s1", "k3s")
            .await
            .unwrap()
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[0].total_size, data.len() as u64);
        let joined: Vec<u8> = chunks.into_iter().flat_map(|c| c.data).collect();
        assert_eq!(joined, data);
        let missing = stream(dir.path(), "v1.31.6+k3s1", "k3s")
            .await
            .err()
            .unwrap();
        assert!(matches!(missing, ArtifactError::NotFound { .. }));
    }
}
