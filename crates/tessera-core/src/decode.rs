//! Decoding manifest documents (already parsed into JSON values) into [`Resource`]s.
//!
//! A document is checked before it is converted: `apiVersion` and `kind` must name a supported
//! resource, every field must be one the resource has (a misspelt field is refused with the
//! closest accepted name), and every value must have the right type. Each problem becomes one
//! [`FieldError`] with the field's full path (`spec.blockSize`, `items[2].spec.cidr`,
//! `metadata.labels.rack`). Lists (`kind: List`, `IPPoolList`, ...) expand into their items.
//!
//! Decoding does not apply Calico's rules (overlaps, block sizes, names); that is
//! [`crate::validate::validate`]'s job.

use std::fmt;

use serde_json::{Map, Value};

use crate::resources::calico::{IPAMConfiguration, IPPool, IPReservation, CALICO_API_VERSION};
use crate::resources::kube::{Namespace, Node, CORE_API_VERSION};
use crate::resources::spider::{SpiderIPPool, SpiderReservedIP, SpiderSubnet, SPIDER_API_VERSION};
use crate::resources::{Kind, Resource};
use crate::text::{plain_or_quoted, quoted};
use crate::validate::error::{fmt_errors, fmt_subject, FieldError};
use crate::validate::names::typography_hint;

/// apiVersion of Calico's CRDs as `calicoctl` and `kubectl` print them in some setups.
pub const CALICO_CRD_API_VERSION: &str = "crd.projectcalico.org/v1";

/// A document that cannot be turned into a resource.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct DecodeError {
    /// The document's kind, when it could be read.
    pub kind: Option<Kind>,
    /// The document's `metadata.name`, when it could be read.
    pub name: Option<String>,
    /// Every problem found (field path and reason).
    pub errors: Vec<FieldError>,
}

impl DecodeError {
    fn one(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            kind: None,
            name: None,
            errors: vec![FieldError::new(field, reason)],
        }
    }

    /// The same error with `prefix` put in front of every field path (used for list items).
    pub fn prefixed(mut self, prefix: &str) -> Self {
        self.errors = self
            .errors
            .into_iter()
            .map(|e| e.prefixed(prefix))
            .collect();
        self
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(kind) = self.kind {
            fmt_subject(f, kind, self.name.as_deref().unwrap_or_default())?;
            f.write_str(": ")?;
        }
        fmt_errors(f, &self.errors)
    }
}

/// One resource out of a document, with its position when the document is a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Index in the list's `items` (0-based); `None` when the document is a single resource.
    pub item: Option<usize>,
    /// The resource, or why it could not be decoded. Field paths of list items start with
    /// `items[i]`.
    pub result: Result<Resource, DecodeError>,
}

/// Decodes one document holding a single resource.
pub fn decode_document(doc: Value) -> Result<Resource, DecodeError> {
    let mut obj = match doc {
        Value::Object(obj) => obj,
        other => {
            return Err(DecodeError::one(
                "",
                format!(
                    "expected a resource (a mapping with apiVersion, kind, metadata and spec), \
                     got {}",
                    describe(&other)
                ),
            ))
        }
    };
    let name = obj
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let kind = match read_kind(&obj)? {
        KindName::One(kind) => kind,
        KindName::List(list) => {
            return Err(DecodeError {
                kind: None,
                name,
                errors: vec![FieldError::new(
                    "kind",
                    format!("{list} is a list of resources where a single resource was expected"),
                )],
            })
        }
    };
    let mut errors = Vec::new();
    check_api_version(&obj, api_versions_of(kind), kind.as_str(), &mut errors);

    let top_fields: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];
    for key in obj.keys() {
        if !top_fields.contains(&key.as_str()) {
            errors.push(unknown_field(
                &plain_or_quoted(key),
                key,
                &["apiVersion", "kind", "metadata", "spec"],
                "A resource",
            ));
        }
    }

    let mut metadata = take_object(&mut obj, "metadata", &mut errors);
    // Web pages often indent `spec` under `metadata` (the nginx pool example does, as a blog prints it); say so plainly rather
    // than calling it an unknown metadata field and the spec missing.
    if !obj.contains_key("spec") && metadata.contains_key("spec") {
        metadata.remove("spec");
        errors.push(FieldError::new(
            "metadata.spec",
            "spec is indented under metadata; move it left so that it lines up with metadata",
        ));
    }
    check_fields(
        "metadata",
        &mut metadata,
        METADATA_FIELDS,
        "Metadata",
        &mut errors,
    );
    let spec_fields = match kind {
        Kind::IPPool => Some(IPPOOL_FIELDS),
        Kind::IPReservation => Some(IPRESERVATION_FIELDS),
        Kind::IPAMConfiguration => Some(IPAMCONFIG_FIELDS),
        Kind::SpiderIPPool => Some(SPIDER_POOL_FIELDS),
        Kind::SpiderSubnet => Some(SPIDER_SUBNET_FIELDS),
        Kind::SpiderReservedIP => Some(SPIDER_RESERVED_FIELDS),
        Kind::Node | Kind::Namespace => None,
    };
    let mut body = Map::new();
    if let Some(fields) = spec_fields {
        let mut spec = take_object(&mut obj, "spec", &mut errors);
        let what = format!("{kind} spec");
        check_fields("spec", &mut spec, fields, &what, &mut errors);
        body.insert("spec".into(), Value::Object(spec));
    } else if kind == Kind::Node {
        match obj.remove("spec") {
            None | Some(Value::Null) => {}
            Some(spec @ Value::Object(_)) => {
                body.insert("spec".into(), spec);
            }
            Some(other) => errors.push(FieldError::new(
                "spec",
                format!("expected a mapping, got {}", describe(&other)),
            )),
        }
    }
    body.insert("metadata".into(), Value::Object(metadata));
    let fail = |errors| DecodeError {
        kind: Some(kind),
        name: name.clone(),
        errors,
    };
    if !errors.is_empty() {
        return Err(fail(errors));
    }
    let body = Value::Object(body);
    let converted = match kind {
        Kind::IPPool => serde_json::from_value::<IPPool>(body).map(Resource::IPPool),
        Kind::IPReservation => {
            serde_json::from_value::<IPReservation>(body).map(Resource::IPReservation)
        }
        Kind::IPAMConfiguration => {
            serde_json::from_value::<IPAMConfiguration>(body).map(Resource::IPAMConfiguration)
        }
        Kind::Node => serde_json::from_value::<Node>(body).map(Resource::Node),
        Kind::Namespace => serde_json::from_value::<Namespace>(body).map(Resource::Namespace),
        Kind::SpiderIPPool => {
            serde_json::from_value::<SpiderIPPool>(body).map(Resource::SpiderIPPool)
        }
        Kind::SpiderSubnet => {
            serde_json::from_value::<SpiderSubnet>(body).map(Resource::SpiderSubnet)
        }
        Kind::SpiderReservedIP => {
            serde_json::from_value::<SpiderReservedIP>(body).map(Resource::SpiderReservedIP)
        }
    };
    converted.map_err(|e| fail(vec![FieldError::new("", e.to_string())]))
}

/// Decodes a document that holds one resource or a list of them (`kind: List`, `IPPoolList`,
/// ...); fails with the first item that cannot be decoded.
pub fn decode_documents(doc: Value) -> Result<Vec<Resource>, DecodeError> {
    decode_each(doc).into_iter().map(|d| d.result).collect()
}

/// Like [`decode_documents`], but decodes every item of a list and returns each result, so a
/// caller can report every broken item at once. A list whose own structure is broken (no
/// `items`, unknown fields) gives a single failed entry.
pub fn decode_each(doc: Value) -> Vec<Decoded> {
    let Value::Object(mut obj) = doc else {
        return vec![Decoded {
            item: None,
            result: decode_document(doc),
        }];
    };
    let list = match read_kind(&obj) {
        Ok(KindName::List(list)) => list,
        _ => {
            return vec![Decoded {
                item: None,
                result: decode_document(Value::Object(obj)),
            }]
        }
    };
    let single = |e: DecodeError| {
        vec![Decoded {
            item: None,
            result: Err(e),
        }]
    };
    let mut errors = Vec::new();
    let list_versions = [
        CORE_API_VERSION,
        CALICO_API_VERSION,
        CALICO_CRD_API_VERSION,
        SPIDER_API_VERSION,
    ];
    check_api_version(&obj, &list_versions, &list.to_string(), &mut errors);
    for key in obj.keys() {
        if !["apiVersion", "kind", "items", "metadata"].contains(&key.as_str()) {
            errors.push(unknown_field(
                &plain_or_quoted(key),
                key,
                &["apiVersion", "kind", "items", "metadata"],
                "A list",
            ));
        }
    }
    let items = match obj.remove("items") {
        Some(Value::Array(items)) => items,
        None | Some(Value::Null) => Vec::new(),
        Some(other) => {
            errors.push(FieldError::new(
                "items",
                format!("expected a list of resources, got {}", describe(&other)),
            ));
            Vec::new()
        }
    };
    if !errors.is_empty() {
        return single(DecodeError {
            kind: None,
            name: None,
            errors,
        });
    }
    let list_api_version = obj.get("apiVersion").cloned();
    items
        .into_iter()
        .enumerate()
        .map(|(i, mut item)| {
            let prefix = format!("items[{i}]");
            if let (Value::Object(fields), ListKind::Of(kind)) = (&mut item, list) {
                match fields.get("kind") {
                    None => {
                        fields.insert("kind".into(), kind.as_str().into());
                    }
                    Some(Value::String(k)) if k != kind.as_str() => {
                        return Decoded {
                            item: Some(i),
                            result: Err(DecodeError::one(
                                "kind",
                                format!("{list} holds {kind} resources, not {}", quoted(k)),
                            )
                            .prefixed(&prefix)),
                        };
                    }
                    _ => {}
                }
                if !fields.contains_key("apiVersion") {
                    if let Some(v) = &list_api_version {
                        fields.insert("apiVersion".into(), v.clone());
                    }
                }
            }
            let result = decode_document(item).map_err(|e| e.prefixed(&prefix));
            Decoded {
                item: Some(i),
                result,
            }
        })
        .collect()
}

/// The apiVersions accepted for a kind, the preferred one first.
pub fn api_versions_of(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::IPPool | Kind::IPReservation | Kind::IPAMConfiguration => {
            &[CALICO_API_VERSION, CALICO_CRD_API_VERSION]
        }
        Kind::Node => &[CORE_API_VERSION, CALICO_API_VERSION],
        Kind::Namespace => &[CORE_API_VERSION],
        Kind::SpiderIPPool | Kind::SpiderSubnet | Kind::SpiderReservedIP => &[SPIDER_API_VERSION],
    }
}

// ---------------------------------------------------------------------------------------------
// kind and apiVersion

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ListKind {
    /// `kind: List`: items name their own kinds.
    Any,
    /// `kind: IPPoolList` and friends.
    Of(Kind),
}

impl fmt::Display for ListKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListKind::Any => f.write_str("List"),
            ListKind::Of(k) => write!(f, "{k}List"),
        }
    }
}

enum KindName {
    One(Kind),
    List(ListKind),
}

const SUPPORTED: &str = "Tessera accepts IPPool, IPReservation, IPAMConfiguration, Node, \
                         Namespace, SpiderIPPool, SpiderSubnet and SpiderReservedIP, and lists \
                         of them (List, IPPoolList, ...)";

fn read_kind(obj: &Map<String, Value>) -> Result<KindName, DecodeError> {
    let text = match obj.get("kind") {
        None | Some(Value::Null) => {
            return Err(DecodeError::one(
                "kind",
                format!("is required; {SUPPORTED}"),
            ))
        }
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(DecodeError::one(
                "kind",
                format!("expected a string, got {}; {SUPPORTED}", describe(other)),
            ))
        }
    };
    if text == "List" {
        return Ok(KindName::List(ListKind::Any));
    }
    if let Some(kind) = Kind::ALL.into_iter().find(|k| k.as_str() == text) {
        return Ok(KindName::One(kind));
    }
    if let Some(kind) = text
        .strip_suffix("List")
        .and_then(|base| Kind::ALL.into_iter().find(|k| k.as_str() == base))
    {
        return Ok(KindName::List(ListKind::Of(kind)));
    }
    let mut reason = format!("{} is not supported", quoted(text));
    if let Some(hint) = typography_hint(text) {
        reason.push_str(&format!("; {hint}"));
    } else {
        let mut names: Vec<String> = Kind::ALL.iter().map(|k| k.as_str().to_string()).collect();
        names.extend(Kind::ALL.iter().map(|k| format!("{k}List")));
        names.push("List".into());
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let guess = closest(text, &refs)
            .map(str::to_string)
            .or_else(|| Kind::from_cli_name(text).map(|k| k.as_str().to_string()));
        if let Some(guess) = guess {
            reason.push_str(&format!("; did you mean {guess}?"));
        }
    }
    reason.push_str(if reason.ends_with('?') { " " } else { "; " });
    reason.push_str(SUPPORTED);
    Err(DecodeError::one("kind", reason))
}

fn check_api_version(
    obj: &Map<String, Value>,
    accepted: &[&str],
    what: &str,
    errors: &mut Vec<FieldError>,
) {
    let preferred = accepted[0];
    match obj.get("apiVersion") {
        None | Some(Value::Null) => errors.push(FieldError::new(
            "apiVersion",
            format!("is required; use {preferred}"),
        )),
        Some(Value::String(v)) if accepted.contains(&v.as_str()) => {}
        Some(other) => {
            let given = match other {
                Value::String(s) => quoted(s),
                v => describe(v),
            };
            let mut reason = format!("{given} is not supported for {what}");
            if let Some(hint) = other.as_str().and_then(typography_hint) {
                reason.push_str(&format!(" ({hint})"));
            }
            reason.push_str(&format!("; use {preferred}"));
            if accepted.len() > 1 {
                reason.push_str(&format!(" (accepted: {})", accepted.join(", ")));
            }
            errors.push(FieldError::new("apiVersion", reason));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Field tables and type checks

/// The JSON type a field must have.
#[derive(Clone, Copy)]
enum Ty {
    Str,
    Bool,
    /// A whole number from 0 to `max`; `note` says what the range means.
    Int {
        max: u64,
        note: &'static str,
    },
    Enum(&'static [&'static str]),
    EnumList(&'static [&'static str]),
    StrList,
    StrMap,
    /// Spiderpool routes: a list of `{dst, gw}`.
    Routes,
    /// A Kubernetes label selector (`matchLabels`, `matchExpressions`).
    Selector,
    /// Accepted as is (Kubernetes metadata Tessera does not interpret).
    Any,
}

const ENCAP: &[&str] = &["Never", "Always", "CrossSubnet"];

const IPPOOL_FIELDS: &[(&str, Ty)] = &[
    ("cidr", Ty::Str),
    (
        "blockSize",
        Ty::Int {
            max: 255,
            note: "block sizes are 20-32 for IPv4 and 116-128 for IPv6",
        },
    ),
    ("ipipMode", Ty::Enum(ENCAP)),
    ("vxlanMode", Ty::Enum(ENCAP)),
    ("natOutgoing", Ty::Bool),
    ("disabled", Ty::Bool),
    ("disableBGPExport", Ty::Bool),
    ("nodeSelector", Ty::Str),
    ("namespaceSelector", Ty::Str),
    (
        "allowedUses",
        Ty::EnumList(&["Workload", "Tunnel", "LoadBalancer"]),
    ),
    ("assignmentMode", Ty::Enum(&["Automatic", "Manual"])),
];

const IP_VERSION: Ty = Ty::Int {
    max: 255,
    note: "ipVersion is 4 or 6",
};

const VLAN: Ty = Ty::Int {
    max: 4094,
    note: "VLAN ids are 0 (untagged) to 4094",
};

const SPIDER_POOL_FIELDS: &[(&str, Ty)] = &[
    ("ipVersion", IP_VERSION),
    ("subnet", Ty::Str),
    ("ips", Ty::StrList),
    ("excludeIPs", Ty::StrList),
    ("gateway", Ty::Str),
    ("routes", Ty::Routes),
    ("vlan", VLAN),
    ("podAffinity", Ty::Selector),
    ("namespaceAffinity", Ty::Selector),
    ("namespaceName", Ty::StrList),
    ("nodeAffinity", Ty::Selector),
    ("nodeName", Ty::StrList),
    ("multusName", Ty::StrList),
    ("default", Ty::Bool),
    ("disable", Ty::Bool),
];

const SPIDER_SUBNET_FIELDS: &[(&str, Ty)] = &[
    ("ipVersion", IP_VERSION),
    ("subnet", Ty::Str),
    ("ips", Ty::StrList),
    ("excludeIPs", Ty::StrList),
    ("gateway", Ty::Str),
    ("routes", Ty::Routes),
    ("vlan", VLAN),
];

const SPIDER_RESERVED_FIELDS: &[(&str, Ty)] = &[("ipVersion", IP_VERSION), ("ips", Ty::StrList)];

const IPRESERVATION_FIELDS: &[(&str, Ty)] = &[("reservedCIDRs", Ty::StrList)];

const IPAMCONFIG_FIELDS: &[(&str, Ty)] = &[
    ("strictAffinity", Ty::Bool),
    ("autoAllocateBlocks", Ty::Bool),
    (
        "maxBlocksPerHost",
        Ty::Int {
            max: u32::MAX as u64,
            note: "use a whole number from 0 (no limit) to 4294967295",
        },
    ),
    ("enableStatefulSet", Ty::Bool),
];

const METADATA_FIELDS: &[(&str, Ty)] = &[
    ("name", Ty::Str),
    ("labels", Ty::StrMap),
    ("annotations", Ty::StrMap),
    ("resourceVersion", Ty::Str),
    ("uid", Ty::Str),
    ("creationTimestamp", Ty::Str),
    // Kubernetes metadata that Tessera accepts (so `kubectl get -o yaml` output applies) but
    // does not interpret.
    ("namespace", Ty::Any),
    ("generateName", Ty::Any),
    ("generation", Ty::Any),
    ("selfLink", Ty::Any),
    ("deletionTimestamp", Ty::Any),
    ("deletionGracePeriodSeconds", Ty::Any),
    ("ownerReferences", Ty::Any),
    ("finalizers", Ty::Any),
    ("managedFields", Ty::Any),
    ("clusterName", Ty::Any),
];

/// Names of the fields a kind's `spec` accepts (`None` for kinds whose spec is kept as is or
/// that have none).
pub fn spec_field_names(kind: Kind) -> Option<Vec<&'static str>> {
    let table = match kind {
        Kind::IPPool => IPPOOL_FIELDS,
        Kind::IPReservation => IPRESERVATION_FIELDS,
        Kind::IPAMConfiguration => IPAMCONFIG_FIELDS,
        Kind::SpiderIPPool => SPIDER_POOL_FIELDS,
        Kind::SpiderSubnet => SPIDER_SUBNET_FIELDS,
        Kind::SpiderReservedIP => SPIDER_RESERVED_FIELDS,
        Kind::Node | Kind::Namespace => return None,
    };
    Some(table.iter().map(|(n, _)| *n).collect())
}

/// Removes `key` from `obj` and returns it as an object (missing or null: empty).
fn take_object(
    obj: &mut Map<String, Value>,
    key: &str,
    errors: &mut Vec<FieldError>,
) -> Map<String, Value> {
    match obj.remove(key) {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(other) => {
            errors.push(FieldError::new(
                key,
                format!("expected a mapping, got {}", describe(&other)),
            ));
            Map::new()
        }
    }
}

/// Checks every field of `obj` against `table`, dropping null values (null means "not set").
/// Unknown fields are refused; `what` names the object in the message (`IPPool spec`).
fn check_fields(
    path: &str,
    obj: &mut Map<String, Value>,
    table: &[(&str, Ty)],
    what: &str,
    errors: &mut Vec<FieldError>,
) {
    obj.retain(|_, v| !v.is_null());
    for (key, value) in obj.iter_mut() {
        if table
            .iter()
            .any(|(n, ty)| n == key && matches!(ty, Ty::Routes | Ty::Selector))
        {
            drop_nested_nulls(value);
        }
    }
    let names: Vec<&str> = table
        .iter()
        .filter(|(_, ty)| !matches!(ty, Ty::Any))
        .map(|(n, _)| *n)
        .collect();
    for (key, value) in obj.iter() {
        let field = format!("{path}.{}", plain_or_quoted(key));
        match table.iter().find(|(n, _)| n == key) {
            Some((_, ty)) => check_value(&field, value, *ty, errors),
            None => errors.push(unknown_field(&field, key, &names, what)),
        }
    }
}

fn unknown_field(field: &str, key: &str, accepted: &[&str], what: &str) -> FieldError {
    let mut reason = "unknown field;".to_string();
    if let Some(guess) = closest(key, accepted) {
        reason.push_str(&format!(" did you mean {guess}?"));
    }
    if let Some(hint) = typography_hint(key) {
        let mut chars = hint.chars();
        let first = chars.next().map(|c| c.to_ascii_uppercase());
        reason.push(' ');
        reason.extend(first);
        reason.push_str(chars.as_str());
        reason.push('.');
    }
    reason.push_str(&format!(" {what} accepts {}", accepted.join(", ")));
    FieldError::new(field, reason)
}

fn check_value(field: &str, value: &Value, ty: Ty, errors: &mut Vec<FieldError>) {
    let mut fail = |reason: String| errors.push(FieldError::new(field, reason));
    match ty {
        Ty::Any => {}
        Ty::Str => {
            if !value.is_string() {
                fail(expected_string(value));
            }
        }
        Ty::Bool => {
            if !value.is_boolean() {
                fail(format!("expected true or false, got {}", describe(value)));
            }
        }
        Ty::Int { max, note } => match value {
            Value::Number(n) => match n.as_u64() {
                Some(v) if v <= max => {}
                _ => fail(format!("{n} is out of range; {note}")),
            },
            Value::String(s) if s.trim().parse::<i64>().is_ok() => fail(format!(
                "expected a whole number, got the string {}; remove the quotes",
                quoted(s)
            )),
            other => fail(format!("expected a whole number, got {}", describe(other))),
        },
        Ty::Enum(choices) => check_enum(value, choices, &mut fail),
        Ty::EnumList(choices) => match value {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    check_enum(item, choices, &mut |reason| {
                        errors.push(FieldError::new(format!("{field}[{i}]"), reason))
                    });
                }
            }
            other => fail(format!(
                "expected a list such as [{}], got {}",
                choices[0],
                describe(other)
            )),
        },
        Ty::StrList => match value {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if !item.is_string() {
                        errors.push(FieldError::new(
                            format!("{field}[{i}]"),
                            expected_string(item),
                        ));
                    }
                }
            }
            other => fail(format!(
                "expected a list of strings, got {}",
                describe(other)
            )),
        },
        Ty::Routes => match value {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    check_nested(
                        &format!("{field}[{i}]"),
                        item,
                        ROUTE_FIELDS,
                        &["dst", "gw"],
                        "a route",
                        errors,
                    );
                }
            }
            other => fail(format!(
                "expected a list of routes such as [{{dst: 10.7.0.0/16, gw: 10.6.0.1}}], got {}",
                describe(other)
            )),
        },
        Ty::Selector => check_selector(field, value, errors),
        Ty::StrMap => match value {
            Value::Object(map) => {
                for (k, v) in map {
                    if !v.is_string() {
                        let field = format!("{field}.{}", plain_or_quoted(k));
                        errors.push(FieldError::new(field, expected_string(v)));
                    }
                }
            }
            other => fail(format!(
                "expected a mapping of keys to strings, got {}",
                describe(other)
            )),
        },
    }
}

/// Removes null-valued fields from every mapping inside `value` (null means "not set").
fn drop_nested_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(drop_nested_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_nested_nulls),
        _ => {}
    }
}

/// Checks a mapping's fields against `table`; `required` fields must be present.
fn check_nested(
    path: &str,
    value: &Value,
    table: &[(&str, Ty)],
    required: &[&str],
    what: &str,
    errors: &mut Vec<FieldError>,
) {
    let Value::Object(map) = value else {
        errors.push(FieldError::new(
            path,
            format!("expected {what} (a mapping), got {}", describe(value)),
        ));
        return;
    };
    let names: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
    for (key, v) in map {
        let field = format!("{path}.{}", plain_or_quoted(key));
        match table.iter().find(|(n, _)| n == key) {
            Some((_, ty)) => check_value(&field, v, *ty, errors),
            None => errors.push(unknown_field(&field, key, &names, &capitalised(what))),
        }
    }
    for name in required {
        if !map.contains_key(*name) {
            errors.push(FieldError::new(
                format!("{path}.{name}"),
                format!("is required in {what} ({})", required.join(", ")),
            ));
        }
    }
}

fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

const ROUTE_FIELDS: &[(&str, Ty)] = &[("dst", Ty::Str), ("gw", Ty::Str)];
const SELECTOR_FIELDS: &[(&str, Ty)] =
    &[("matchLabels", Ty::StrMap), ("matchExpressions", Ty::Any)];
const REQUIREMENT_FIELDS: &[(&str, Ty)] = &[
    ("key", Ty::Str),
    ("operator", Ty::Str),
    ("values", Ty::StrList),
];

fn check_selector(field: &str, value: &Value, errors: &mut Vec<FieldError>) {
    check_nested(
        field,
        value,
        SELECTOR_FIELDS,
        &[],
        "a label selector",
        errors,
    );
    match value.get("matchExpressions") {
        None => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                check_nested(
                    &format!("{field}.matchExpressions[{i}]"),
                    item,
                    REQUIREMENT_FIELDS,
                    &["key", "operator"],
                    "a selector requirement",
                    errors,
                );
            }
        }
        Some(other) => errors.push(FieldError::new(
            format!("{field}.matchExpressions"),
            format!(
                "expected a list of requirements such as [{{key: tier, operator: In, values: \
                 [web]}}], got {}",
                describe(other)
            ),
        )),
    }
}

fn check_enum(value: &Value, choices: &[&str], fail: &mut dyn FnMut(String)) {
    match value {
        Value::String(s) if choices.contains(&s.as_str()) => {}
        Value::String(s) => {
            let mut reason = format!("{} is not one of {}", quoted(s), choices.join(", "));
            if let Some(guess) = closest(s, choices) {
                reason.push_str(&format!("; did you mean {guess}?"));
            } else if let Some(hint) = typography_hint(s) {
                reason.push_str(&format!(" ({hint})"));
            }
            fail(reason)
        }
        other => fail(format!(
            "expected one of {}, got {}",
            choices.join(", "),
            describe(other)
        )),
    }
}

fn expected_string(value: &Value) -> String {
    match value {
        Value::Number(n) => format!("expected a string, got the number {n}; quote it: \"{n}\""),
        Value::Bool(b) => format!("expected a string, got {b}; quote it: \"{b}\""),
        other => format!("expected a string, got {}", describe(other)),
    }
}

/// Describes a value's type (and short values) for messages.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing (null)".into(),
        Value::Bool(b) => format!("{b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {}", quoted(s)),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

/// The accepted name closest to `given`: same letters ignoring case and punctuation, or at
/// most two edits away.
fn closest<'a>(given: &str, accepted: &[&'a str]) -> Option<&'a str> {
    let squash = |s: &str| -> String {
        s.chars()
            .filter(|c| c.is_alphanumeric())
            .flat_map(char::to_lowercase)
            .collect()
    };
    let g = squash(given);
    if let Some(hit) = accepted.iter().find(|a| squash(a) == g) {
        return Some(hit);
    }
    let limit = if g.chars().count() <= 3 { 1 } else { 2 };
    accepted
        .iter()
        .map(|a| (edit_distance(&g, &squash(a)), *a))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::calico::{AllowedUse, EncapMode};
    use serde_json::json;

    fn err(doc: Value) -> String {
        decode_document(doc).unwrap_err().to_string()
    }

    fn pool_doc(spec: Value) -> Value {
        json!({
            "apiVersion": "projectcalico.org/v3",
            "kind": "IPPool",
            "metadata": {"name": "rack-0-ippool"},
            "spec": spec,
        })
    }

    #[test]
    fn decodes_a_calico_pool() {
        let r = decode_document(pool_doc(json!({
            "cidr": "192.168.0.0/24",
            "ipipMode": "Always",
            "natOutgoing": true,
            "nodeSelector": "rack == \"0\"",
            "allowedUses": ["Workload"],
        })))
        .unwrap();
        let Resource::IPPool(p) = r else {
            panic!("not a pool")
        };
        assert_eq!(p.metadata.name, "rack-0-ippool");
        assert_eq!(p.spec.cidr, "192.168.0.0/24");
        assert_eq!(p.spec.ipip_mode, Some(EncapMode::Always));
        assert!(p.spec.nat_outgoing);
        assert_eq!(p.spec.allowed_uses, Some(vec![AllowedUse::Workload]));
    }

    #[test]
    fn accepts_crd_api_version_and_kubernetes_metadata() {
        // As `calicoctl get ippool -o yaml` prints it on a CRD-backed cluster.
        let r = decode_document(json!({
            "apiVersion": "crd.projectcalico.org/v1",
            "kind": "IPPool",
            "metadata": {
                "annotations": {"projectcalico.org/metadata": "{\"uid\":\"637e\"}"},
                "creationTimestamp": "2022-05-12T14:34:03Z",
                "generation": 1,
                "name": "default-ipv4-pool",
                "resourceVersion": "689",
                "uid": "c94af437-5a37-46c8-b521-641724b86ff8",
            },
            "spec": {
                "allowedUses": ["Workload", "Tunnel"],
                "blockSize": 26,
                "cidr": "10.244.0.0/18",
                "ipipMode": "Never",
                "natOutgoing": true,
                "nodeSelector": "all()",
                "vxlanMode": "Always",
            },
        }))
        .unwrap();
        assert_eq!(r.name(), "default-ipv4-pool");
        assert_eq!(r.metadata().resource_version.as_deref(), Some("689"));
    }

    #[test]
    fn api_version_rules() {
        let ns = |v: &str| json!({"apiVersion": v, "kind": "Namespace", "metadata": {"name": "a"}});
        assert!(decode_document(ns("v1")).is_ok());
        assert_eq!(
            err(ns("projectcalico.org/v3")),
            "Namespace \"a\": apiVersion: \"projectcalico.org/v3\" is not supported for \
             Namespace; use v1"
        );
        let node = |v: &str| json!({"apiVersion": v, "kind": "Node", "metadata": {"name": "n"}});
        assert!(decode_document(node("v1")).is_ok());
        assert!(decode_document(node("projectcalico.org/v3")).is_ok());
        let mut doc = pool_doc(json!({"cidr": "10.0.0.0/16"}));
        doc["apiVersion"] = "projectcalico.org/v2".into();
        assert_eq!(
            err(doc.clone()),
            "IPPool \"rack-0-ippool\": apiVersion: \"projectcalico.org/v2\" is not supported \
             for IPPool; use projectcalico.org/v3 (accepted: projectcalico.org/v3, \
             crd.projectcalico.org/v1)"
        );
        doc.as_object_mut().unwrap().remove("apiVersion");
        assert_eq!(
            err(doc),
            "IPPool \"rack-0-ippool\": apiVersion: is required; use projectcalico.org/v3"
        );
    }

    #[test]
    fn unknown_kind_lists_supported_kinds() {
        assert_eq!(
            err(json!({"apiVersion": "projectcalico.org/v3", "kind": "IpPool"})),
            "kind: \"IpPool\" is not supported; did you mean IPPool? Tessera accepts IPPool, \
             IPReservation, IPAMConfiguration, Node, Namespace, SpiderIPPool, SpiderSubnet and \
             SpiderReservedIP, and lists of them (List, IPPoolList, ...)"
        );
        assert_eq!(
            err(json!({"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer"})),
            "kind: \"BGPPeer\" is not supported; Tessera accepts IPPool, IPReservation, \
             IPAMConfiguration, Node, Namespace, SpiderIPPool, SpiderSubnet and \
             SpiderReservedIP, and lists of them (List, IPPoolList, ...)"
        );
        assert_eq!(
            err(json!({"apiVersion": "v1"})),
            "kind: is required; Tessera accepts IPPool, IPReservation, IPAMConfiguration, Node, \
             Namespace, SpiderIPPool, SpiderSubnet and SpiderReservedIP, and lists of them \
             (List, IPPoolList, ...)"
        );
    }

    #[test]
    fn not_a_mapping() {
        assert_eq!(
            err(json!(["a"])),
            "expected a resource (a mapping with apiVersion, kind, metadata and spec), got a \
             list"
        );
    }

    #[test]
    fn unknown_spec_field_suggests_the_right_one() {
        assert_eq!(
            err(pool_doc(json!({"cidrr": "10.0.0.0/16"}))),
            "IPPool \"rack-0-ippool\": spec.cidrr: unknown field; did you mean cidr? IPPool \
             spec accepts cidr, blockSize, ipipMode, vxlanMode, natOutgoing, disabled, \
             disableBGPExport, nodeSelector, namespaceSelector, allowedUses, assignmentMode"
        );
        let e = decode_document(pool_doc(
            json!({"cidr": "10.0.0.0/16", "ipip_mode": "Never"}),
        ))
        .unwrap_err();
        assert_eq!(e.errors[0].field, "spec.ipip_mode");
        assert!(e.errors[0].reason.contains("did you mean ipipMode?"));
        let e = decode_document(pool_doc(json!({"awsSubnetID": "x"}))).unwrap_err();
        assert!(e.errors[0]
            .reason
            .starts_with("unknown field; IPPool spec accepts cidr,"));
    }

    #[test]
    fn unknown_top_level_and_metadata_fields() {
        let e = decode_document(json!({
            "apiVersion": "projectcalico.org/v3",
            "kind": "IPPool",
            "metadata": {"name": "p", "lables": {"a": "b"}},
            "specs": {"cidr": "10.0.0.0/16"},
        }))
        .unwrap_err();
        let fields: Vec<_> = e.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["specs", "metadata.lables"]);
        assert!(e.errors[0]
            .reason
            .starts_with("unknown field; did you mean spec?"));
        assert!(e.errors[1]
            .reason
            .starts_with("unknown field; did you mean labels?"));
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = decode_document(pool_doc(json!({
            "cidr": 10,
            "blockSize": "29",
            "natOutgoing": "yes",
            "ipipMode": "always",
            "allowedUses": ["Workload", "Pods"],
        })))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "IPPool \"rack-0-ippool\": spec.cidr: expected a string, got the number 10; quote \
             it: \"10\"; spec.blockSize: expected a whole number, got the string \"29\"; remove \
             the quotes; spec.natOutgoing: expected true or false, got the string \"yes\"; \
             spec.ipipMode: \"always\" is not one of Never, Always, CrossSubnet; did you mean \
             Always?; spec.allowedUses[1]: \"Pods\" is not one of Workload, Tunnel, LoadBalancer"
        );
    }

    #[test]
    fn out_of_range_numbers() {
        assert_eq!(
            err(pool_doc(json!({"cidr": "10.0.0.0/16", "blockSize": 300}))),
            "IPPool \"rack-0-ippool\": spec.blockSize: 300 is out of range; block sizes are \
             20-32 for IPv4 and 116-128 for IPv6"
        );
        assert_eq!(
            err(json!({
                "apiVersion": "projectcalico.org/v3",
                "kind": "IPAMConfiguration",
                "metadata": {"name": "default"},
                "spec": {"maxBlocksPerHost": -1},
            })),
            "IPAMConfiguration \"default\": spec.maxBlocksPerHost: -1 is out of range; use a \
             whole number from 0 (no limit) to 4294967295"
        );
    }

    #[test]
    fn label_values_must_be_strings() {
        assert_eq!(
            err(json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": "kube-node-0", "labels": {"rack": 0}},
            })),
            "Node \"kube-node-0\": metadata.labels.rack: expected a string, got the number 0; \
             quote it: \"0\""
        );
    }

    #[test]
    fn null_means_unset() {
        let r = decode_document(pool_doc(json!({
            "cidr": "10.0.0.0/16",
            "disabled": null,
            "blockSize": null,
        })))
        .unwrap();
        let Resource::IPPool(p) = r else { panic!() };
        assert!(!p.spec.disabled);
        assert_eq!(p.spec.block_size, None);
    }

    #[test]
    fn kubernetes_namespace_and_node_extras_are_accepted() {
        let r = decode_document(json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "external-ns", "annotations": {"cni.projectcalico.org/ipv4pools": "[\"external-pool\"]"}},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        }))
        .unwrap();
        assert_eq!(r.kind(), Kind::Namespace);
        let r = decode_document(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "kube-node-0"},
            "spec": {"podCIDR": "10.0.0.0/24"},
        }))
        .unwrap();
        let Resource::Node(n) = r else { panic!() };
        assert_eq!(n.spec["podCIDR"], "10.0.0.0/24");
    }

    #[test]
    fn lists_expand() {
        let list = json!({
            "apiVersion": "projectcalico.org/v3",
            "kind": "IPPoolList",
            "metadata": {"resourceVersion": "12"},
            "items": [
                {"metadata": {"name": "a"}, "spec": {"cidr": "10.0.0.0/16"}},
                {"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                 "metadata": {"name": "b"}, "spec": {"cidr": "10.1.0.0/16"}},
            ],
        });
        let rs = decode_documents(list).unwrap();
        assert_eq!(
            rs.iter().map(Resource::name).collect::<Vec<_>>(),
            ["a", "b"]
        );

        let mixed = json!({
            "apiVersion": "v1",
            "kind": "List",
            "items": [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}},
                {"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                 "metadata": {"name": "p"}, "spec": {"cidr": "10.0.0.0/16", "blockSzie": 29}},
                {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}},
            ],
        });
        let each = decode_each(mixed.clone());
        assert_eq!(each.len(), 3);
        assert!(each[0].result.is_ok());
        assert_eq!(each[1].item, Some(1));
        let e = each[1].result.clone().unwrap_err();
        assert_eq!(e.errors[0].field, "items[1].spec.blockSzie");
        assert!(e.errors[0]
            .reason
            .starts_with("unknown field; did you mean blockSize?"));
        assert_eq!(decode_documents(mixed).unwrap_err(), e);
    }

    #[test]
    fn list_structure_errors() {
        let e = decode_documents(json!({
            "apiVersion": "v1", "kind": "List", "items": {"a": 1},
        }))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "items: expected a list of resources, got a mapping"
        );
        let e = decode_documents(json!({
            "apiVersion": "projectcalico.org/v3", "kind": "IPPoolList",
            "items": [{"kind": "Node", "metadata": {"name": "n"}}],
        }))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "items[0].kind: IPPoolList holds IPPool resources, not \"Node\""
        );
        let e = decode_documents(json!({
            "apiVersion": "v1", "kind": "List",
            "items": [{"apiVersion": "v1", "kind": "List", "items": []}],
        }))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "items[0].kind: List is a list of resources where a single resource was expected"
        );
        assert_eq!(
            decode_document(json!({"apiVersion": "v1", "kind": "List", "items": []}))
                .unwrap_err()
                .errors[0]
                .field,
            "kind"
        );
    }

    #[test]
    fn typographic_quotes_in_keys_and_values() {
        let e =
            decode_document(pool_doc(json!({"\u{201C}cidr\u{201D}": "10.0.0.0/16"}))).unwrap_err();
        assert!(
            e.errors[0].reason.starts_with(
                "unknown field; did you mean cidr? It contains typographic characters"
            ),
            "{e}"
        );
        let e = decode_document(pool_doc(
            json!({"cidr": "10.0.0.0/16", "vxlanMode": "\u{201C}Always\u{201D}"}),
        ))
        .unwrap_err();
        assert!(e.errors[0].reason.contains("did you mean Always?"), "{e}");
    }

    /// The field names serde accepts for `T`, read from its "unknown field" message.
    fn serde_fields<T: serde::de::DeserializeOwned + std::fmt::Debug>() -> Vec<String> {
        let probe = serde_json::json!({"\u{0}": 0});
        let msg = serde_json::from_value::<T>(probe).unwrap_err().to_string();
        let (_, expected) = msg.split_once("expected").unwrap_or(("", &msg));
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    }

    fn names(table: &[(&str, Ty)]) -> Vec<String> {
        table.iter().map(|(n, _)| n.to_string()).collect()
    }

    #[test]
    fn field_tables_match_the_resource_types() {
        // Every listed field is one serde accepts, and serde accepts no other.
        use crate::resources::calico::{IPAMConfigurationSpec, IPPoolSpec, IPReservationSpec};
        use crate::resources::meta::{LabelSelector, LabelSelectorRequirement};
        use crate::resources::spider::{
            Route, SpiderIPPoolSpec, SpiderReservedIPSpec, SpiderSubnetSpec,
        };
        let mut pairs = vec![
            (serde_fields::<IPPoolSpec>(), IPPOOL_FIELDS),
            (serde_fields::<IPReservationSpec>(), IPRESERVATION_FIELDS),
            (serde_fields::<IPAMConfigurationSpec>(), IPAMCONFIG_FIELDS),
            (serde_fields::<SpiderIPPoolSpec>(), SPIDER_POOL_FIELDS),
            (serde_fields::<SpiderSubnetSpec>(), SPIDER_SUBNET_FIELDS),
            (
                serde_fields::<SpiderReservedIPSpec>(),
                SPIDER_RESERVED_FIELDS,
            ),
            (serde_fields::<Route>(), ROUTE_FIELDS),
            (serde_fields::<LabelSelector>(), SELECTOR_FIELDS),
            (
                serde_fields::<LabelSelectorRequirement>(),
                REQUIREMENT_FIELDS,
            ),
        ];
        for (serde_names, table) in pairs.iter_mut() {
            let mut listed = names(table);
            listed.sort();
            serde_names.sort();
            assert_eq!(*serde_names, listed);
        }
        for kind in Kind::ALL {
            if let Some(fields) = spec_field_names(kind) {
                assert!(!fields.is_empty(), "{kind}");
            }
        }
    }
}
