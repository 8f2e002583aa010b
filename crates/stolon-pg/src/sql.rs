//! SQL over tokio-postgres: connecting (local unix socket or TCP, NoTls, bounded by a timeout)
//! and the handful of queries the keeper needs. Statements carrying passwords run with
//! `log_statement` and `log_min_error_statement` silenced and never appear in our errors.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use stolon_core::keeper::restart_relevant;
use tokio_postgres::{Client, NoTls};

use crate::conninfo::ConnParams;
use crate::ctl::{RoleDef, SystemIdentity, WalPosition};
use crate::error::PgError;
use crate::lsn::Lsn;

/// Connects over the unix socket in `socket_dir` (socket file `.s.PGSQL.<port>`).
pub(crate) async fn connect_local(
    socket_dir: &Path,
    port: u16,
    user: &str,
    password: Option<&str>,
    timeout: Duration,
) -> Result<Client, PgError> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host_path(socket_dir)
        .port(port)
        .user(user)
        .dbname("postgres")
        .connect_timeout(timeout);
    if let Some(pw) = password {
        cfg.password(pw);
    }
    connect(cfg, format!("{}:{port}", socket_dir.display()), timeout).await
}

/// Connects over TCP (or a socket dir when `host` starts with `/`) to another server.
pub(crate) async fn connect_remote(p: &ConnParams, timeout: Duration) -> Result<Client, PgError> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&p.host)
        .port(p.port)
        .user(&p.user)
        .dbname(p.dbname.as_deref().unwrap_or("postgres"))
        .connect_timeout(timeout);
    if let Some(app) = &p.application_name {
        cfg.application_name(app);
    }
    if let Some(pw) = &p.password {
        cfg.password(pw);
    }
    connect(cfg, format!("{}:{}", p.host, p.port), timeout).await
}

async fn connect(
    cfg: tokio_postgres::Config,
    target: String,
    timeout: Duration,
) -> Result<Client, PgError> {
    let (client, conn) = match tokio::time::timeout(timeout, cfg.connect(NoTls)).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(source)) => return Err(PgError::Connect { target, source }),
        Err(_) => return Err(PgError::ConnectTimeout { target, timeout }),
    };
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

fn sql(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> PgError {
    move |source| PgError::Sql { what, source }
}

pub(crate) async fn select_one(c: &Client) -> Result<(), PgError> {
    c.simple_query("select 1").await.map_err(sql("select 1"))?;
    Ok(())
}

/// Quotes an SQL identifier.
pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes an SQL string literal (valid with `standard_conforming_strings = on`).
pub(crate) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Builds `CREATE ROLE` / `ALTER ROLE` text.
pub(crate) fn role_statement(role: &RoleDef, create: bool) -> Result<String, PgError> {
    if role.name.is_empty() || role.name.contains('\0') {
        return Err(PgError::InvalidInput {
            what: "role name",
            reason: "empty or contains NUL".into(),
        });
    }
    let mut s = format!(
        "{} role {} with",
        if create { "create" } else { "alter" },
        quote_ident(&role.name)
    );
    s.push_str(if role.login { " login" } else { " nologin" });
    s.push_str(if role.replication {
        " replication"
    } else {
        " noreplication"
    });
    if let Some(pw) = &role.password {
        if pw.contains('\0') {
            return Err(PgError::InvalidInput {
                what: "role password",
                reason: "contains NUL".into(),
            });
        }
        s.push_str(" password ");
        s.push_str(&quote_literal(pw));
    }
    Ok(s)
}

/// Creates or alters a role in its own transaction with statement logging off.
pub(crate) async fn apply_role(
    c: &mut Client,
    role: &RoleDef,
    create: bool,
) -> Result<(), PgError> {
    let stmt = role_statement(role, create)?;
    let what = if create { "create role" } else { "alter role" };
    let tx = c.transaction().await.map_err(sql(what))?;
    tx.batch_execute(
        "set local log_statement = 'none'; \
         set local log_min_error_statement = 'panic'; \
         set local standard_conforming_strings = on",
    )
    .await
    .map_err(sql(what))?;
    tx.batch_execute(&stmt).await.map_err(sql(what))?;
    tx.commit().await.map_err(sql(what))
}

pub(crate) async fn file_settings(c: &Client) -> Result<BTreeMap<String, String>, PgError> {
    let what = "read pg_file_settings";
    let rows = c
        .query(
            "select name, setting from pg_file_settings \
             where name is not null and setting is not null order by seqno",
            &[],
        )
        .await
        .map_err(sql(what))?;
    let mut out = BTreeMap::new();
    for r in rows {
        let name: String = r.try_get(0).map_err(sql(what))?;
        let setting: String = r.try_get(1).map_err(sql(what))?;
        out.insert(name, setting);
    }
    Ok(out)
}

/// `stolon_<x>` standbys in sync state `sync`, as `<x>`, sorted and deduplicated.
pub(crate) async fn in_sync_standbys(c: &Client) -> Result<Vec<String>, PgError> {
    let what = "read pg_stat_replication";
    let rows = c
        .query(
            "select application_name, sync_state from pg_stat_replication",
            &[],
        )
        .await
        .map_err(sql(what))?;
    let mut pairs = Vec::with_capacity(rows.len());
    for r in rows {
        let app: Option<String> = r.try_get(0).map_err(sql(what))?;
        let state: Option<String> = r.try_get(1).map_err(sql(what))?;
        pairs.push((app.unwrap_or_default(), state.unwrap_or_default()));
    }
    Ok(filter_in_sync(pairs))
}

pub(crate) fn filter_in_sync(pairs: Vec<(String, String)>) -> Vec<String> {
    let mut out: Vec<String> = pairs
        .into_iter()
        // `sync` under `N (...)` or `FIRST N (...)`; `quorum` for every streaming standby listed
        // under `ANY N (...)`.
        .filter(|(_, state)| state == "sync" || state == "quorum")
        .filter_map(|(app, _)| app.strip_prefix("stolon_").map(str::to_string))
        .filter(|s| !s.is_empty())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Whether a changed parameter waits for a restart: any `pg_settings` row with
/// `pending_restart` whose name [`restart_relevant`] counts (recovery parameters do not; the
/// rule is stolon-core's).
pub(crate) async fn pending_restart(c: &Client) -> Result<bool, PgError> {
    let what = "read pg_settings.pending_restart";
    let rows = c
        .query(
            "select name::text from pg_settings where pending_restart",
            &[],
        )
        .await
        .map_err(sql(what))?;
    let names = rows
        .iter()
        .map(|r| r.try_get::<_, String>(0).map_err(sql(what)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(any_restart_relevant(&names))
}

/// Whether any of the `pending_restart` parameter names counts ([`restart_relevant`]).
pub(crate) fn any_restart_relevant(names: &[String]) -> bool {
    names.iter().any(|n| restart_relevant(n))
}

pub(crate) async fn replication_slots(c: &Client) -> Result<Vec<String>, PgError> {
    let what = "list replication slots";
    let rows = c
        .query(
            "select slot_name::text from pg_replication_slots \
             where temporary is false order by 1",
            &[],
        )
        .await
        .map_err(sql(what))?;
    rows.iter()
        .map(|r| r.try_get::<_, String>(0).map_err(sql(what)))
        .collect()
}

pub(crate) async fn create_slot(c: &Client, name: &str) -> Result<(), PgError> {
    c.execute(
        "select 1 from pg_create_physical_replication_slot($1::text::name)",
        &[&name],
    )
    .await
    .map_err(sql("create replication slot"))?;
    Ok(())
}

pub(crate) async fn drop_slot(c: &Client, name: &str) -> Result<(), PgError> {
    c.execute(
        "select 1 from pg_drop_replication_slot($1::text::name)",
        &[&name],
    )
    .await
    .map_err(sql("drop replication slot"))?;
    Ok(())
}

pub(crate) async fn checkpoint(c: &Client) -> Result<(), PgError> {
    c.batch_execute("CHECKPOINT")
        .await
        .map_err(sql("checkpoint"))
}

pub(crate) async fn is_in_recovery(c: &Client) -> Result<bool, PgError> {
    let what = "query pg_is_in_recovery()";
    let row = c
        .query_one("select pg_is_in_recovery()", &[])
        .await
        .map_err(sql(what))?;
    row.try_get(0).map_err(sql(what))
}

fn parse_lsn(what: &'static str, s: Option<String>) -> Result<Option<Lsn>, PgError> {
    s.map(|s| {
        s.parse().map_err(|_| PgError::Parse {
            what,
            output: s.clone(),
        })
    })
    .transpose()
}

pub(crate) async fn wal_position(c: &Client) -> Result<WalPosition, PgError> {
    let what = "query WAL position";
    if is_in_recovery(c).await? {
        let row = c
            .query_one(
                "select pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text",
                &[],
            )
            .await
            .map_err(sql(what))?;
        Ok(WalPosition::Standby {
            receive: parse_lsn("receive LSN", row.try_get(0).map_err(sql(what))?)?,
            replay: parse_lsn("replay LSN", row.try_get(1).map_err(sql(what))?)?,
        })
    } else {
        let row = c
            .query_one("select pg_current_wal_lsn()::text", &[])
            .await
            .map_err(sql(what))?;
        let current =
            parse_lsn("current LSN", row.try_get(0).map_err(sql(what))?)?.ok_or_else(|| {
                PgError::Parse {
                    what: "current LSN",
                    output: "NULL".into(),
                }
            })?;
        Ok(WalPosition::Primary { current })
    }
}

/// IDENTIFY_SYSTEM's three values read over SQL, in one query, on a primary: the system id,
/// the WAL insert timeline (the timeline of `pg_walfile_name(pg_current_wal_lsn())`, which is
/// what IDENTIFY_SYSTEM reports when not in recovery) and `pg_current_wal_flush_lsn()` (its
/// flush position). `None` while the server is in recovery: a standby's IDENTIFY_SYSTEM
/// reports its replay timeline, which SQL does not expose.
pub(crate) async fn primary_identity(c: &Client) -> Result<Option<SystemIdentity>, PgError> {
    let what = "read system identity";
    // CASE keeps the WAL functions (volatile, so never pre-evaluated) from running in
    // recovery, where they raise an error. Recovery cannot start again without a restart, so
    // a NULL in either column means "in recovery" whatever the order of evaluation.
    let row = c
        .query_one(
            "select s.system_identifier, \
               case when pg_is_in_recovery() then null \
                    else pg_walfile_name(pg_current_wal_lsn()) end, \
               case when pg_is_in_recovery() then null \
                    else pg_current_wal_flush_lsn()::text end \
             from pg_control_system() s",
            &[],
        )
        .await
        .map_err(sql(what))?;
    let system_id: i64 = row.try_get(0).map_err(sql(what))?;
    let walfile: Option<String> = row.try_get(1).map_err(sql(what))?;
    let flush: Option<String> = row.try_get(2).map_err(sql(what))?;
    let (Some(walfile), Some(flush)) = (walfile, flush) else {
        return Ok(None);
    };
    let timeline = walfile_timeline(&walfile).ok_or_else(|| PgError::Parse {
        what: "WAL file name",
        output: walfile.clone(),
    })?;
    let xlog_pos = parse_lsn("flush LSN", Some(flush))?.ok_or_else(|| PgError::Parse {
        what: "flush LSN",
        output: "NULL".into(),
    })?;
    Ok(Some(SystemIdentity {
        // int8 in SQL, uint64 in the control file: same bits.
        system_id: system_id.cast_unsigned(),
        timeline,
        xlog_pos,
    }))
}

/// The timeline of a WAL file name: its first 8 hex digits.
pub(crate) fn walfile_timeline(name: &str) -> Option<u32> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(&name[..8], 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_statements_quote_everything() {
        let r = RoleDef {
            name: "we\"ird".into(),
            login: true,
            replication: true,
            password: Some("it's\\x".into()),
        };
        assert_eq!(
            role_statement(&r, true).unwrap(),
            "create role \"we\"\"ird\" with login replication password 'it''s\\x'"
        );
        let r = RoleDef {
            name: "su".into(),
            login: true,
            replication: false,
            password: None,
        };
        assert_eq!(
            role_statement(&r, false).unwrap(),
            "alter role \"su\" with login noreplication"
        );
        let bad = RoleDef {
            name: String::new(),
            ..r
        };
        assert!(role_statement(&bad, false).is_err());
    }

    #[test]
    fn pending_restart_ignores_recovery_parameters() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(!any_restart_relevant(&[]));
        assert!(!any_restart_relevant(&names(&[
            "primary_conninfo",
            "primary_slot_name",
            "restore_command",
            "recovery_target_timeline",
        ])));
        assert!(any_restart_relevant(&names(&[
            "recovery_target_timeline",
            "shared_buffers",
        ])));
        assert!(any_restart_relevant(&names(&["max_connections"])));
    }

    #[test]
    fn walfile_timelines() {
        assert_eq!(walfile_timeline("000000010000000000000003"), Some(1));
        assert_eq!(walfile_timeline("0000002A00000001000000FF"), Some(42));
        assert_eq!(walfile_timeline("FFFFFFFF0000000000000000"), Some(u32::MAX));
        assert_eq!(walfile_timeline("00000001000000000000003"), None);
        assert_eq!(walfile_timeline("0000000100000000000000XY"), None);
        assert_eq!(walfile_timeline(""), None);
    }

    #[test]
    fn in_sync_filter() {
        let got = filter_in_sync(vec![
            ("stolon_b".into(), "sync".into()),
            ("stolon_a".into(), "sync".into()),
            ("stolon_c".into(), "async".into()),
            ("stolon_d".into(), "potential".into()),
            ("stolon_e".into(), "quorum".into()),
            ("other".into(), "sync".into()),
            ("stolon_".into(), "sync".into()),
            ("stolon_a".into(), "sync".into()),
        ]);
        assert_eq!(got, vec!["a".to_string(), "b".to_string(), "e".to_string()]);
    }
}
