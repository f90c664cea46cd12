//! Which admin socket sendctl talks to.
//!
//! An operator should not have to know where the socket is: the daemon's
//! own configuration says (`[admin] socket`). In order:
//! `--socket PATH`; the socket of `--config FILE`; `$SENDENGINE_SOCKET`;
//! the socket of `$SENDENGINE_CONFIG`; `var/admin.sock` (the quick start's)
//! when it exists; the socket of `/etc/sendengine/config.toml` (the
//! installed daemon's) when that file exists; else `var/admin.sock`.

use std::path::{Path, PathBuf};

use sendengine::config::Config;

const QUICK_START_SOCKET: &str = "var/admin.sock";
const INSTALLED_CONFIG: &str = "/etc/sendengine/config.toml";

/// What the command line said about the socket.
#[derive(Debug, Default)]
pub struct SocketChoice {
    pub socket: Option<String>,
    pub config: Option<String>,
}

impl SocketChoice {
    /// The socket path; an error names the configuration that could not
    /// be read or sets no socket.
    pub fn resolve(&self) -> Result<PathBuf, String> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if let Some(socket) = &self.socket {
            return Ok(PathBuf::from(socket));
        }
        if let Some(config) = &self.config {
            return socket_of(Path::new(config), "--config");
        }
        if let Some(socket) = env("SENDENGINE_SOCKET") {
            return Ok(PathBuf::from(socket));
        }
        if let Some(config) = env("SENDENGINE_CONFIG") {
            return socket_of(Path::new(&config), "$SENDENGINE_CONFIG");
        }
        let quick_start = PathBuf::from(QUICK_START_SOCKET);
        if !quick_start.exists() && Path::new(INSTALLED_CONFIG).is_file() {
            return socket_of(Path::new(INSTALLED_CONFIG), "the installed configuration");
        }
        Ok(quick_start)
    }
}

/// `[admin] socket` of the configuration at `path`, read and checked as
/// the daemon reads it.
fn socket_of(path: &Path, given_by: &str) -> Result<PathBuf, String> {
    let config = Config::load(path).map_err(|e| format!("{given_by}: {e}"))?;
    config.admin.socket.ok_or_else(|| {
        format!(
            "{given_by}: {} sets no [admin] socket, so the daemon has no admin socket; \
             add `[admin] socket = \"...\"` and restart it",
            path.display()
        )
    })
}
