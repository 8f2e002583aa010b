//! Decoding JSON the way Go's `encoding/json` does for Stolon's documents: an object key names a
//! struct field when it equals the field's JSON name exactly or, failing that, case-insensitively
//! (`"primaryConnInfo"` sets `primaryConninfo`, as Stolon's own standby-cluster documentation
//! writes it). Map keys (`pgParameters`, `keepers`, `dbs`) stay exact, as in Go. When several keys
//! name the same field, the last one wins, as in Go.
//!
//! Every document stolon-rs reads (cluster specs from files and flags, clusterdata, and the infos
//! in the store) goes through [`from_slice`], [`from_str`] or [`from_value`]; [`merge_patch`]
//! applies an RFC 7386 merge patch with the same key matching.
//!
//! Pure.

use std::cell::RefCell;
use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess,
    Visitor,
};
use serde_json::{Map, Value};

/// Parses `bytes` into `T`, matching struct keys like Go.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    from_value(serde_json::from_slice::<Value>(bytes)?)
}

/// Parses `text` into `T`, matching struct keys like Go.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, serde_json::Error> {
    from_value(serde_json::from_str::<Value>(text)?)
}

/// Converts `value` into `T`, matching struct keys like Go.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, serde_json::Error> {
    T::deserialize(GoValue(value))
}

/// Go's key folding: equal under Unicode simple case folding (approximated by lowercasing).
pub(crate) fn fold_eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
        || a.chars()
            .flat_map(char::to_lowercase)
            .eq(b.chars().flat_map(char::to_lowercase))
}

/// The field `key` names among `fields`: an exact match first, then a case-insensitive one.
fn field_for(key: &str, fields: &[&'static str]) -> Option<&'static str> {
    fields
        .iter()
        .find(|f| **f == key)
        .or_else(|| fields.iter().find(|f| fold_eq(f, key)))
        .copied()
}

/// An object decoded as a struct with `fields`: every key renamed to the field it names; keys
/// naming the same field keep the last value; keys naming no field are kept (serde ignores them).
fn canonical_object(map: Map<String, Value>, fields: &[&'static str]) -> Map<String, Value> {
    let mut out = Map::with_capacity(map.len());
    for (k, v) in map {
        let name = field_for(&k, fields).map_or(k, str::to_string);
        out.insert(name, v);
    }
    out
}

/// A JSON value that deserializes like [`Value`], but matches struct keys like Go at every level.
struct GoValue(Value);

impl<'de> IntoDeserializer<'de, serde_json::Error> for GoValue {
    type Deserializer = GoValue;
    fn into_deserializer(self) -> GoValue {
        self
    }
}

struct GoMap {
    iter: serde_json::map::IntoIter,
    value: Option<Value>,
}

impl<'de> MapAccess<'de> for GoMap {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        match self.iter.next() {
            Some((k, v)) => {
                self.value = Some(v);
                seed.deserialize(Value::String(k)).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let v = self
            .value
            .take()
            .ok_or_else(|| de::Error::custom("value is missing"))?;
        seed.deserialize(GoValue(v))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

struct GoSeq(std::vec::IntoIter<Value>);

impl<'de> SeqAccess<'de> for GoSeq {
    type Error = serde_json::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        self.0
            .next()
            .map(|v| seed.deserialize(GoValue(v)))
            .transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

fn visit_map<'de, V: Visitor<'de>>(
    map: Map<String, Value>,
    visitor: V,
) -> Result<V::Value, serde_json::Error> {
    visitor.visit_map(GoMap {
        iter: map.into_iter(),
        value: None,
    })
}

macro_rules! forward_to_value {
    ($($method:ident)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
                self.0.$method(visitor)
            }
        )*
    };
}

impl<'de> Deserializer<'de> for GoValue {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(map) => visit_map(map, visitor),
            Value::Array(items) => visitor.visit_seq(GoSeq(items.into_iter())),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            other => visitor.visit_some(GoValue(other)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Array(items) => visitor.visit_seq(GoSeq(items.into_iter())),
            other => other.deserialize_seq(visitor),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(map) => visit_map(map, visitor),
            other => other.deserialize_map(visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(map) => visit_map(canonical_object(map, fields), visitor),
            other => other.deserialize_struct(name, fields, visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_unit_struct(name, visitor)
    }

    forward_to_value! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
        deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char deserialize_str
        deserialize_string deserialize_bytes deserialize_byte_buf deserialize_unit
        deserialize_identifier deserialize_ignored_any
    }
}

// ---------------------------------------------------------------------------------------------
// Merge patch with Go's key matching.

/// What a type looks like at one JSON path, as its `Deserialize` implementation asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    /// A struct with these JSON field names.
    Struct(&'static [&'static str]),
    /// A map with free keys.
    Map,
    /// Anything else (replaced whole by a merge patch).
    Other,
}

/// One step of a path into a type: a struct field, or any map value.
#[derive(Debug, Clone)]
enum Step {
    Field(&'static str),
    MapValue,
}

/// The shape of `T` at `path`: found by letting `T::deserialize` walk a probe down `path` (it
/// offers exactly one key at each level) and recording what it asks for at the end.
fn shape_at<T: DeserializeOwned>(path: &[Step]) -> Shape {
    let out = RefCell::new(Shape::Other);
    let _ = T::deserialize(Probe { path, out: &out });
    out.into_inner()
}

#[derive(Debug)]
struct ProbeDone;

impl fmt::Display for ProbeDone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("probe done")
    }
}

impl std::error::Error for ProbeDone {}

impl de::Error for ProbeDone {
    fn custom<M: fmt::Display>(_msg: M) -> Self {
        ProbeDone
    }
}

struct Probe<'a> {
    path: &'a [Step],
    out: &'a RefCell<Shape>,
}

impl<'a> Probe<'a> {
    fn done(self, shape: Shape) -> ProbeDone {
        *self.out.borrow_mut() = shape;
        ProbeDone
    }
}

/// A map with a single entry: `key`, then a probe one level down.
struct ProbeEntry<'a> {
    key: Option<&'static str>,
    rest: Option<Probe<'a>>,
}

impl<'de> MapAccess<'de> for ProbeEntry<'_> {
    type Error = ProbeDone;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ProbeDone> {
        match self.key.take() {
            Some(k) => seed.deserialize(k.into_deserializer()).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, ProbeDone> {
        let rest = self.rest.take().ok_or(ProbeDone)?;
        seed.deserialize(rest)
    }
}

macro_rules! probe_leaf {
    ($($method:ident)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, ProbeDone> {
                Err(self.done(Shape::Other))
            }
        )*
    };
}

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = ProbeDone;

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeDone> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ProbeDone> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeDone> {
        match self.path.split_first() {
            Some((Step::MapValue, rest)) => visitor.visit_map(ProbeEntry {
                key: Some("key"),
                rest: Some(Probe {
                    path: rest,
                    out: self.out,
                }),
            }),
            Some(_) => Err(self.done(Shape::Other)),
            None => Err(self.done(Shape::Map)),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ProbeDone> {
        match self.path.split_first() {
            Some((Step::Field(f), rest)) => visitor.visit_map(ProbeEntry {
                key: Some(f),
                rest: Some(Probe {
                    path: rest,
                    out: self.out,
                }),
            }),
            Some(_) => Err(self.done(Shape::Other)),
            None => Err(self.done(Shape::Struct(fields))),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, _v: V) -> Result<V::Value, ProbeDone> {
        Err(self.done(Shape::Other))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        _v: V,
    ) -> Result<V::Value, ProbeDone> {
        Err(self.done(Shape::Other))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        _v: V,
    ) -> Result<V::Value, ProbeDone> {
        Err(self.done(Shape::Other))
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _v: V,
    ) -> Result<V::Value, ProbeDone> {
        Err(self.done(Shape::Other))
    }

    probe_leaf! {
        deserialize_any deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32
        deserialize_i64 deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32
        deserialize_u64 deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char
        deserialize_str deserialize_string deserialize_bytes deserialize_byte_buf
        deserialize_unit deserialize_seq deserialize_identifier deserialize_ignored_any
    }
}

/// Applies the RFC 7386 merge patch `patch` to `target`, a JSON form of `T`: objects merge
/// recursively, `null` deletes, anything else replaces. Where `T` has a struct, a patch key names
/// the field it matches the way Go matches keys (exact, then case-insensitive), so
/// `{"standbyConfig":{"standbySettings":{"primaryConnInfo":"..."}}}` patches `primaryConninfo`.
/// Map keys are matched exactly.
pub fn merge_patch<T: DeserializeOwned>(target: &mut Value, patch: &Value) {
    let mut path = Vec::new();
    merge_at::<T>(target, patch, &mut path);
}

fn merge_at<T: DeserializeOwned>(target: &mut Value, patch: &Value, path: &mut Vec<Step>) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let shape = shape_at::<T>(path);
    let Value::Object(map) = target else {
        return;
    };
    for (k, v) in patch_map {
        let (key, step) = match &shape {
            Shape::Struct(fields) => match field_for(k, fields) {
                Some(f) => {
                    // The target may hold the field under another spelling: one entry per field.
                    let spelled: Vec<String> = map
                        .keys()
                        .filter(|mk| mk.as_str() != f && field_for(mk, fields) == Some(f))
                        .cloned()
                        .collect();
                    for old in spelled {
                        if let Some(old_v) = map.shift_remove(&old) {
                            map.entry(f.to_string()).or_insert(old_v);
                        }
                    }
                    (f.to_string(), Some(Step::Field(f)))
                }
                None => (k.clone(), None),
            },
            Shape::Map => (k.clone(), Some(Step::MapValue)),
            Shape::Other => (k.clone(), None),
        };
        if v.is_null() {
            map.shift_remove(&key);
            continue;
        }
        let slot = map.entry(key).or_insert(Value::Null);
        match step {
            Some(step) => {
                path.push(step);
                merge_at::<T>(slot, v, path);
                path.pop();
            }
            None => crate::model::patch::merge_patch(slot, v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ClusterData, ClusterSpec, KeeperInfo};
    use serde_json::json;

    #[test]
    fn keys_match_exactly_then_case_insensitively() {
        let spec: ClusterSpec = from_value(json!({
            "InitMode": "new",
            "SLEEPINTERVAL": "7s",
            "standbyConfig": {"standbySettings": {"primaryConnInfo": "host=a", "PRIMARYSLOTNAME": "s"}},
            "pghba": ["host all all 0.0.0.0/0 md5"],
            "pgParameters": {"Work_Mem": "4MB"},
        }))
        .unwrap();
        assert_eq!(spec.init_mode, Some(crate::model::ClusterInitMode::New));
        assert_eq!(spec.sleep_interval.unwrap().to_string(), "7s");
        let ss = spec.standby_config.unwrap().standby_settings.unwrap();
        assert_eq!(ss.primary_conninfo, "host=a");
        assert_eq!(ss.primary_slot_name, "s");
        assert_eq!(spec.pg_hba.unwrap().len(), 1);
        // Map keys are data: kept exactly.
        assert_eq!(
            spec.pg_parameters.unwrap().keys().collect::<Vec<_>>(),
            vec!["Work_Mem"]
        );
    }

    #[test]
    fn the_last_key_naming_a_field_wins() {
        let spec: ClusterSpec =
            from_str(r#"{"initMode":"new","sleepInterval":"1s","SleepInterval":"9s"}"#).unwrap();
        assert_eq!(spec.sleep_interval.unwrap().to_string(), "9s");
        let spec: ClusterSpec =
            from_str(r#"{"initMode":"new","SleepInterval":"9s","sleepInterval":"1s"}"#).unwrap();
        assert_eq!(spec.sleep_interval.unwrap().to_string(), "1s");
    }

    #[test]
    fn capitalised_keys_of_infos_and_clusterdata() {
        let info: KeeperInfo =
            from_value(json!({"UID": "k1", "infouid": "i", "BootUUID": "b"})).unwrap();
        assert_eq!((info.uid.as_str(), info.info_uid.as_str()), ("k1", "i"));
        assert_eq!(info.boot_uuid, "b");
        let cd: ClusterData = from_value(json!({
            "FormatVersion": 1,
            "Cluster": {"UID": "c", "Spec": {"initMode": "new"}},
            "Keepers": {"KeeperA": {"UID": "KeeperA"}},
        }))
        .unwrap();
        assert_eq!(cd.format_version, 1);
        assert_eq!(cd.cluster.unwrap().uid, "c");
        // keepers is a map: its keys stay as written.
        assert!(cd.keepers.contains_key("KeeperA"));
    }

    #[test]
    fn errors_still_name_the_problem() {
        let e = from_str::<ClusterSpec>(r#"{"sleepInterval": 5}"#).unwrap_err();
        assert!(e.to_string().contains("invalid type"), "{e}");
        let e = from_str::<ClusterSpec>(r#"{"initMode": "bogus"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown variant"), "{e}");
    }

    #[test]
    fn probe_finds_struct_and_map_levels() {
        assert!(matches!(shape_at::<ClusterSpec>(&[]), Shape::Struct(f) if f.contains(&"pgHBA")));
        assert_eq!(
            shape_at::<ClusterSpec>(&[Step::Field("pgParameters")]),
            Shape::Map
        );
        assert!(matches!(
            shape_at::<ClusterSpec>(&[Step::Field("standbyConfig"), Step::Field("standbySettings")]),
            Shape::Struct(f) if f.contains(&"primaryConninfo")
        ));
        assert_eq!(
            shape_at::<ClusterSpec>(&[Step::Field("pgHBA")]),
            Shape::Other
        );
        assert!(matches!(
            shape_at::<ClusterData>(&[Step::Field("keepers"), Step::MapValue]),
            Shape::Struct(f) if f.contains(&"uid")
        ));
    }

    #[test]
    fn merge_patch_matches_fields_like_go() {
        let mut target = json!({
            "initMode": "new",
            "standbyConfig": {"standbySettings": {"primaryConninfo": "host=old", "primarySlotName": "s"}},
            "pgParameters": {"work_mem": "4MB"},
        });
        let patch = json!({
            "StandbyConfig": {"standbySettings": {"primaryConnInfo": "host=new"}},
            "pgparameters": {"WORK_MEM": "8MB"},
            "SleepInterval": "3s",
        });
        merge_patch::<ClusterSpec>(&mut target, &patch);
        assert_eq!(
            target,
            json!({
                "initMode": "new",
                "standbyConfig": {"standbySettings": {"primaryConninfo": "host=new", "primarySlotName": "s"}},
                "pgParameters": {"work_mem": "4MB", "WORK_MEM": "8MB"},
                "sleepInterval": "3s",
            })
        );
        // null deletes the field whatever the spelling.
        merge_patch::<ClusterSpec>(
            &mut target,
            &json!({"standbyconfig": {"standbySettings": {"PrimarySlotName": null}}}),
        );
        assert_eq!(
            target["standbyConfig"],
            json!({"standbySettings": {"primaryConninfo": "host=new"}})
        );
    }

    #[test]
    fn unknown_enum_strings_are_validation_errors() {
        use crate::model::{SpecDecodeError, decode_spec};
        let e = decode_spec(br#"{"initMode":"foo"}"#).unwrap_err();
        assert!(matches!(&e, SpecDecodeError::Invalid(_)), "{e:?}");
        assert_eq!(e.to_string(), r#"unknown initMode: "foo""#);
        // Stolon checks maxStandbys before initMode.
        let e = decode_spec(br#"{"InitMode":"foo","maxStandbys":0}"#).unwrap_err();
        assert_eq!(e.to_string(), "maxStandbys must be at least 1");
        let e = decode_spec(br#"{"initMode":"new","defaultSUReplAccessMode":"none"}"#).unwrap_err();
        assert_eq!(e.to_string(), r#"unknown defaultSUReplAccessMode: "none""#);
        let e = decode_spec(br#"{"initMode":"new","Role":"replica"}"#).unwrap_err();
        assert_eq!(e.to_string(), r#"unknown role: "replica""#);
        assert!(matches!(
            decode_spec(br#"{"initMode":5}"#),
            Err(SpecDecodeError::Json(_))
        ));
        let spec = decode_spec(br#"{"initMode":"new","ROLE":"master"}"#).unwrap();
        assert_eq!(spec.role, Some(crate::model::ClusterRole::Master));
    }

    #[test]
    fn merge_patch_keeps_rfc7386_semantics() {
        let mut target = json!({"initMode": "new", "pgHBA": ["a"]});
        merge_patch::<ClusterSpec>(&mut target, &json!({"pgHBA": ["b", "c"], "initMode": null}));
        assert_eq!(target, json!({"pgHBA": ["b", "c"]}));
    }
}
