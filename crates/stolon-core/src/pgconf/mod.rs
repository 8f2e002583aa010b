//! PostgreSQL configuration rendering: the parameters a keeper writes to `postgresql.conf`
//! (docs/architecture.md §7.2), the recovery settings and signal file (§7.3, PostgreSQL >= 12),
//! the internal `primary_conninfo`, `pg_hba.conf` (§7.4), `synchronous_standby_names` (§6.7,
//! keeper side) and the managed-parameter filter applied to what keepers report.
//!
//! Pure: inputs in, text or maps out. No IO, no clock. Writing the files is stolon-pg's job.

mod hba;
mod params;
mod recovery;

pub use hba::{AuthMethod, HbaInput, generate_hba, render_hba};
pub use params::{
    MANAGED_PARAMETERS, ParamsInput, filter_managed, is_managed, postgresql_parameters,
    render_parameters, synchronous_standby_names, wal_level,
};
pub use recovery::{
    RecoveryMode, RecoveryOptions, ReplConn, escape_conn_value, internal_primary_conninfo,
    render_postgresql_conf,
};

/// Prefix of every name stolon gives to replication slots and application names.
pub const STOLON_PREFIX: &str = "stolon_";

/// `stolon_<name>`: the replication slot and `application_name` of a DB or an additional slot.
pub fn stolon_name(name: &str) -> String {
    format!("{STOLON_PREFIX}{name}")
}

/// The `<name>` of a `stolon_<name>`, or `None` for names stolon does not own.
pub fn strip_stolon_name(name: &str) -> Option<&str> {
    name.strip_prefix(STOLON_PREFIX)
}

/// Quotes a value for `postgresql.conf`: single quotes with `'` doubled.
pub fn quote_conf_value(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

#[cfg(test)]
mod tests;
