//! JSON parsing that refuses an object with the same key twice.
//!
//! `serde_json` keeps the last of two equal keys without a word, so `{"kind": "IPPool",
//! "kind": "Node"}` would be read as a Node. YAML parsers refuse such documents; every JSON
//! that users write (manifests, patches, the CNI configuration, pod annotations) is read
//! through [`StrictValue`] so that JSON is refused too. The error names the key and, through
//! `serde_json`, the line and column.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::text::quoted;

/// A JSON value whose objects hold each key once. Deserialize into it instead of
/// [`Value`]: `serde_json::from_str::<StrictValue>(text)?.0`.
#[derive(Clone, Debug, PartialEq)]
pub struct StrictValue(pub Value);

/// Parses `text` as one JSON value, refusing duplicate keys.
pub fn from_str(text: &str) -> serde_json::Result<Value> {
    serde_json::from_str::<StrictValue>(text).map(|v| v.0)
}

/// Parses `bytes` as one JSON value, refusing duplicate keys.
pub fn from_slice(bytes: &[u8]) -> serde_json::Result<Value> {
    serde_json::from_slice::<StrictValue>(bytes).map(|v| v.0)
}

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        StrictValue::deserialize(deserializer).map(|v| v.0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            // Checked before the value is read, so the error points at the key.
            if fields.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "duplicate key {} in an object; keep only one of them",
                    quoted(&key)
                )));
            }
            let StrictValue(value) = map.next_value()?;
            fields.insert(key, value);
        }
        Ok(Value::Object(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_read_as_serde_json_reads_them() {
        let text = r#"{"a": [1, -2, 2.5, true, null, "x", {}], "b": {"c": 18446744073709551615}}"#;
        assert_eq!(
            from_str(text).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
        assert_eq!(from_slice(b" 7 ").unwrap(), json!(7));
    }

    #[test]
    fn duplicate_keys_are_refused_with_key_line_and_column() {
        let e = from_str("{\"kind\": \"IPPool\",\n \"kind\": \"Node\"}").unwrap_err();
        assert_eq!(
            e.to_string(),
            "duplicate key \"kind\" in an object; keep only one of them at line 2 column 7"
        );
        assert_eq!((e.line(), e.column()), (2, 7));
        let nested = r#"[{"spec": {"cidr": "a", "x": 1, "cidr": "b"}}]"#;
        assert!(from_str(nested)
            .unwrap_err()
            .to_string()
            .starts_with("duplicate key \"cidr\""));
        // The same key in two objects is fine.
        assert!(from_str(r#"[{"a": 1}, {"a": 2}, {"b": {"a": 3}}]"#).is_ok());
    }

    #[test]
    fn streams_of_values_are_checked_too() {
        let mut stream =
            serde_json::Deserializer::from_str(r#"{"a": 1} {"a": 1, "a": 2}"#).into_iter();
        let first: Option<serde_json::Result<StrictValue>> = stream.next();
        assert!(first.unwrap().is_ok());
        assert!(stream.next().unwrap().is_err());
    }
}
