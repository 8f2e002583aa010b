//! What stolonctl decides, as pure functions: the clusterdata that `init`, `update`,
//! `failkeeper`, `removekeeper` and `promote` write, and the checks on what was read.
//!
//! No IO, no clock, no randomness: uids and times are passed in. Every error is one line of text
//! naming what is wrong (Stolon's wording where it has one).

use anyhow::{Context, anyhow, bail};
use serde_json::Value;
use stolon_core::Timestamp;
use stolon_core::model::json;
use stolon_core::model::{
    CURRENT_FORMAT_VERSION, Cluster, ClusterData, ClusterInitMode, ClusterPhase, ClusterRole,
    ClusterSpec, ClusterStatus, INITIAL_GENERATION, SpecDecodeError, decode_spec,
    decode_spec_value,
};

/// Checks clusterdata the way Stolon's `getClusterData` does before any command uses it: present,
/// format version 1, a cluster with a spec, and the spec valid.
pub fn check_cluster_data(cd: Option<ClusterData>) -> anyhow::Result<ClusterData> {
    let Some(cd) = cd else {
        bail!("nil cluster data");
    };
    if cd.format_version != CURRENT_FORMAT_VERSION {
        bail!(
            "unsupported cluster data format version {}",
            cd.format_version
        );
    }
    let spec = cd
        .cluster
        .as_ref()
        .and_then(|c| c.spec.as_ref())
        .ok_or_else(|| anyhow!("no cluster spec available"))?;
    spec.validate()
        .map_err(|e| anyhow!("clusterdata validation failed: {e}"))?;
    Ok(cd)
}

/// The spec of clusterdata that passed [`check_cluster_data`].
fn spec_of(cd: &ClusterData) -> anyhow::Result<&ClusterSpec> {
    cd.cluster
        .as_ref()
        .and_then(|c| c.spec.as_ref())
        .ok_or_else(|| anyhow!("no cluster spec available"))
}

/// Parses the spec given to `init` (`None` or empty: the default `{"initMode":"new"}`) and
/// validates it.
pub fn init_spec(data: Option<&[u8]>) -> anyhow::Result<ClusterSpec> {
    let spec = match data {
        Some(d) if !d.is_empty() => match decode_spec(d) {
            Ok(s) => s,
            Err(SpecDecodeError::Json(e)) => bail!("failed to unmarshal cluster spec: {e}"),
            Err(SpecDecodeError::Invalid(e)) => bail!("invalid cluster spec: {e}"),
        },
        _ => ClusterSpec::new_init(ClusterInitMode::New),
    };
    spec.validate()
        .map_err(|e| anyhow!("invalid cluster spec: {e}"))?;
    Ok(spec)
}

/// The brand-new clusterdata `init` writes: a new cluster `uid`, generation 1, phase
/// initializing, no keepers, no DBs, an empty proxy.
pub fn init_cluster_data(spec: ClusterSpec, uid: String, now: Timestamp) -> ClusterData {
    let cluster = Cluster {
        uid,
        generation: INITIAL_GENERATION,
        change_time: now,
        spec: Some(spec),
        status: ClusterStatus {
            phase: Some(ClusterPhase::Initializing),
            ..Default::default()
        },
    };
    ClusterData::new(cluster, now)
}

/// The spec `update` proposes: with `patch`, `data` is an RFC 7386 merge patch applied to the
/// current *raw* spec (unset fields stay unset); otherwise `data` is the whole new spec.
pub fn proposed_spec(
    current: &ClusterSpec,
    data: &[u8],
    patch: bool,
) -> anyhow::Result<ClusterSpec> {
    if !patch {
        return decode_spec(data).map_err(|e| match e {
            SpecDecodeError::Json(e) => anyhow!("failed to unmarshal cluster spec: {e}"),
            SpecDecodeError::Invalid(e) => {
                anyhow!("Cannot update cluster spec: invalid cluster spec: {e}")
            }
        });
    }
    let p: Value = serde_json::from_slice(data)
        .map_err(|e| anyhow!("failed to patch cluster spec: invalid patch: {e}"))?;
    let mut raw = serde_json::to_value(current).context("failed to marshal cluster spec")?;
    json::merge_patch::<ClusterSpec>(&mut raw, &p);
    decode_spec_value(raw).map_err(|e| match e {
        SpecDecodeError::Json(e) => anyhow!("failed to patch cluster spec: patched spec: {e}"),
        SpecDecodeError::Invalid(e) => {
            anyhow!("Cannot update cluster spec: invalid cluster spec: {e}")
        }
    })
}

/// `cd` with its spec replaced by `new`, if the update rules allow it.
pub fn update_spec(cd: &ClusterData, new: ClusterSpec) -> anyhow::Result<ClusterData> {
    spec_of(cd)?
        .check_update(&new)
        .map_err(|e| anyhow!("Cannot update cluster spec: {e}"))?;
    let mut next = cd.clone();
    if let Some(c) = next.cluster.as_mut() {
        c.spec = Some(new);
    }
    Ok(next)
}

/// `cd` with keeper `uid` marked force-failed (one shot: the sentinel resets it).
pub fn fail_keeper(cd: &ClusterData, uid: &str) -> anyhow::Result<ClusterData> {
    let mut next = cd.clone();
    let keeper = next
        .keepers
        .get_mut(uid)
        .ok_or_else(|| anyhow!("keeper doesn't exist"))?;
    keeper.status.force_fail = true;
    Ok(next)
}

/// `cd` without keeper `uid` and its DB; refused when that DB is the current master.
pub fn remove_keeper(cd: &ClusterData, uid: &str) -> anyhow::Result<ClusterData> {
    if !cd.keepers.contains_key(uid) {
        bail!("keeper doesn't exist");
    }
    let master = cd
        .cluster
        .as_ref()
        .map(|c| c.status.master.as_str())
        .unwrap_or("");
    let db_uid = cd.db_of_keeper(uid).map(|db| db.uid.clone());
    if let Some(db_uid) = &db_uid
        && !master.is_empty()
        && db_uid == master
    {
        bail!("keeper assigned db is the current cluster master db.");
    }
    let mut next = cd.clone();
    next.keepers.remove(uid);
    if let Some(db_uid) = db_uid {
        // Other DBs' followers lists still name it; the sentinel cleans them up.
        next.dbs.remove(&db_uid);
    }
    Ok(next)
}

/// What `promote` does to clusterdata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Promotion {
    /// The cluster role already is master: nothing to write.
    AlreadyMaster,
    /// Write this clusterdata (spec role set to master).
    Write(Box<ClusterData>),
}

/// Promotes a standby cluster: sets the spec role to master, through the update rules.
pub fn promote(cd: &ClusterData) -> anyhow::Result<Promotion> {
    let spec = spec_of(cd)?;
    if spec.effective().role == ClusterRole::Master {
        return Ok(Promotion::AlreadyMaster);
    }
    let mut new = spec.clone();
    new.role = Some(ClusterRole::Master);
    update_spec(cd, new).map(|cd| Promotion::Write(Box::new(cd)))
}

/// The spec as `stolonctl spec` prints it: tab-indented JSON, with defaults applied if asked.
pub fn render_spec(cd: &ClusterData, defaults: bool) -> anyhow::Result<String> {
    let spec = spec_of(cd)?;
    if defaults {
        return crate::json::tab_indented(&spec.with_defaults());
    }
    // Like Stolon's `ClusterSpecNoDefaults` (omitempty): an empty `pgParameters` or
    // `additionalMasterReplicationSlots` is not printed. An empty `pgHBA` is: it means "no
    // extra rules" where a missing one means md5 from everywhere, so dropping it would widen
    // access when the output is fed back to `update`.
    let mut v = serde_json::to_value(spec).context("failed to marshal cluster spec")?;
    if let Value::Object(m) = &mut v {
        for key in ["pgParameters", "additionalMasterReplicationSlots"] {
            let empty = match m.get(key) {
                Some(Value::Object(o)) => o.is_empty(),
                Some(Value::Array(a)) => a.is_empty(),
                _ => false,
            };
            if empty {
                m.shift_remove(key);
            }
        }
    }
    crate::json::tab_indented(&v)
}

/// Parses the document given to `clusterdata write` and checks it is usable (format version 1,
/// a cluster with a valid spec), so that a bad document is refused before anything is written.
pub fn parse_cluster_data(data: &[u8]) -> anyhow::Result<ClusterData> {
    let cd: ClusterData =
        json::from_slice(data).map_err(|e| anyhow!("invalid cluster data: {e}"))?;
    check_cluster_data(Some(cd)).map_err(|e| anyhow!("invalid cluster data: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use stolon_core::model::{Db, DbSpec, Keeper};

    fn now() -> Timestamp {
        Timestamp::from_unix_nanos(1_700_000_000_123_000_000)
    }

    fn cd_with(spec: Value) -> ClusterData {
        let spec: ClusterSpec = serde_json::from_value(spec).unwrap();
        init_cluster_data(spec, "abcd0123".into(), now())
    }

    /// Two keepers; db "m" on k0 is master, db "s" on k1 a standby; k2 has no db.
    fn cd_with_keepers() -> ClusterData {
        let mut cd = cd_with(json!({"initMode": "new"}));
        for k in ["k0", "k1", "k2"] {
            cd.keepers.insert(
                k.into(),
                Keeper {
                    uid: k.into(),
                    generation: 1,
                    ..Default::default()
                },
            );
        }
        for (db, k) in [("m", "k0"), ("s", "k1")] {
            cd.dbs.insert(
                db.into(),
                Db {
                    uid: db.into(),
                    generation: 1,
                    spec: Some(DbSpec {
                        keeper_uid: k.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            );
        }
        let c = cd.cluster.as_mut().unwrap();
        c.status.master = "m".into();
        c.status.phase = Some(ClusterPhase::Normal);
        cd
    }

    #[test]
    fn init_default_spec_and_fresh_cluster() {
        let spec = init_spec(None).unwrap();
        assert_eq!(
            serde_json::to_value(&spec).unwrap(),
            json!({"initMode": "new"})
        );
        assert_eq!(init_spec(Some(b"")).unwrap(), spec);
        let cd = init_cluster_data(spec, "abcd0123".into(), now());
        let v = serde_json::to_value(&cd).unwrap();
        assert_eq!(v["formatVersion"], 1);
        assert_eq!(v["cluster"]["uid"], "abcd0123");
        assert_eq!(v["cluster"]["generation"], 1);
        assert_eq!(v["cluster"]["status"], json!({"phase": "initializing"}));
        assert_eq!(v["cluster"]["spec"], json!({"initMode": "new"}));
        assert_eq!(v["cluster"]["changeTime"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["keepers"], json!({}));
        assert_eq!(v["dbs"], json!({}));
        check_cluster_data(Some(cd)).unwrap();
    }

    #[test]
    fn init_refuses_bad_specs() {
        assert!(
            init_spec(Some(b"{"))
                .unwrap_err()
                .to_string()
                .starts_with("failed to unmarshal cluster spec: ")
        );
        assert_eq!(
            init_spec(Some(br#"{"initMode":"new","maxStandbys":0}"#))
                .unwrap_err()
                .to_string(),
            "invalid cluster spec: maxStandbys must be at least 1"
        );
        assert_eq!(
            init_spec(Some(b"{}")).unwrap_err().to_string(),
            "invalid cluster spec: initMode undefined"
        );
        let s = init_spec(Some(
            br#"{"initMode":"existing","existingConfig":{"keeperUID":"k0"}}"#,
        ))
        .unwrap();
        assert_eq!(s.init_mode, Some(ClusterInitMode::Existing));
    }

    #[test]
    fn check_refuses_missing_old_or_invalid_data() {
        assert_eq!(
            check_cluster_data(None).unwrap_err().to_string(),
            "nil cluster data"
        );
        let mut cd = cd_with(json!({"initMode": "new"}));
        cd.format_version = 2;
        assert_eq!(
            check_cluster_data(Some(cd)).unwrap_err().to_string(),
            "unsupported cluster data format version 2"
        );
        let mut cd = cd_with(json!({"initMode": "new"}));
        cd.cluster.as_mut().unwrap().spec = None;
        assert_eq!(
            check_cluster_data(Some(cd)).unwrap_err().to_string(),
            "no cluster spec available"
        );
        let mut cd = cd_with(json!({"initMode": "new"}));
        cd.cluster
            .as_mut()
            .unwrap()
            .spec
            .as_mut()
            .unwrap()
            .max_standbys = Some(0);
        assert_eq!(
            check_cluster_data(Some(cd)).unwrap_err().to_string(),
            "clusterdata validation failed: maxStandbys must be at least 1"
        );
    }

    #[test]
    fn patch_applies_to_the_raw_spec() {
        let cur: ClusterSpec = serde_json::from_value(json!({"initMode": "new"})).unwrap();
        let s = proposed_spec(&cur, br#"{"synchronousReplication":true}"#, true).unwrap();
        // Only the patched key is added: defaults are not written back.
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            json!({"initMode": "new", "synchronousReplication": true})
        );
        let s = proposed_spec(&s, br#"{"pgParameters":{"work_mem":"8MB","a":"b"}}"#, true).unwrap();
        let s = proposed_spec(&s, br#"{"pgParameters":{"work_mem":null}}"#, true).unwrap();
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            json!({"initMode": "new", "synchronousReplication": true, "pgParameters": {"a": "b"}})
        );
        let s = proposed_spec(&s, br#"{"synchronousReplication":null}"#, true).unwrap();
        assert_eq!(s.synchronous_replication, None);
        // Without --patch the data is the whole new spec.
        let s = proposed_spec(&s, br#"{"initMode":"new","maxStandbys":3}"#, false).unwrap();
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            json!({"initMode": "new", "maxStandbys": 3})
        );
    }

    #[test]
    fn patch_refuses_malformed_input() {
        let cur = init_spec(None).unwrap();
        let e = proposed_spec(&cur, b"{not json", true)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("failed to patch cluster spec: invalid patch: "),
            "{e}"
        );
        let e = proposed_spec(&cur, br#"{"maxStandbys":"many"}"#, true)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("failed to patch cluster spec: patched spec: "),
            "{e}"
        );
        let e = proposed_spec(&cur, b"[1]", true).unwrap_err().to_string();
        assert!(e.starts_with("failed to patch cluster spec: "), "{e}");
        let e = proposed_spec(&cur, b"nope", false).unwrap_err().to_string();
        assert!(e.starts_with("failed to unmarshal cluster spec: "), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn update_follows_the_update_rules() {
        let cd = cd_with(json!({"initMode": "new"}));
        let new: ClusterSpec =
            serde_json::from_value(json!({"initMode": "new", "synchronousReplication": true}))
                .unwrap();
        let next = update_spec(&cd, new.clone()).unwrap();
        assert_eq!(next.cluster.as_ref().unwrap().spec.as_ref(), Some(&new));
        // Everything else is unchanged.
        let mut back = next.clone();
        back.cluster.as_mut().unwrap().spec = cd.cluster.as_ref().unwrap().spec.clone();
        assert_eq!(back, cd);

        let changed: ClusterSpec = serde_json::from_value(
            json!({"initMode": "existing", "existingConfig": {"keeperUID": "k"}}),
        )
        .unwrap();
        assert_eq!(
            update_spec(&cd, changed).unwrap_err().to_string(),
            "Cannot update cluster spec: cannot change cluster init mode"
        );
        let invalid: ClusterSpec =
            serde_json::from_value(json!({"initMode": "new", "proxyTimeout": "1s"})).unwrap();
        assert_eq!(
            update_spec(&cd, invalid).unwrap_err().to_string(),
            "Cannot update cluster spec: invalid cluster spec: proxyCheckInterval should be less than proxyTimeout"
        );
    }

    #[test]
    fn failkeeper_sets_force_fail_only_on_that_keeper() {
        let cd = cd_with_keepers();
        let next = fail_keeper(&cd, "k1").unwrap();
        assert!(next.keepers["k1"].status.force_fail);
        assert!(!next.keepers["k0"].status.force_fail);
        let mut back = next.clone();
        back.keepers.get_mut("k1").unwrap().status.force_fail = false;
        assert_eq!(back, cd);
        assert_eq!(
            fail_keeper(&cd, "nope").unwrap_err().to_string(),
            "keeper doesn't exist"
        );
    }

    #[test]
    fn removekeeper_removes_keeper_and_its_db_but_never_the_master() {
        let cd = cd_with_keepers();
        let next = remove_keeper(&cd, "k1").unwrap();
        assert!(!next.keepers.contains_key("k1"));
        assert!(!next.dbs.contains_key("s"));
        assert!(next.dbs.contains_key("m"));
        let next = remove_keeper(&cd, "k2").unwrap();
        assert_eq!(next.dbs, cd.dbs);
        assert_eq!(next.keepers.len(), 2);
        assert_eq!(
            remove_keeper(&cd, "k0").unwrap_err().to_string(),
            "keeper assigned db is the current cluster master db."
        );
        assert_eq!(
            remove_keeper(&cd, "zz").unwrap_err().to_string(),
            "keeper doesn't exist"
        );
    }

    #[test]
    fn promote_sets_role_master_once() {
        let cd = cd_with(json!({"initMode": "new"}));
        assert_eq!(promote(&cd).unwrap(), Promotion::AlreadyMaster);
        let cd = cd_with(json!({"initMode": "new", "role": "master"}));
        assert_eq!(promote(&cd).unwrap(), Promotion::AlreadyMaster);
        let standby = json!({
            "initMode": "existing",
            "existingConfig": {"keeperUID": "k0"},
            "role": "standby",
            "standbyConfig": {"standbySettings": {"primaryConninfo": "host=h"}}
        });
        let cd = cd_with(standby);
        let Promotion::Write(next) = promote(&cd).unwrap() else {
            panic!("expected a write")
        };
        let spec = next.cluster.unwrap().spec.unwrap();
        assert_eq!(spec.role, Some(ClusterRole::Master));
        assert!(
            spec.standby_config.is_some(),
            "the rest of the spec is kept"
        );
    }

    #[test]
    fn spec_rendering() {
        let cd = cd_with(json!({"initMode": "new", "pgHBA": []}));
        assert_eq!(
            render_spec(&cd, false).unwrap(),
            "{\n\t\"initMode\": \"new\",\n\t\"pgHBA\": []\n}"
        );
        let d = render_spec(&cd, true).unwrap();
        assert!(
            d.starts_with("{\n\t\"sleepInterval\": \"5s\",\n\t\"requestTimeout\": \"10s\","),
            "{d}"
        );
        assert!(d.contains("\n\t\"maxStandbyLag\": 1048576,\n"), "{d}");
        assert!(d.ends_with("\t\"automaticPgRestart\": false\n}"), "{d}");
    }

    #[test]
    fn clusterdata_write_input_is_checked() {
        let cd = cd_with_keepers();
        let text = serde_json::to_vec(&cd).unwrap();
        assert_eq!(parse_cluster_data(&text).unwrap(), cd);
        assert!(
            parse_cluster_data(b"{\"formatVersion\":")
                .unwrap_err()
                .to_string()
                .starts_with("invalid cluster data: ")
        );
        let mut v = serde_json::to_value(&cd).unwrap();
        v["formatVersion"] = json!(2);
        assert_eq!(
            parse_cluster_data(&serde_json::to_vec(&v).unwrap())
                .unwrap_err()
                .to_string(),
            "invalid cluster data: unsupported cluster data format version 2"
        );
    }
}
