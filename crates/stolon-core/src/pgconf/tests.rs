//! Unit tests of config rendering (ports of Stolon's TestGenerateHBA and friends).

use std::collections::BTreeMap;

use pretty_assertions::assert_eq;

use super::*;
use crate::model::{
    ClusterData, Db, DbRole, DbSpec, DbStatus, PgParameters, PostgresBinaryVersion,
    RecoveryTargetSettings, StandbySettings, SuReplAccessMode,
};

fn v(maj: i64, min: i64) -> Option<PostgresBinaryVersion> {
    Some(PostgresBinaryVersion { maj, min })
}

fn spec() -> DbSpec {
    DbSpec {
        max_standbys: 20,
        additional_wal_senders: 5,
        role: Some(DbRole::Master),
        ..Default::default()
    }
}

fn params(spec: &DbSpec, ver: Option<PostgresBinaryVersion>) -> PgParameters {
    postgresql_parameters(&ParamsInput {
        spec,
        init_parameters: &PgParameters::new(),
        listen_address: "127.0.0.1",
        port: 5432,
        version: ver,
    })
}

#[test]
fn default_parameters_pg15() {
    let p = params(&spec(), v(15, 4));
    let want: PgParameters = [
        ("hot_standby", "on"),
        ("listen_addresses", "127.0.0.1"),
        ("max_replication_slots", "20"),
        ("max_wal_senders", "47"),
        ("port", "5432"),
        ("synchronous_standby_names", ""),
        ("unix_socket_directories", "/tmp"),
        ("wal_keep_size", "128"),
        ("wal_level", "replica"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(p, want);
}

#[test]
fn precedence_init_then_user_then_mandatory() {
    let mut s = spec();
    s.include_previous_config = true;
    s.pg_parameters
        .insert("max_connections".into(), "150".into());
    s.pg_parameters.insert("port".into(), "9999".into());
    s.pg_parameters.insert("hot_standby".into(), "off".into());
    s.pg_parameters
        .insert("primary_conninfo".into(), "host=evil".into());
    let mut init = PgParameters::new();
    init.insert("max_connections".into(), "100".into());
    init.insert("shared_buffers".into(), "128MB".into());
    let p = postgresql_parameters(&ParamsInput {
        spec: &s,
        init_parameters: &init,
        listen_address: "*",
        port: 6000,
        version: v(15, 0),
    });
    assert_eq!(p["max_connections"], "150");
    assert_eq!(p["shared_buffers"], "128MB");
    assert_eq!(p["port"], "6000");
    assert_eq!(p["listen_addresses"], "*");
    assert_eq!(p["hot_standby"], "on");
    assert!(!p.contains_key("primary_conninfo"));
    // Without includePreviousConfig the init parameters are ignored.
    s.include_previous_config = false;
    let p = postgresql_parameters(&ParamsInput {
        spec: &s,
        init_parameters: &init,
        listen_address: "*",
        port: 6000,
        version: v(15, 0),
    });
    assert!(!p.contains_key("shared_buffers"));
}

#[test]
fn wal_level_rules() {
    let mut s = spec();
    assert_eq!(wal_level(&s, v(15, 0)), "replica");
    assert_eq!(wal_level(&s, v(9, 6)), "replica");
    assert_eq!(wal_level(&s, v(9, 5)), "hot_standby");
    assert_eq!(wal_level(&s, None), "hot_standby");
    s.pg_parameters.insert("wal_level".into(), "archive".into());
    assert_eq!(wal_level(&s, v(15, 0)), "replica");
    s.pg_parameters.insert("wal_level".into(), "minimal".into());
    assert_eq!(wal_level(&s, v(15, 0)), "replica");
    s.pg_parameters.insert("wal_level".into(), "logical".into());
    assert_eq!(wal_level(&s, v(15, 0)), "logical");
}

#[test]
fn wal_keep_rules() {
    let mut s = spec();
    // pg < 13: wal_keep_segments = max(8, user integer).
    assert_eq!(params(&s, v(12, 0))["wal_keep_segments"], "8");
    s.pg_parameters
        .insert("wal_keep_segments".into(), "20".into());
    assert_eq!(params(&s, v(12, 0))["wal_keep_segments"], "20");
    s.pg_parameters
        .insert("wal_keep_segments".into(), "5".into());
    assert_eq!(params(&s, v(12, 0))["wal_keep_segments"], "8");
    s.pg_parameters
        .insert("wal_keep_segments".into(), "badvalue".into());
    assert_eq!(params(&s, v(12, 0))["wal_keep_segments"], "8");
    assert!(!params(&s, v(12, 0)).contains_key("wal_keep_size"));
    // pg >= 13: wal_keep_size verbatim or 128.
    let p = params(&s, v(13, 0));
    assert_eq!(p["wal_keep_size"], "128");
    assert!(!p.contains_key("wal_keep_segments"));
    s.pg_parameters.insert("wal_keep_size".into(), "1GB".into());
    assert_eq!(params(&s, v(16, 0))["wal_keep_size"], "1GB");
    // Unknown version: stolon sets neither.
    let p = params(&spec(), None);
    assert!(!p.contains_key("wal_keep_size") && !p.contains_key("wal_keep_segments"));
}

#[test]
fn wal_senders_slots_and_log_hints() {
    let mut s = spec();
    s.max_standbys = 3;
    s.additional_wal_senders = 1;
    let p = params(&s, v(15, 0));
    assert_eq!(p["max_wal_senders"], "9");
    assert_eq!(p["max_replication_slots"], "3");
    assert!(!p.contains_key("wal_log_hints"));
    s.use_pgrewind = true;
    assert_eq!(params(&s, v(15, 0))["wal_log_hints"], "on");
}

#[test]
fn sync_standby_names() {
    let mut s = spec();
    s.synchronous_standbys = Some(vec!["a1".into()]);
    assert_eq!(synchronous_standby_names(&s), "");
    s.synchronous_replication = true;
    assert_eq!(synchronous_standby_names(&s), "stolon_a1");
    s.synchronous_standbys = Some(vec!["a1".into(), "b2".into()]);
    s.external_synchronous_standbys = Some(vec!["stolonfakestandby".into()]);
    assert_eq!(
        synchronous_standby_names(&s),
        "3 (stolon_a1,stolon_b2,stolonfakestandby)"
    );
    s.synchronous_standbys = Some(vec![]);
    s.external_synchronous_standbys = Some(vec!["stolonfakestandby".into()]);
    assert_eq!(synchronous_standby_names(&s), "stolonfakestandby");
    s.external_synchronous_standbys = None;
    assert_eq!(synchronous_standby_names(&s), "");
    s.synchronous_standbys = Some(vec!["a1".into()]);
    assert_eq!(
        params(&s, v(15, 0))["synchronous_standby_names"],
        "stolon_a1"
    );
}

#[test]
fn quorum_sync_standby_names() {
    let mut s = spec();
    s.synchronous_replication = true;
    s.synchronous_quorum = Some(1);
    s.synchronous_standbys = Some(vec!["a".into(), "b".into()]);
    assert_eq!(synchronous_standby_names(&s), "ANY 1 (stolon_a,stolon_b)");
    s.synchronous_quorum = Some(2);
    assert_eq!(synchronous_standby_names(&s), "ANY 2 (stolon_a,stolon_b)");
    // k is capped at the number of names.
    s.synchronous_quorum = Some(5);
    assert_eq!(synchronous_standby_names(&s), "ANY 2 (stolon_a,stolon_b)");
    // The fake standby still blocks: with fewer real standbys than k it is one of the k.
    s.synchronous_quorum = Some(2);
    s.synchronous_standbys = Some(vec!["a".into()]);
    s.external_synchronous_standbys = Some(vec!["stolonfakestandby".into()]);
    assert_eq!(
        synchronous_standby_names(&s),
        "ANY 2 (stolon_a,stolonfakestandby)"
    );
    s.synchronous_standbys = Some(vec![]);
    s.synchronous_quorum = Some(1);
    assert_eq!(synchronous_standby_names(&s), "ANY 1 (stolonfakestandby)");
    // Nothing listed: nothing to wait for, whatever k.
    s.external_synchronous_standbys = None;
    assert_eq!(synchronous_standby_names(&s), "");
    // Not synchronous: empty.
    s.synchronous_replication = false;
    s.synchronous_standbys = Some(vec!["a".into()]);
    assert_eq!(synchronous_standby_names(&s), "");
}

#[test]
fn render_quotes_and_sorts() {
    let mut p = PgParameters::new();
    p.insert("b".into(), "it's".into());
    p.insert("a".into(), "".into());
    assert_eq!(render_parameters(&p), "a = ''\nb = 'it''s'\n");
}

#[test]
fn managed_filter() {
    let mut p = PgParameters::new();
    for k in [
        "port",
        "max_connections",
        "primary_conninfo",
        "wal_log_hints",
        "work_mem",
    ] {
        p.insert(k.into(), "x".into());
    }
    let f = filter_managed(&p);
    assert_eq!(
        f.keys().cloned().collect::<Vec<_>>(),
        vec!["max_connections", "work_mem"]
    );
}

#[test]
fn recovery_options_and_conf() {
    let ss = StandbySettings {
        primary_conninfo: "host=h port=1".into(),
        primary_slot_name: "stolon_x".into(),
        recovery_min_apply_delay: String::new(),
    };
    let r = RecoveryOptions::new(RecoveryMode::Standby, Some(&ss), None, None);
    let want: BTreeMap<String, String> = [
        ("primary_conninfo", "host=h port=1"),
        ("primary_slot_name", "stolon_x"),
        ("recovery_target_timeline", "latest"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(r.parameters, want);
    let mut p = PgParameters::new();
    p.insert("port".into(), "5".into());
    let conf = render_postgresql_conf(&p, &r);
    assert!(
        conf.ends_with(
            "port = '5'\nprimary_conninfo = 'host=h port=1'\nprimary_slot_name = 'stolon_x'\n"
        ),
        "{conf}"
    );
    // Mode none: recovery parameters are not written.
    let conf = render_postgresql_conf(&p, &RecoveryOptions::none());
    assert!(!conf.contains("recovery_target_timeline"));

    let t = RecoveryTargetSettings {
        recovery_target_time: "2024-01-01 00:00:00".into(),
        ..Default::default()
    };
    let r = RecoveryOptions::new(RecoveryMode::Recovery, None, None, Some(&t));
    assert_eq!(r.parameters["recovery_target_action"], "promote");
    assert_eq!(r.parameters["recovery_target_time"], "2024-01-01 00:00:00");
    assert!(!r.parameters.contains_key("recovery_target_timeline"));
}

#[test]
fn primary_conninfo_sorted_and_escaped() {
    let c = ReplConn {
        host: "10.0.0.1".into(),
        port: "5432".into(),
        user: "repl user".into(),
        password: Some("pa'ss\\w".into()),
        passfile: None,
        application_name: "stolon_abc".into(),
    };
    assert_eq!(
        internal_primary_conninfo(&c),
        r"application_name=stolon_abc host=10.0.0.1 password=pa\'ss\\w port=5432 sslmode=prefer user=repl\ user"
    );
    let c = ReplConn {
        password: None,
        passfile: Some("/d/pgpass".into()),
        ..c
    };
    assert_eq!(
        internal_primary_conninfo(&c),
        r"application_name=stolon_abc host=10.0.0.1 passfile=/d/pgpass port=5432 sslmode=prefer user=repl\ user"
    );
    assert!(!format!("{c:?}").contains("pa'ss"));
}

fn hba_cd() -> ClusterData {
    let mut cd: ClusterData =
        serde_json::from_str(r#"{"formatVersion":1,"cluster":{"spec":{}}}"#).unwrap();
    for (uid, addr) in [
        ("db1", "192.168.0.1"),
        ("db2", "192.168.0.2"),
        ("db3", "192.168.0.3"),
    ] {
        cd.dbs.insert(
            uid.into(),
            Db {
                uid: uid.into(),
                status: DbStatus {
                    listen_address: addr.into(),
                    ..Default::default()
                },
                ..Default::default()
            },
        );
    }
    cd
}

fn hba(
    cd: &ClusterData,
    spec: &DbSpec,
    mode: SuReplAccessMode,
    only_internal: bool,
) -> Vec<String> {
    generate_hba(&HbaInput {
        cd,
        db_uid: "db1",
        spec,
        access_mode: mode,
        su_username: "superuser",
        su_auth: AuthMethod::Md5,
        repl_username: "repluser",
        repl_auth: AuthMethod::Md5,
        only_internal,
    })
}

fn lines(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn generate_hba_all_default_rules() {
    let cd = hba_cd();
    assert_eq!(
        hba(&cd, &spec(), SuReplAccessMode::All, false),
        lines(&[
            "local postgres superuser md5",
            "local replication repluser md5",
            "host all superuser 0.0.0.0/0 md5",
            "host all superuser ::0/0 md5",
            "host replication repluser 0.0.0.0/0 md5",
            "host replication repluser ::0/0 md5",
            "host all all 0.0.0.0/0 md5",
            "host all all ::0/0 md5",
        ])
    );
}

#[test]
fn generate_hba_empty_pg_hba_adds_nothing() {
    let cd = hba_cd();
    let mut s = spec();
    s.pg_hba = Some(vec![]);
    assert_eq!(
        hba(&cd, &s, SuReplAccessMode::All, false),
        lines(&[
            "local postgres superuser md5",
            "local replication repluser md5",
            "host all superuser 0.0.0.0/0 md5",
            "host all superuser ::0/0 md5",
            "host replication repluser 0.0.0.0/0 md5",
            "host replication repluser ::0/0 md5",
        ])
    );
}

#[test]
fn generate_hba_custom_entries_verbatim() {
    let cd = hba_cd();
    let mut s = spec();
    s.pg_hba = Some(vec!["host all all 10.0.0.0/8 trust".into()]);
    let h = hba(&cd, &s, SuReplAccessMode::All, false);
    assert_eq!(h.last().unwrap(), "host all all 10.0.0.0/8 trust");
    assert_eq!(h.len(), 7);
}

#[test]
fn generate_hba_strict_master_lists_other_dbs() {
    let cd = hba_cd();
    assert_eq!(
        hba(&cd, &spec(), SuReplAccessMode::Strict, false),
        lines(&[
            "local postgres superuser md5",
            "local replication repluser md5",
            "host all superuser 192.168.0.2/32 md5",
            "host replication repluser 192.168.0.2/32 md5",
            "host all superuser 192.168.0.3/32 md5",
            "host replication repluser 192.168.0.3/32 md5",
            "host all all 0.0.0.0/0 md5",
            "host all all ::0/0 md5",
        ])
    );
}

#[test]
fn generate_hba_strict_standby_gets_no_host_rules() {
    let cd = hba_cd();
    let mut s = spec();
    s.role = Some(DbRole::Standby);
    assert_eq!(
        hba(&cd, &s, SuReplAccessMode::Strict, false),
        lines(&[
            "local postgres superuser md5",
            "local replication repluser md5",
            "host all all 0.0.0.0/0 md5",
            "host all all ::0/0 md5",
        ])
    );
}

#[test]
fn generate_hba_only_internal_drops_user_rules() {
    let cd = hba_cd();
    let mut s = spec();
    s.pg_hba = Some(vec!["host all all 10.0.0.0/8 md5".into()]);
    let h = hba(&cd, &s, SuReplAccessMode::All, true);
    assert_eq!(h.len(), 6);
    assert!(!h.iter().any(|l| l.starts_with("host all all")));
}

#[test]
fn generate_hba_auth_methods() {
    let cd = hba_cd();
    let h = generate_hba(&HbaInput {
        cd: &cd,
        db_uid: "db1",
        spec: &spec(),
        access_mode: SuReplAccessMode::All,
        su_username: "su",
        su_auth: AuthMethod::ScramSha256,
        repl_username: "r",
        repl_auth: AuthMethod::Trust,
        only_internal: true,
    });
    assert_eq!(h[0], "local postgres su scram-sha-256");
    assert_eq!(h[1], "local replication r trust");
    assert_eq!(
        render_hba(&h[..2]),
        "local postgres su scram-sha-256\nlocal replication r trust\n"
    );
    assert_eq!(
        "scram-sha-256".parse::<AuthMethod>(),
        Ok(AuthMethod::ScramSha256)
    );
    assert!("password".parse::<AuthMethod>().is_err());
}

#[test]
fn stolon_names() {
    assert_eq!(stolon_name("abc"), "stolon_abc");
    assert_eq!(strip_stolon_name("stolon_abc"), Some("abc"));
    assert_eq!(strip_stolon_name("manual"), None);
    assert_eq!(quote_conf_value("a'b"), "'a''b'");
}
