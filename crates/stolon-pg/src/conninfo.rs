//! Connection parameters for remote PostgreSQL servers (the primary we clone from or rewind
//! against) and their rendering as a libpq conninfo string and a pgpass line. Passwords never
//! go into the conninfo string: programs get them through a temporary `PGPASSFILE`.

use std::time::Duration;

/// Parameters of a connection to another PostgreSQL server.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnParams {
    /// Host name or address (or a socket directory when it starts with `/`).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Role to connect as.
    pub user: String,
    /// Password; `None` for trust auth. Never rendered into the conninfo string.
    pub password: Option<String>,
    /// Database name (`postgres` when `None`; ignored by physical replication connections).
    pub dbname: Option<String>,
    /// `application_name` (e.g. `stolon_<dbuid>`).
    pub application_name: Option<String>,
    /// `sslmode` (`prefer` when `None`, as Stolon does).
    pub sslmode: Option<String>,
    /// `connect_timeout`, rounded up to whole seconds (at least 2, libpq's minimum).
    pub connect_timeout: Option<Duration>,
}

impl std::fmt::Debug for ConnParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnParams")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("application_name", &self.application_name)
            .field("sslmode", &self.sslmode)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl ConnParams {
    /// Minimal parameters: host, port, user, password; everything else default.
    pub fn new(host: impl Into<String>, port: u16, user: impl Into<String>) -> Self {
        ConnParams {
            host: host.into(),
            port,
            user: user.into(),
            password: None,
            dbname: None,
            application_name: None,
            sslmode: None,
            connect_timeout: None,
        }
    }

    /// The conninfo string WITHOUT the password, plus `options` when given (e.g.
    /// `-c synchronous_commit=off`) and `replication` when given. Keys are sorted.
    pub fn to_conninfo(&self, options: Option<&str>, replication: Option<&str>) -> String {
        let mut pairs: Vec<(&str, String)> = vec![
            ("host", self.host.clone()),
            ("port", self.port.to_string()),
            ("user", self.user.clone()),
            (
                "sslmode",
                self.sslmode.clone().unwrap_or_else(|| "prefer".to_string()),
            ),
        ];
        if replication.is_none() || self.dbname.is_some() {
            pairs.push((
                "dbname",
                self.dbname
                    .clone()
                    .unwrap_or_else(|| "postgres".to_string()),
            ));
        }
        if let Some(app) = &self.application_name {
            pairs.push(("application_name", app.clone()));
        }
        if let Some(t) = self.connect_timeout {
            let secs = t.as_secs() + u64::from(t.subsec_nanos() > 0);
            pairs.push(("connect_timeout", secs.max(2).to_string()));
        }
        if let Some(o) = options {
            pairs.push(("options", o.to_string()));
        }
        if let Some(r) = replication {
            pairs.push(("replication", r.to_string()));
        }
        pairs.sort_by(|a, b| a.0.cmp(b.0));
        pairs
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}={}", quote_conninfo_value(v)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// A pgpass line matching any host, port and database for this user, or `None` without a
    /// password.
    pub fn pgpass_line(&self) -> Option<String> {
        self.password.as_ref().map(|pw| {
            format!(
                "*:*:*:{}:{}\n",
                escape_pgpass_field(&self.user),
                escape_pgpass_field(pw)
            )
        })
    }
}

/// Quotes a conninfo value: bare when it is a non-empty run of safe characters, else single
/// quotes with `\` and `'` backslash-escaped (libpq's rules).
pub fn quote_conninfo_value(v: &str) -> String {
    let safe = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@,".contains(c));
    if safe {
        return v.to_string();
    }
    let mut out = String::with_capacity(v.len() + 2);
    out.push('\'');
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// Escapes `:` and `\` for a `.pgpass` field.
pub fn escape_pgpass_field(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if c == ':' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_sorted_without_password() {
        let mut p = ConnParams::new("127.0.0.1", 5432, "repl user");
        p.password = Some("secret".into());
        p.application_name = Some("stolon_abc".into());
        let s = p.to_conninfo(Some("-c synchronous_commit=off"), None);
        assert_eq!(
            s,
            "application_name=stolon_abc dbname=postgres host=127.0.0.1 \
             options='-c synchronous_commit=off' port=5432 sslmode=prefer user='repl user'"
        );
        assert!(!s.contains("secret"));
        assert!(!format!("{p:?}").contains("secret"));
    }

    #[test]
    fn replication_connection_has_no_default_dbname() {
        let p = ConnParams::new("h", 1, "u");
        assert_eq!(
            p.to_conninfo(None, Some("1")),
            "host=h port=1 replication=1 sslmode=prefer user=u"
        );
    }

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(quote_conninfo_value("a'b\\c"), "'a\\'b\\\\c'");
        assert_eq!(quote_conninfo_value(""), "''");
        assert_eq!(quote_conninfo_value("/tmp/x"), "/tmp/x");
    }

    #[test]
    fn pgpass_escapes() {
        let mut p = ConnParams::new("h", 1, "u:x");
        assert_eq!(p.pgpass_line(), None);
        p.password = Some("p\\w:d".into());
        assert_eq!(p.pgpass_line().unwrap(), "*:*:*:u\\:x:p\\\\w\\:d\n");
    }

    #[test]
    fn connect_timeout_rounds_up_with_minimum() {
        let mut p = ConnParams::new("h", 1, "u");
        p.connect_timeout = Some(Duration::from_millis(500));
        assert!(p.to_conninfo(None, None).contains("connect_timeout=2"));
        p.connect_timeout = Some(Duration::from_millis(5500));
        assert!(p.to_conninfo(None, None).contains("connect_timeout=6"));
    }
}
