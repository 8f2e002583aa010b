//! The keeper's flags (docs/architecture.md §5, env forms `STKEEPER_*`) and Stolon's startup
//! checks, in Stolon's order and with its messages, producing a validated [`KeeperConfig`].
//! Password files are read here (trailing newlines trimmed); passwords never reach logs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use clap::Parser;
use stolon_core::failsafe::wire::Secret;
use stolon_core::pgconf::AuthMethod;
use stolon_store::{CommonArgs, StoreConfig};

/// Command-line flags of `stolon-keeper`.
#[derive(Debug, Clone, Parser)]
#[command(name = "stolon-keeper", about = "stolon keeper", version = stolon_obs::VERSION_TEXT)]
pub struct Cli {
    #[command(flatten)]
    /// Flags shared by every stolon binary.
    pub common: CommonArgs,
    /// keeper uid (must be unique in the cluster and can contain only lower-case letters, numbers and the underscore character). If not provided a random uid will be generated.
    #[arg(long = "uid", default_value = "")]
    pub uid: String,
    /// keeper id (DEPRECATED, use --uid)
    #[arg(long = "id", default_value = "", hide = true)]
    pub id: String,
    /// data directory
    #[arg(long = "data-dir", default_value = "")]
    pub data_dir: String,
    /// postgresql instance listening address, local address used for the postgres instance. For all network interface, you can set the value to '*'.
    #[arg(long = "pg-listen-address", default_value = "")]
    pub pg_listen_address: String,
    /// postgresql instance address from outside. Use it to expose ip different than local ip with a NAT networking config
    #[arg(long = "pg-advertise-address", default_value = "")]
    pub pg_advertise_address: String,
    /// postgresql instance listening port
    #[arg(long = "pg-port", default_value = "5432")]
    pub pg_port: String,
    /// postgresql instance port from outside. Use it to expose port different than local port with a NAT networking config
    #[arg(long = "pg-advertise-port", default_value = "")]
    pub pg_advertise_port: String,
    /// absolute path to postgresql binaries. If empty they will be searched in the current PATH
    #[arg(long = "pg-bin-path", default_value = "")]
    pub pg_bin_path: String,
    /// postgres replication user auth method. Default is md5.
    #[arg(long = "pg-repl-auth-method", default_value = "md5")]
    pub pg_repl_auth_method: String,
    /// postgres replication user name. Required. It'll be created on db initialization. Must be the same for all keepers.
    #[arg(long = "pg-repl-username", default_value = "")]
    pub pg_repl_username: String,
    /// postgres replication user password. Only one of --pg-repl-password or --pg-repl-passwordfile must be provided. Must be the same for all keepers.
    #[arg(long = "pg-repl-password", default_value = "")]
    pub pg_repl_password: String,
    /// postgres replication user password file. Only one of --pg-repl-password or --pg-repl-passwordfile must be provided. Must be the same for all keepers.
    #[arg(long = "pg-repl-passwordfile", default_value = "")]
    pub pg_repl_passwordfile: String,
    /// postgres superuser auth method. Default is md5.
    #[arg(long = "pg-su-auth-method", default_value = "md5")]
    pub pg_su_auth_method: String,
    /// postgres superuser user name. Used for keeper managed instance access and pg_rewind based synchronization. It'll be created on db initialization. Defaults to the name of the effective user running stolon-keeper. Must be the same for all keepers.
    #[arg(long = "pg-su-username", default_value = "")]
    pub pg_su_username: String,
    /// postgres superuser password. Only one of --pg-su-password or --pg-su-passwordfile must be provided. Must be the same for all keepers.
    #[arg(long = "pg-su-password", default_value = "")]
    pub pg_su_password: String,
    /// postgres superuser password file. Only one of --pg-su-password or --pg-su-passwordfile must be provided. Must be the same for all keepers)
    #[arg(long = "pg-su-passwordfile", default_value = "")]
    pub pg_su_passwordfile: String,
    /// prevent keeper from being elected as master
    #[arg(long = "can-be-master", default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub can_be_master: bool,
    /// keeper priority: among standbys eligible to replace a failed master, the highest priority wins (then the most advanced); 0 means never elected master automatically (a switchover may still name it)
    #[arg(long = "priority", default_value_t = 1)]
    pub priority: u32,
    /// prevent keeper from being chosen as synchronous replica
    #[arg(long = "can-be-synchronous-replica", default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub can_be_synchronous_replica: bool,
    /// disable locking on data dir. Warning! It'll cause data corruptions if two keepers are concurrently running with the same data dir.
    #[arg(long = "disable-data-dir-locking", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub disable_data_dir_locking: bool,
    /// enable debug logging (deprecated, use --log-level=debug instead)
    #[arg(long = "debug", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub debug: bool,
    /// file holding the cluster's shared failsafe secret (at least 16 bytes, the same for every keeper and proxy). With it the keeper answers failsafe acknowledgement and confirmation requests on its --metrics-listen-address listener (required then) and asks the other keepers for acknowledgements while it runs the master (docs/failsafe.md)
    #[arg(long = "failsafe-secret-file", default_value = "")]
    pub failsafe_secret_file: String,
    /// enable color in log output (default if attached to a terminal)
    #[arg(long = "log-color", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub log_color: bool,
}

/// A startup check failed; the message is Stolon's, printed as one line before exiting 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn fail<T>(m: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(m.into()))
}

/// A PostgreSQL role the keeper uses, with its password.
#[derive(Clone, PartialEq, Eq)]
pub struct RoleConfig {
    /// Role name.
    pub username: String,
    /// Auth method in pg_hba.
    pub auth: AuthMethod,
    /// Password (None with trust).
    pub password: Option<String>,
}

impl std::fmt::Debug for RoleConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleConfig")
            .field("username", &self.username)
            .field("auth", &self.auth)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The validated keeper configuration.
#[derive(Debug, Clone)]
pub struct KeeperConfig {
    /// Store connection settings.
    pub store: StoreConfig,
    /// `--uid` (or `--id`); empty = generate or load from keeperstate.
    pub uid: String,
    /// Absolute data dir.
    pub data_dir: PathBuf,
    /// `--pg-listen-address`.
    pub pg_listen_address: String,
    /// `--pg-port`.
    pub pg_port: u16,
    /// Address published in the DB status.
    pub pg_advertise_address: String,
    /// Port published in the DB status.
    pub pg_advertise_port: String,
    /// `--pg-bin-path` (None = `$PATH`).
    pub pg_bin_path: Option<PathBuf>,
    /// Superuser.
    pub su: RoleConfig,
    /// Replication user.
    pub repl: RoleConfig,
    /// `--can-be-master`.
    pub can_be_master: bool,
    /// `--can-be-synchronous-replica`.
    pub can_be_synchronous_replica: bool,
    /// `--priority`.
    pub priority: u32,
    /// `--disable-data-dir-locking`.
    pub disable_data_dir_locking: bool,
    /// `--metrics-listen-address` (None = disabled).
    pub metrics_listen_address: Option<String>,
    /// The shared secret read from `--failsafe-secret-file` (None = the keeper takes no part in
    /// failsafe mode). Its `Debug` output never shows it.
    pub failsafe_secret: Option<Secret>,
    /// Effective log level.
    pub log_level: String,
}

impl KeeperConfig {
    /// A keeper handed its store and PostgreSQL directly (tests, the simulation): listening and
    /// advertising `host:port`, md5 roles `su`/`supw` and `repl`/`replpw` (test credentials),
    /// both roles allowed, data dir locking on, no metrics listener, log level `info`.
    pub fn for_tests(
        store: StoreConfig,
        uid: &str,
        data_dir: PathBuf,
        host: &str,
        port: u16,
    ) -> KeeperConfig {
        let role = |username: &str, password: &str| RoleConfig {
            username: username.into(),
            auth: AuthMethod::Md5,
            password: Some(password.into()),
        };
        KeeperConfig {
            store,
            uid: uid.into(),
            data_dir,
            pg_listen_address: host.into(),
            pg_port: port,
            pg_advertise_address: host.into(),
            pg_advertise_port: port.to_string(),
            pg_bin_path: None,
            su: role("su", "supw"),
            repl: role("repl", "replpw"),
            can_be_master: true,
            can_be_synchronous_replica: true,
            priority: 1,
            disable_data_dir_locking: false,
            metrics_listen_address: None,
            failsafe_secret: None,
            log_level: "info".into(),
        }
    }
}

/// A non-fatal finding of the checks, logged as a warning once logging is set up (before any
/// fatal error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// Stolon's words.
    pub message: String,
    /// The file concerned (a field of the log line).
    pub file: Option<String>,
    /// Its mode, as Go's `%#o` prints it (a field of the log line).
    pub mode: Option<String>,
}

impl From<String> for Warning {
    fn from(message: String) -> Self {
        Warning {
            message,
            file: None,
            mode: None,
        }
    }
}

impl From<&str> for Warning {
    fn from(message: &str) -> Self {
        Warning::from(message.to_string())
    }
}

impl PartialEq<str> for Warning {
    fn eq(&self, other: &str) -> bool {
        self.message == other
    }
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Warning {
    /// Logs it at WARN, with its fields.
    pub fn log(&self) {
        match (&self.file, &self.mode) {
            (Some(file), Some(mode)) => {
                tracing::warn!(file = %file, mode = %mode, "{}", self.message)
            }
            _ => tracing::warn!("{}", self.message),
        }
    }
}

/// Non-fatal findings of the checks, in the order found.
pub type Warnings = Vec<Warning>;

fn push(w: &mut Warnings, m: impl Into<Warning>) {
    w.push(m.into());
}

/// True for a valid keeper UID (`^[a-z0-9_]+$`).
pub fn is_valid_uid(uid: &str) -> bool {
    stolon_core::model::is_valid_slot_name(uid)
}

/// Reads a password file; warns when its mode is more open than 0600.
fn read_password_file(path: &str, warnings: &mut Warnings) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{path}: {e}"))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode > 0o600 {
        warnings.push(Warning {
            message: "password file permissions are too open. This file should only be readable to the user executing stolon! Continuing...".into(),
            file: Some(path.to_string()),
            mode: Some(format!("0{mode:o}")),
        });
    }
    std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))
}

fn trim_newlines(pw: &str) -> &str {
    pw.trim_end_matches(['\r', '\n'])
}

fn parse_auth(value: &str, flag: &str) -> Result<AuthMethod, ConfigError> {
    value
        .parse()
        .map_err(|_| ConfigError(format!("{flag} must be one of: md5, scram-sha-256, trust")))
}

/// The OS user name running us (default superuser name, as Stolon does).
fn current_os_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_default()
}

impl Cli {
    /// Runs Stolon's startup checks in order and builds the configuration. Creates the data dir
    /// (0700) as Stolon does. `su_username_given` tells whether `--pg-su-username` was set (if not,
    /// the OS user name is used).
    pub fn validate(&self) -> Result<(KeeperConfig, Warnings), ConfigError> {
        let mut warnings = Warnings::new();
        self.check(&mut warnings).map(|c| (c, warnings))
    }

    /// [`Cli::validate`], also returning the warnings found before a failure (they are logged
    /// before the fatal error).
    pub fn validate_all(&self) -> (Result<KeeperConfig, ConfigError>, Warnings) {
        let mut warnings = Warnings::new();
        let r = self.check(&mut warnings);
        (r, warnings)
    }

    fn check(&self, warnings: &mut Warnings) -> Result<KeeperConfig, ConfigError> {
        let mut log_level = self.common.log_level.clone();
        if self.debug {
            push(
                warnings,
                "--debug is deprecated, use --log-level=debug instead",
            );
            log_level = "debug".into();
        }
        stolon_store::config::check_log_level(&log_level)
            .map_err(|e| ConfigError(e.to_string()))?;
        if self.data_dir.is_empty() {
            return fail("data dir required");
        }
        let store =
            StoreConfig::from_common(&self.common).map_err(|e| ConfigError(e.to_string()))?;
        let data_dir = std::path::absolute(&self.data_dir).map_err(|e| {
            ConfigError(format!(
                "cannot get absolute datadir path for {:?}: {e}",
                self.data_dir
            ))
        })?;
        if let Err(e) = std::fs::create_dir_all(&data_dir).and_then(|_| {
            std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))
        }) {
            return fail(format!("cannot create data dir: {e}"));
        }
        if self.pg_listen_address.is_empty() {
            return fail("--pg-listen-address is required");
        }
        let pg_port: u16 = self
            .pg_port
            .parse()
            .map_err(|_| ConfigError(format!("invalid --pg-port {:?}", self.pg_port)))?;
        let pg_advertise_address = if self.pg_advertise_address.is_empty() {
            self.pg_listen_address.clone()
        } else {
            self.pg_advertise_address.clone()
        };
        let pg_advertise_port = if self.pg_advertise_port.is_empty() {
            self.pg_port.clone()
        } else {
            self.pg_advertise_port.clone()
        };
        // Stolon names the flag the address came from, and resolves a hostname to check it.
        let flag = if self.pg_advertise_address.is_empty() {
            "pg-listen-address"
        } else {
            "pg-advertise-address"
        };
        let ip = match pg_advertise_address.parse::<std::net::IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                push(
                    warnings,
                    format!(
                        "provided --{flag} {pg_advertise_address:?}: is not an ip address but a hostname. This will be advertized to the other components and may have undefined behaviors if resolved differently by other hosts"
                    ),
                );
                use std::net::ToSocketAddrs as _;
                match (pg_advertise_address.as_str(), 0u16).to_socket_addrs() {
                    Ok(mut addrs) => addrs.next().map(|a| a.ip()),
                    Err(e) => {
                        push(
                            warnings,
                            format!(
                                "cannot resolve provided --{flag} {pg_advertise_address:?}: {e}"
                            ),
                        );
                        None
                    }
                }
            }
        };
        if ip.is_some_and(|ip| ip.is_loopback()) {
            push(
                warnings,
                format!(
                    "provided --{flag} {pg_advertise_address:?} is a loopback ip. This will be advertized to the other components and communication will fail if they are on different hosts"
                ),
            );
        }
        let repl_auth = parse_auth(&self.pg_repl_auth_method, "--pg-repl-auth-method")?;
        if self.pg_repl_username.is_empty() {
            return fail("--pg-repl-username is required");
        }
        if repl_auth == AuthMethod::Trust {
            push(
                warnings,
                "not utilizing a password for replication between hosts is extremely dangerous",
            );
            if !self.pg_repl_password.is_empty() || !self.pg_repl_passwordfile.is_empty() {
                return fail(
                    "can not utilize --pg-repl-auth-method trust together with --pg-repl-password or --pg-repl-passwordfile",
                );
            }
        }
        let su_auth = parse_auth(&self.pg_su_auth_method, "--pg-su-auth-method")?;
        if su_auth == AuthMethod::Trust {
            push(
                warnings,
                "not utilizing a password for superuser is extremely dangerous",
            );
            if !self.pg_su_password.is_empty() || !self.pg_su_passwordfile.is_empty() {
                return fail(
                    "can not utilize --pg-su-auth-method trust together with --pg-su-password or --pg-su-passwordfile",
                );
            }
        }
        if repl_auth != AuthMethod::Trust {
            if self.pg_repl_password.is_empty() && self.pg_repl_passwordfile.is_empty() {
                return fail("one of --pg-repl-password or --pg-repl-passwordfile is required");
            }
            if !self.pg_repl_password.is_empty() && !self.pg_repl_passwordfile.is_empty() {
                return fail(
                    "only one of --pg-repl-password or --pg-repl-passwordfile must be provided",
                );
            }
        }
        if su_auth != AuthMethod::Trust {
            if self.pg_su_password.is_empty() && self.pg_su_passwordfile.is_empty() {
                return fail("one of --pg-su-password or --pg-su-passwordfile is required");
            }
            if !self.pg_su_password.is_empty() && !self.pg_su_passwordfile.is_empty() {
                return fail(
                    "only one of --pg-su-password or --pg-su-passwordfile must be provided",
                );
            }
        }
        let mut repl_pw = self.pg_repl_password.clone();
        if !self.pg_repl_passwordfile.is_empty() {
            repl_pw = read_password_file(&self.pg_repl_passwordfile, warnings).map_err(|e| {
                ConfigError(format!("cannot read pg replication user password: {e}"))
            })?;
        }
        let mut su_pw = self.pg_su_password.clone();
        if !self.pg_su_passwordfile.is_empty() {
            su_pw = read_password_file(&self.pg_su_passwordfile, warnings)
                .map_err(|e| ConfigError(format!("cannot read pg superuser password: {e}")))?;
        }
        if su_pw.ends_with('\n') || su_pw.ends_with('\r') {
            push(
                warnings,
                "superuser password contain trailing new line, removing",
            );
            su_pw = trim_newlines(&su_pw).to_string();
            if su_pw.is_empty() {
                return fail("superuser password is empty after removing trailing new line");
            }
        }
        if repl_pw.ends_with('\n') || repl_pw.ends_with('\r') {
            push(
                warnings,
                "replication user password contain trailing new line, removing",
            );
            repl_pw = trim_newlines(&repl_pw).to_string();
            if repl_pw.is_empty() {
                return fail("replication user password is empty after removing trailing new line");
            }
        }
        let su_username = if self.pg_su_username.is_empty() {
            current_os_user()
        } else {
            self.pg_su_username.clone()
        };
        if su_username == self.pg_repl_username {
            push(
                warnings,
                "superuser name and replication user name are the same. Different users are suggested.",
            );
            if su_auth != repl_auth {
                return fail(
                    "do not support different auth methods when utilizing superuser for replication.",
                );
            }
            if su_pw != repl_pw && su_auth != AuthMethod::Trust && repl_auth != AuthMethod::Trust {
                return fail(
                    "provided superuser name and replication user name are the same but provided passwords are different",
                );
            }
        }
        let mut uid = self.uid.clone();
        if !self.id.is_empty() {
            push(warnings, "--id is deprecated, please use --uid");
            if uid.is_empty() {
                uid = self.id.clone();
            }
        }
        if !uid.is_empty() && !is_valid_uid(&uid) {
            return fail(format!(
                "keeper uid {uid:?} not valid. It can contain only lower-case letters, numbers and the underscore character"
            ));
        }
        let failsafe_secret = if self.failsafe_secret_file.is_empty() {
            None
        } else {
            let secret = stolon_failsafe::load_secret(Path::new(&self.failsafe_secret_file))
                .map_err(ConfigError)?;
            if self.common.metrics_listen_address.is_empty() {
                return fail(
                    "--failsafe-secret-file needs --metrics-listen-address: the keeper answers failsafe requests on that listener",
                );
            }
            Some(secret)
        };
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let pw =
            |auth: AuthMethod, p: String| (auth != AuthMethod::Trust && !p.is_empty()).then_some(p);
        Ok(KeeperConfig {
            store,
            uid,
            data_dir,
            pg_listen_address: self.pg_listen_address.clone(),
            pg_port,
            pg_advertise_address,
            pg_advertise_port,
            pg_bin_path: opt(&self.pg_bin_path).map(PathBuf::from),
            su: RoleConfig {
                username: su_username,
                auth: su_auth,
                password: pw(su_auth, su_pw),
            },
            repl: RoleConfig {
                username: self.pg_repl_username.clone(),
                auth: repl_auth,
                password: pw(repl_auth, repl_pw),
            },
            can_be_master: self.can_be_master,
            can_be_synchronous_replica: self.can_be_synchronous_replica,
            priority: self.priority,
            disable_data_dir_locking: self.disable_data_dir_locking,
            metrics_listen_address: opt(&self.common.metrics_listen_address),
            failsafe_secret,
            log_level,
        })
    }
}

/// The data dir's files.
pub fn keeperstate_path(data_dir: &Path) -> PathBuf {
    data_dir.join("keeperstate")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut v = vec!["stolon-keeper"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap()
    }

    fn base(dir: &Path) -> Vec<String> {
        [
            "--cluster-name=c",
            "--store-backend=etcdv3",
            "--pg-listen-address=127.0.0.1",
            "--pg-repl-username=repl",
            "--pg-su-username=su",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("--data-dir={}", dir.join("data").display())])
        .collect()
    }

    fn check(dir: &Path, extra: &[&str]) -> Result<(KeeperConfig, Warnings), ConfigError> {
        let mut a = base(dir);
        a.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        cli(&refs).validate()
    }

    #[test]
    fn required_flags() {
        let d = tempfile::tempdir().unwrap();
        let e = cli(&["--cluster-name=c", "--store-backend=etcdv3"])
            .validate()
            .unwrap_err();
        assert_eq!(e.0, "data dir required");
        let data = format!("--data-dir={}", d.path().join("x").display());
        let e = cli(&["--cluster-name=c", "--store-backend=etcdv3", &data])
            .validate()
            .unwrap_err();
        assert_eq!(e.0, "--pg-listen-address is required");
        let e = cli(&[
            "--cluster-name=c",
            "--store-backend=etcdv3",
            &data,
            "--pg-listen-address=127.0.0.1",
        ])
        .validate()
        .unwrap_err();
        assert_eq!(e.0, "--pg-repl-username is required");
    }

    #[test]
    fn password_one_of_rules() {
        let d = tempfile::tempdir().unwrap();
        let e = check(d.path(), &["--pg-su-password=a"]).unwrap_err();
        assert_eq!(
            e.0,
            "one of --pg-repl-password or --pg-repl-passwordfile is required"
        );
        let e = check(d.path(), &["--pg-repl-password=a"]).unwrap_err();
        assert_eq!(
            e.0,
            "one of --pg-su-password or --pg-su-passwordfile is required"
        );
        let e = check(
            d.path(),
            &[
                "--pg-repl-password=a",
                "--pg-repl-passwordfile=/x",
                "--pg-su-password=a",
            ],
        )
        .unwrap_err();
        assert_eq!(
            e.0,
            "only one of --pg-repl-password or --pg-repl-passwordfile must be provided"
        );
        let e = check(
            d.path(),
            &["--pg-repl-auth-method=trust", "--pg-repl-password=a"],
        )
        .unwrap_err();
        assert!(
            e.0.starts_with("can not utilize --pg-repl-auth-method trust"),
            "{e}"
        );
        let e = check(d.path(), &["--pg-repl-auth-method=password"]).unwrap_err();
        assert_eq!(
            e.0,
            "--pg-repl-auth-method must be one of: md5, scram-sha-256, trust"
        );
        let (c, _) = check(
            d.path(),
            &[
                "--pg-repl-auth-method=scram-sha-256",
                "--pg-repl-password=r",
                "--pg-su-auth-method=trust",
            ],
        )
        .unwrap();
        assert_eq!(c.repl.auth, AuthMethod::ScramSha256);
        assert_eq!(c.su.password, None);
        assert_eq!(c.repl.password.as_deref(), Some("r"));
        assert!(!format!("{c:?}").contains("\"r\""));
    }

    #[test]
    fn password_files_trailing_newlines() {
        let d = tempfile::tempdir().unwrap();
        let su = d.path().join("su");
        let repl = d.path().join("repl");
        std::fs::write(&su, "supw\r\n").unwrap();
        std::fs::write(&repl, "replpw\n").unwrap();
        std::fs::set_permissions(&su, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&repl, std::fs::Permissions::from_mode(0o644)).unwrap();
        let suf = format!("--pg-su-passwordfile={}", su.display());
        let replf = format!("--pg-repl-passwordfile={}", repl.display());
        let (c, w) = check(d.path(), &[&suf, &replf]).unwrap();
        assert_eq!(c.su.password.as_deref(), Some("supw"));
        assert_eq!(c.repl.password.as_deref(), Some("replpw"));
        assert!(
            w.iter()
                .any(|l| l == "superuser password contain trailing new line, removing")
        );
        assert!(
            w.iter()
                .any(|l| l == "replication user password contain trailing new line, removing")
        );
        let open = w
            .iter()
            .find(|l| {
                l.message
                    .starts_with("password file permissions are too open.")
            })
            .expect("permission warning");
        assert_eq!(open.file.as_deref(), Some(repl.to_str().unwrap()));
        assert_eq!(open.mode.as_deref(), Some("0644"));
        std::fs::write(&repl, "\n").unwrap();
        let e = check(d.path(), &[&suf, &replf]).unwrap_err();
        assert_eq!(
            e.0,
            "replication user password is empty after removing trailing new line"
        );
        std::fs::write(&su, "\n").unwrap();
        std::fs::write(&repl, "x").unwrap();
        let e = check(d.path(), &[&suf, &replf]).unwrap_err();
        assert_eq!(
            e.0,
            "superuser password is empty after removing trailing new line"
        );
    }

    #[test]
    fn same_su_and_repl_user() {
        let d = tempfile::tempdir().unwrap();
        let mut a = base(d.path());
        a.retain(|s| !s.starts_with("--pg-su-username"));
        a.extend([
            "--pg-su-username=repl".to_string(),
            "--pg-su-password=a".into(),
            "--pg-repl-password=b".into(),
        ]);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        let e = cli(&refs).validate().unwrap_err();
        assert_eq!(
            e.0,
            "provided superuser name and replication user name are the same but provided passwords are different"
        );
        let mut a2 = a.clone();
        a2.pop();
        a2.push("--pg-repl-password=a".into());
        let refs: Vec<&str> = a2.iter().map(String::as_str).collect();
        assert!(cli(&refs).validate().is_ok());
        a2.push("--pg-repl-auth-method=scram-sha-256".into());
        let refs: Vec<&str> = a2.iter().map(String::as_str).collect();
        let e = cli(&refs).validate().unwrap_err();
        assert_eq!(
            e.0,
            "do not support different auth methods when utilizing superuser for replication."
        );
    }

    #[test]
    fn failsafe_secret_file() {
        let d = tempfile::tempdir().unwrap();
        let pw = ["--pg-su-password=a", "--pg-repl-password=b"];
        let (c, _) = check(d.path(), &pw).unwrap();
        assert!(c.failsafe_secret.is_none());
        let file = d.path().join("failsafe");
        let flag = format!("--failsafe-secret-file={}", file.display());
        let listen = "--metrics-listen-address=127.0.0.1:0";
        let e = check(d.path(), &[pw[0], pw[1], &flag, listen]).unwrap_err();
        assert!(
            e.0.starts_with(&format!("failsafe secret file {}: ", file.display())),
            "{e}"
        );
        std::fs::write(&file, "short secret\n").unwrap();
        let e = check(d.path(), &[pw[0], pw[1], &flag, listen]).unwrap_err();
        assert_eq!(
            e.0,
            format!(
                "failsafe secret file {}: the secret is 12 bytes long; it must be at least 16",
                file.display()
            )
        );
        assert!(!e.0.contains("short secret"));
        std::fs::write(&file, "a long enough failsafe secret\n").unwrap();
        let e = check(d.path(), &[pw[0], pw[1], &flag]).unwrap_err();
        assert_eq!(
            e.0,
            "--failsafe-secret-file needs --metrics-listen-address: the keeper answers failsafe requests on that listener"
        );
        let (c, _) = check(d.path(), &[pw[0], pw[1], &flag, listen]).unwrap();
        assert_eq!(
            c.failsafe_secret,
            Some(Secret::from_file_contents(b"a long enough failsafe secret").unwrap())
        );
        assert!(!format!("{c:?}").contains("long enough"));
    }

    #[test]
    fn uid_validation_and_defaults() {
        let d = tempfile::tempdir().unwrap();
        let e = check(
            d.path(),
            &[
                "--pg-su-password=a",
                "--pg-repl-password=b",
                "--uid=Bad-Uid",
            ],
        )
        .unwrap_err();
        assert!(e.0.contains("not valid"), "{e}");
        let (c, _) = check(
            d.path(),
            &[
                "--pg-su-password=a",
                "--pg-repl-password=b",
                "--id=k_1",
                "--pg-port=6000",
            ],
        )
        .unwrap();
        assert_eq!(c.uid, "k_1");
        assert_eq!(c.pg_advertise_address, "127.0.0.1");
        assert_eq!(c.pg_advertise_port, "6000");
        assert!(c.data_dir.is_absolute() && c.data_dir.is_dir());
        assert!(c.can_be_master);
        let (c, _) = check(
            d.path(),
            &[
                "--pg-su-password=a",
                "--pg-repl-password=b",
                "--can-be-master=false",
            ],
        )
        .unwrap();
        assert!(!c.can_be_master);
        assert_eq!(c.priority, 1);
        let (c, _) = check(
            d.path(),
            &["--pg-su-password=a", "--pg-repl-password=b", "--priority=0"],
        )
        .unwrap();
        assert_eq!(c.priority, 0);
        let mut a = base(d.path());
        a.push("--priority=-1".into());
        let refs: Vec<&str> = std::iter::once("stolon-keeper")
            .chain(a.iter().map(String::as_str))
            .collect();
        assert!(Cli::try_parse_from(refs).is_err());
    }
}
