//! SQL helpers over tokio-postgres: connect to a keeper's instance or through the proxy with the
//! test superuser, run a statement, read one value; every call bounded by a timeout.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// Superuser of the test clusters (as in Stolon's integration tests).
pub const SU_USER: &str = "stolon_superuser";
/// Its password.
pub const SU_PASSWORD: &str = "stolon_superuserpassword";
/// Replication user of the test clusters.
pub const REPL_USER: &str = "stolon_repluser";
/// Its password.
pub const REPL_PASSWORD: &str = "stolon_replpassword";

/// Bound on connecting plus one statement.
pub const SQL_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `127.0.0.1:port` as `user` (database `postgres`).
pub async fn connect_as(port: u16, user: &str, password: &str) -> Result<Client> {
    connect_to("127.0.0.1", port, user, password).await
}

/// Connects to `host:port` as `user` (database `postgres`).
pub async fn connect_to(host: &str, port: u16, user: &str, password: &str) -> Result<Client> {
    let conninfo = format!(
        "host={host} port={port} user={user} dbname=postgres connect_timeout=5 \
         application_name=stolon-it"
    );
    let mut cfg: tokio_postgres::Config = conninfo.parse().context("conninfo")?;
    cfg.password(password);
    let fut = cfg.connect(NoTls);
    let (client, conn) = tokio::time::timeout(SQL_TIMEOUT, fut)
        .await
        .map_err(|_| anyhow!("connect to {host}:{port}: timed out"))?
        .with_context(|| format!("connect to {host}:{port} as {user}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Connects to `127.0.0.1:port` as the test superuser.
pub async fn connect(port: u16) -> Result<Client> {
    connect_as(port, SU_USER, SU_PASSWORD).await
}

/// Runs `sql` (one or more statements, simple protocol) on a fresh connection; returns the rows
/// of the last result as text.
pub async fn query_rows(port: u16, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
    let client = connect(port).await?;
    run_on(&client, sql).await
}

/// Runs `sql` (simple protocol) on `client`, bounded by [`SQL_TIMEOUT`].
pub async fn run_on(client: &Client, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
    let msgs = tokio::time::timeout(SQL_TIMEOUT, client.simple_query(sql))
        .await
        .map_err(|_| anyhow!("{sql:?}: timed out"))?
        .with_context(|| format!("{sql:?}"))?;
    let mut rows = Vec::new();
    for m in msgs {
        match m {
            SimpleQueryMessage::Row(r) => {
                rows.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
            }
            SimpleQueryMessage::CommandComplete(_) => {}
            _ => {}
        }
    }
    Ok(rows)
}

/// [`query_rows`] on `host:port` as the test superuser.
pub async fn query_rows_at(host: &str, port: u16, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
    let client = connect_to(host, port, SU_USER, SU_PASSWORD).await?;
    run_on(&client, sql).await
}

/// The first column of the first row of `sql` on a fresh connection to `host:port`.
pub async fn query_value_at(host: &str, port: u16, sql: &str) -> Result<String> {
    let rows = query_rows_at(host, port, sql).await?;
    rows.first()
        .and_then(|r| r.first().cloned().flatten())
        .with_context(|| format!("{sql:?} returned no value"))
}

/// The first column of the first row of `sql` on a fresh connection to `port`.
pub async fn query_value(port: u16, sql: &str) -> Result<String> {
    let rows = query_rows(port, sql).await?;
    rows.first()
        .and_then(|r| r.first().cloned().flatten())
        .with_context(|| format!("{sql:?} returned no value"))
}

/// `pg_settings.setting` of `name` on the instance at `port`.
pub async fn setting(port: u16, name: &str) -> Result<String> {
    query_value(
        port,
        &format!("select setting from pg_settings where name = '{name}'"),
    )
    .await
}

/// `pg_settings.setting` of `name` when it comes from a configuration file, else `None`.
pub async fn setting_from_conf_file(port: u16, name: &str) -> Result<Option<String>> {
    let rows = query_rows(
        port,
        &format!(
            "select setting from pg_settings where name = '{name}' \
             and source = 'configuration file'"
        ),
    )
    .await?;
    Ok(rows
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next().flatten()))
}

/// Executes `sql` on a fresh connection to `port`.
pub async fn exec(port: u16, sql: &str) -> Result<()> {
    query_rows(port, sql).await.map(|_| ())
}

/// The text of an error chain on one line (for "last error" messages).
pub fn err_line(e: &anyhow::Error) -> String {
    format!("{e:#}")
}
