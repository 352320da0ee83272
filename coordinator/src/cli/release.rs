//! `k3sfleet release`: the operator's offline signing key and the signed
//! manifests that say which K3s binaries hosts may install.
//!
//! Neither command talks to the coordinator: run them where the key lives.
//! Passwords come from a file or the terminal, never from the command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use k3sfleet_release::sign::{self, Protection};
use k3sfleet_release::{MANIFEST_NAME, SIGNATURE_NAME};

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Create a signing key pair: <out>.key (secret, 0600) and <out>.pub.
    /// The secret key is encrypted with a password asked for on the
    /// terminal unless told otherwise; keep it offline.
    Keygen {
        /// Path of the pair without extension.
        #[arg(long, default_value = "k3sfleet-release")]
        out: PathBuf,
        /// Read the password from this file's first line instead of asking.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// Do not encrypt the secret key (only for a key on an encrypted offline medium).
        #[arg(long, conflicts_with = "password_file")]
        no_password: bool,
        /// Replace an existing key pair.
        #[arg(long)]
        force: bool,
    },
    /// Sign a release: hash the K3s binaries in DIR (k3s, k3s-arm64,
    /// k3s-armhf, k3s-s390x, checked against the sha256sum files there) and
    /// write DIR/k3sfleet-release.json and its signature
    /// DIR/k3sfleet-release.json.minisig. DIR is the version's directory
    /// of a mirror or of the coordinator's artifacts.
    // `--version` is the K3s version, not clap's propagated flag.
    #[command(disable_version_flag = true)]
    Sign {
        /// The secret key file (`k3sfleet release keygen`'s, or `minisign -G`'s).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The K3s release tag, e.g. v1.31.5+k3s1.
        #[arg(long)]
        version: String,
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// Read the key's password from this file's first line instead of asking.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
}

pub fn run(command: ReleaseCommand) -> anyhow::Result<ExitCode> {
    match command {
        ReleaseCommand::Keygen {
            out,
            password_file,
            no_password,
            force,
        } => keygen(&out, password_file.as_deref(), no_password, force),
        ReleaseCommand::Sign {
            key,
            version,
            from,
            password_file,
        } => sign_release(&key, &version, &from, password_file.as_deref()),
    }
}

fn keygen(
    out: &Path,
    password_file: Option<&Path>,
    no_password: bool,
    force: bool,
) -> anyhow::Result<ExitCode> {
    let secret_path = with_suffix(out, ".key");
    let public_path = with_suffix(out, ".pub");
    for path in [&secret_path, &public_path] {
        if !force && path.exists() {
            bail!(
                "{} exists; pass --force to replace the key pair",
                path.display()
            );
        }
    }
    let protection = match (password_file, no_password) {
        (Some(file), _) => Protection::Password(read_password(file)?),
        (None, true) => Protection::None,
        (None, false) => Protection::Prompt,
    };
    let (secret, public) = sign::generate(protection)?;
    k3sfleet_pki::write_private_file(&secret_path, &secret, force)?;
    k3sfleet_pki::write_public_file(&public_path, &public, force)?;
    let line = sign::public_key_line(&public).unwrap_or_default();
    println!(
        "wrote {} (secret: keep it offline) and {}",
        secret_path.display(),
        public_path.display()
    );
    println!("trust it on every host, in the agent's config:\n");
    println!("[host.k3s]\ntrusted_keys = [\"{line}\"]");
    Ok(ExitCode::SUCCESS)
}

fn sign_release(
    key: &Path,
    version: &str,
    from: &Path,
    password_file: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let manifest = sign::manifest_of_dir(from, version)?;
    let secret = std::fs::read_to_string(key)
        .with_context(|| format!("cannot read the secret key {}", key.display()))?;
    let password = password_file.map(read_password).transpose()?;
    let json = manifest.to_json();
    let comment = format!("k3sfleet release {version}");
    let signature = sign::sign(&secret, password, json.as_bytes(), &comment)
        .with_context(|| format!("cannot sign with {}", key.display()))?;
    let manifest_path = from.join(MANIFEST_NAME);
    let signature_path = from.join(SIGNATURE_NAME);
    k3sfleet_pki::write_public_file(&manifest_path, &json, true)?;
    k3sfleet_pki::write_public_file(&signature_path, &signature, true)?;
    for artifact in &manifest.artifacts {
        println!(
            "{version} {:<6} {:<10} {:>10} bytes  sha256 {}",
            artifact.arch, artifact.name, artifact.size, artifact.sha256
        );
    }
    println!(
        "wrote {} and {}",
        manifest_path.display(),
        signature_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The first line of a password file. Its content never reaches a message.
fn read_password(file: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the password file {}", file.display()))?;
    let password = text.lines().next().unwrap_or_default().to_string();
    if password.is_empty() {
        bail!("the password file {} is empty", file.display());
    }
    Ok(password)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}
