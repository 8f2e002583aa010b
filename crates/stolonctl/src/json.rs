//! JSON output in the forms Stolon prints: compact (`json.Marshal`) and tab-indented
//! (`json.MarshalIndent(v, "", "\t")`). Pure.

use serde::Serialize;

/// Compact JSON text.
pub fn compact<T: Serialize + ?Sized>(v: &T) -> anyhow::Result<String> {
    Ok(serde_json::to_string(v)?)
}

/// JSON text indented with one tab per level, like Go's `MarshalIndent` with `"\t"`.
pub fn tab_indented<T: Serialize + ?Sized>(v: &T) -> anyhow::Result<String> {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    v.serialize(&mut ser)?;
    Ok(String::from_utf8(out)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn indents_with_tabs_like_go() {
        let v = json!({"a": 1, "b": [1, "x"], "c": {}, "d": [], "e": {"f": null}});
        assert_eq!(
            tab_indented(&v).unwrap(),
            "{\n\t\"a\": 1,\n\t\"b\": [\n\t\t1,\n\t\t\"x\"\n\t],\n\t\"c\": {},\n\t\"d\": [],\n\t\"e\": {\n\t\t\"f\": null\n\t}\n}"
        );
        assert_eq!(
            compact(&v).unwrap(),
            r#"{"a":1,"b":[1,"x"],"c":{},"d":[],"e":{"f":null}}"#
        );
    }
}
