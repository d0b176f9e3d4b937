//! Registry credentials the way users already keep them: Docker's `config.json`
//! (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`), including credential helpers
//! for reading; `wms login` and `wms logout` edit its `auths`.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use oci_client::secrets::RegistryAuth;

/// Where Docker (and so wms) keeps registry credentials.
pub fn docker_config_path() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Ok(PathBuf::from(dir).join("config.json"));
    }
    let home = std::env::var_os("HOME")
        .context("neither DOCKER_CONFIG nor HOME is set, so there is no Docker config file")?;
    Ok(PathBuf::from(home).join(".docker/config.json"))
}

/// Credentials for `registry` and a description of where they came from (for errors).
/// A credential helper (`docker-credential-*`) that does not answer within `timeout` (one waiting
/// for a desktop keyring prompt, say) is given up on with a warning.
pub(crate) async fn lookup(registry: &str, timeout: std::time::Duration) -> (RegistryAuth, String) {
    let server = registry.to_string();
    // A thread of its own, not `spawn_blocking`: the runtime waits for blocking tasks when it
    // shuts down, so a hung helper would hold the process after the pull is done.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(docker_credential::get_credential(&server));
    });
    let found = match tokio::time::timeout(timeout, rx).await {
        Ok(joined) => joined.ok(),
        Err(_) => {
            tracing::warn!(
                "the credential helper for {registry} did not answer within {timeout:?}; trying anonymously"
            );
            None
        }
    };
    let path = docker_config_path()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "the Docker config".into());
    use docker_credential::{CredentialRetrievalError as E, DockerCredential as C};
    match found {
        Some(Ok(C::UsernamePassword(user, password))) => (
            RegistryAuth::Basic(user.clone(), password),
            format!("the credentials of user `{user}` from {path}"),
        ),
        Some(Ok(C::IdentityToken(token))) => (
            RegistryAuth::Bearer(token),
            format!("the identity token from {path}"),
        ),
        Some(Err(E::NoCredentialConfigured | E::ConfigNotFound | E::ConfigReadError)) | None => {
            (RegistryAuth::Anonymous, "anonymous access".into())
        }
        Some(Err(e)) => {
            tracing::warn!(
                "cannot read credentials for {registry} from {path}: {e}; trying anonymously"
            );
            (RegistryAuth::Anonymous, "anonymous access".into())
        }
    }
}

fn read_config() -> anyhow::Result<(PathBuf, serde_json::Map<String, serde_json::Value>)> {
    let path = docker_config_path()?;
    let map = match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(serde_json::Value::Object(m)) => m,
            Ok(_) | Err(_) => bail!(
                "{} is not a JSON object\n  help: fix or remove the file",
                path.display()
            ),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::Map::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    Ok((path, map))
}

fn write_config(
    path: &std::path::Path,
    map: &serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path.parent().context("config path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = path.with_extension(format!("json.wms-tmp-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec_pretty(map)?)?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Stores `user`/`password` for `registry` in the Docker config file. Returns its path.
pub fn store(registry: &str, user: &str, password: &str) -> anyhow::Result<PathBuf> {
    let (path, mut map) = read_config()?;
    if map.get("credsStore").is_some() || map.get("credHelpers").is_some() {
        tracing::warn!(
            "{} names credential helpers; wms login writes to its `auths` table instead",
            path.display()
        );
    }
    let auths = map
        .entry("auths")
        .or_insert_with(|| serde_json::json!({}))
        .as_object_mut()
        .with_context(|| format!("`auths` in {} is not an object", path.display()))?;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    auths.insert(registry.to_string(), serde_json::json!({ "auth": token }));
    write_config(&path, &map)?;
    Ok(path)
}

/// Removes stored credentials for `registry`; returns whether there were any.
pub fn remove(registry: &str) -> anyhow::Result<bool> {
    let (path, mut map) = read_config()?;
    let Some(auths) = map.get_mut("auths").and_then(|a| a.as_object_mut()) else {
        return Ok(false);
    };
    let keys = [
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
    ];
    let mut removed = false;
    for k in &keys {
        removed |= auths.remove(k).is_some();
    }
    if removed {
        write_config(&path, &map)?;
    }
    Ok(removed)
}

/// Reads a password typed on the terminal on standard input, with echo off while it is typed
/// (restored afterwards, also when reading fails). `prompt` goes to standard error.
pub fn read_password(prompt: &str) -> anyhow::Result<String> {
    use std::io::{BufRead as _, Write as _};
    const STDIN: libc::c_int = 0;
    // SAFETY: tcgetattr fills the zeroed termios for a valid descriptor, or fails.
    let mut term: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::tcgetattr(STDIN, &mut term) } != 0 {
        bail!(
            "cannot read the terminal settings: {}\n  help: pipe the password in with --password-stdin",
            std::io::Error::last_os_error()
        );
    }
    struct Restore(libc::termios);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: restores settings read from the same descriptor.
            unsafe { libc::tcsetattr(STDIN, libc::TCSANOW, &self.0) };
        }
    }
    let restore = Restore(term);
    term.c_lflag &= !libc::ECHO;
    // The newline the user types is still echoed, so the next output starts on a fresh line.
    term.c_lflag |= libc::ECHONL;
    // SAFETY: a termios from tcgetattr with echo cleared.
    if unsafe { libc::tcsetattr(STDIN, libc::TCSANOW, &term) } != 0 {
        bail!(
            "cannot turn off echo on the terminal: {}\n  help: pipe the password in with --password-stdin",
            std::io::Error::last_os_error()
        );
    }
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    drop(restore);
    read.context("cannot read the password")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}
