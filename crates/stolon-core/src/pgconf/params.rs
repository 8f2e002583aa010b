//! The parameters of `postgresql.conf` (docs/architecture.md §7.2) and the managed-parameter
//! filter. Pure.

use crate::model::{DbSpec, PgParameters, PostgresBinaryVersion};

use super::{quote_conf_value, stolon_name};

/// Parameters stolon sets itself; they are filtered out of what keepers report, and user values
/// for the recovery ones are ignored (stolon writes them from the DB spec).
pub const MANAGED_PARAMETERS: &[&str] = &[
    "unix_socket_directories",
    "wal_keep_segments",
    "wal_keep_size",
    "hot_standby",
    "listen_addresses",
    "port",
    "max_replication_slots",
    "max_wal_senders",
    "wal_log_hints",
    "synchronous_standby_names",
    // Recovery parameters (PostgreSQL >= 12 keeps them in postgresql.conf).
    "primary_conninfo",
    "primary_slot_name",
    "recovery_min_apply_delay",
    "restore_command",
    "recovery_target_timeline",
    "recovery_target",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
    "recovery_target_action",
];

/// Recovery parameters: never taken from user `pgParameters` (7.8: Stolon wrote them as-is).
const RECOVERY_PARAMETERS: &[&str] = &[
    "primary_conninfo",
    "primary_slot_name",
    "recovery_min_apply_delay",
    "restore_command",
    "recovery_target_timeline",
    "recovery_target",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
    "recovery_target_action",
];

/// True when stolon manages `name`.
pub fn is_managed(name: &str) -> bool {
    MANAGED_PARAMETERS.contains(&name)
}

/// `params` without the managed ones (what a keeper reports as the instance's parameters).
pub fn filter_managed(params: &PgParameters) -> PgParameters {
    params
        .iter()
        .filter(|(k, _)| !is_managed(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Everything the parameters depend on.
#[derive(Debug, Clone, Copy)]
pub struct ParamsInput<'a> {
    /// The assigned DB's spec.
    pub spec: &'a DbSpec,
    /// Parameters saved from the instance's own config at init (`dbstate.InitPGParameters`);
    /// used only when `spec.include_previous_config`.
    pub init_parameters: &'a PgParameters,
    /// `--pg-listen-address`.
    pub listen_address: &'a str,
    /// `--pg-port`.
    pub port: u16,
    /// PostgreSQL binary version; `None` when it could not be determined.
    pub version: Option<PostgresBinaryVersion>,
}

/// `wal_level`: `replica` (`hot_standby` before 9.6 or for an unknown version); a user value is
/// honoured only when it is `logical`.
pub fn wal_level(spec: &DbSpec, version: Option<PostgresBinaryVersion>) -> String {
    let default = match version {
        Some(v) if v.maj >= 10 || (v.maj == 9 && v.min >= 6) => "replica",
        _ => "hot_standby",
    };
    match spec.pg_parameters.get("wal_level").map(String::as_str) {
        Some("logical") => "logical".to_string(),
        _ => default.to_string(),
    }
}

/// `synchronous_standby_names` for the spec (§6.7 keeper side): empty unless synchronous
/// replication is on and at least one name is listed; `stolon_<dbuid>` per sync standby followed by
/// the external names; one name plain, several as `N (a,b,c)` (all must acknowledge), or with
/// `synchronousQuorum` k as `ANY k (a,b,c)` (any k of them acknowledge).
pub fn synchronous_standby_names(spec: &DbSpec) -> String {
    if !spec.synchronous_replication {
        return String::new();
    }
    let mut names: Vec<String> = spec
        .synchronous_standbys
        .iter()
        .flatten()
        .map(|u| stolon_name(u))
        .collect();
    names.extend(spec.external_synchronous_standbys.iter().flatten().cloned());
    if names.is_empty() {
        return String::new();
    }
    // Quorum commit: any k of the listed names (k capped at their number). The fake standby
    // never connects, so it is listed only when fewer than k real standbys are, and then the
    // commit still waits for it: it keeps blocking.
    if let Some(k) = spec.synchronous_quorum {
        let k = usize::from(k).clamp(1, names.len());
        return format!("ANY {k} ({})", names.join(","));
    }
    match names.len() {
        1 => names.remove(0),
        n => format!("{n} ({})", names.join(",")),
    }
}

fn wal_keep_segments(spec: &DbSpec) -> String {
    let min = 8u64;
    let user = spec
        .pg_parameters
        .get("wal_keep_segments")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    user.max(min).to_string()
}

/// The parameters to write, by precedence (§7.2): init parameters (only with
/// `includePreviousConfig`) < the spec's `pgParameters` (recovery ones dropped) < mandatory ones <
/// listen address, port, slots, wal senders, `wal_log_hints`, `synchronous_standby_names`.
pub fn postgresql_parameters(input: &ParamsInput<'_>) -> PgParameters {
    let spec = input.spec;
    let mut p = PgParameters::new();
    if spec.include_previous_config {
        p.extend(
            input
                .init_parameters
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
    }
    p.extend(
        spec.pg_parameters
            .iter()
            .filter(|(k, _)| !RECOVERY_PARAMETERS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    // Recovery parameters never come from saved init parameters either.
    p.retain(|k, _| !RECOVERY_PARAMETERS.contains(&k.as_str()));

    // Mandatory.
    p.insert("unix_socket_directories".into(), "/tmp".into());
    p.insert("wal_level".into(), wal_level(spec, input.version));
    p.insert("hot_standby".into(), "on".into());
    if let Some(v) = input.version {
        if v.maj >= 13 {
            p.remove("wal_keep_segments");
            let size = spec
                .pg_parameters
                .get("wal_keep_size")
                .cloned()
                .unwrap_or_else(|| "128".to_string());
            p.insert("wal_keep_size".into(), size);
        } else {
            p.insert("wal_keep_segments".into(), wal_keep_segments(spec));
        }
    }

    p.insert("listen_addresses".into(), input.listen_address.to_string());
    p.insert("port".into(), input.port.to_string());
    p.insert(
        "max_replication_slots".into(),
        spec.max_standbys.to_string(),
    );
    let senders = u32::from(spec.max_standbys) * 2 + 2 + u32::from(spec.additional_wal_senders);
    p.insert("max_wal_senders".into(), senders.to_string());
    if spec.use_pgrewind {
        p.insert("wal_log_hints".into(), "on".into());
    }
    p.insert(
        "synchronous_standby_names".into(),
        synchronous_standby_names(spec),
    );
    p
}

/// `key = 'value'` lines, sorted by key, `'` doubled.
pub fn render_parameters(params: &PgParameters) -> String {
    let mut out = String::new();
    for (k, v) in params {
        out.push_str(k);
        out.push_str(" = ");
        out.push_str(&quote_conf_value(v));
        out.push('\n');
    }
    out
}
