//! The Avro schemas shipped in `schemas/`, known by their single-object fingerprints.

use std::collections::HashMap;
use std::sync::OnceLock;

use apache_avro::Schema;

/// The record types orderflow puts on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// Requests from upstream services.
    TransitionRequest,
    /// The latest state of an order (compacted topic).
    OrderState,
    /// An accepted transition (the event log).
    TransitionAccepted,
    /// A rejected request.
    TransitionRejected,
}

impl RecordKind {
    /// The Avro record name.
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::TransitionRequest => "TransitionRequest",
            RecordKind::OrderState => "OrderState",
            RecordKind::TransitionAccepted => "TransitionAccepted",
            RecordKind::TransitionRejected => "TransitionRejected",
        }
    }
}

/// One schema file shipped in `schemas/`.
#[derive(Debug, Clone, Copy)]
pub struct ShippedSchema {
    /// Which record it describes.
    pub kind: RecordKind,
    /// Its version (the file name's `vN`).
    pub version: u32,
    /// The file name under `schemas/`.
    pub file: &'static str,
    /// The schema's JSON.
    pub json: &'static str,
}

macro_rules! shipped {
    ($kind:ident, $version:literal, $file:literal) => {
        ShippedSchema {
            kind: RecordKind::$kind,
            version: $version,
            file: $file,
            json: include_str!(concat!("../../schemas/", $file)),
        }
    };
}

/// Every shipped schema version; the highest version of each kind is the one orderflow writes.
pub const SHIPPED: &[ShippedSchema] = &[
    shipped!(TransitionRequest, 1, "transition_request.v1.avsc"),
    shipped!(TransitionRequest, 2, "transition_request.v2.avsc"),
    shipped!(OrderState, 1, "order_state.v1.avsc"),
    shipped!(OrderState, 2, "order_state.v2.avsc"),
    shipped!(TransitionAccepted, 1, "transition_accepted.v1.avsc"),
    shipped!(TransitionRejected, 1, "transition_rejected.v1.avsc"),
];

/// A parsed shipped schema with its fingerprint.
#[derive(Debug)]
pub struct KnownSchema {
    /// The shipped file it came from.
    pub shipped: ShippedSchema,
    /// The parsed schema.
    pub schema: Schema,
    /// Its parsing canonical form.
    pub canonical_form: String,
    /// CRC-64-AVRO (Rabin) fingerprint of its parsing canonical form.
    pub fingerprint: u64,
}

/// All shipped schemas, by fingerprint and by kind.
#[derive(Debug)]
pub struct Registry {
    schemas: Vec<KnownSchema>,
    // foldhash, not SipHash: every record encoded or decoded looks its schema up here.
    by_fingerprint: HashMap<u64, usize, foldhash::fast::RandomState>,
    current: HashMap<RecordKind, usize, foldhash::fast::RandomState>,
}

/// CRC-64-AVRO (Rabin) fingerprint of a schema's parsing canonical form, as Java's
/// `SchemaNormalization.parsingFingerprint64` computes it (algorithm from the Avro specification).
pub fn fingerprint(canonical_form: &str) -> u64 {
    canonical_form.bytes().fold(EMPTY_FINGERPRINT, |fp, byte| {
        (fp >> 8) ^ FINGERPRINT_TABLE[((fp ^ u64::from(byte)) & 0xff) as usize]
    })
}

const EMPTY_FINGERPRINT: u64 = 0xc15d_213a_a4d7_a795;

const FINGERPRINT_TABLE: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut fp = i as u64;
        let mut bit = 0;
        while bit < 8 {
            fp = (fp >> 1) ^ (EMPTY_FINGERPRINT & (fp & 1).wrapping_neg());
            bit += 1;
        }
        table[i] = fp;
        i += 1;
    }
    table
};

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// The parsing canonical form of a schema (Avro specification, "Parsing Canonical Form for
/// Schemas"), computed from the schema's JSON.
///
/// apache-avro 0.22's `Schema::canonical_form` keeps `{"type":"long"}` for a logical type such as
/// `timestamp-millis` where the specification (and Java) reduce it to `"long"`, so its fingerprints
/// differ from Java's for every schema with a logical type. This follows the specification.
pub fn parsing_canonical_form(schema: &serde_json::Value) -> Result<String, String> {
    let mut defined = std::collections::HashSet::new();
    pcf(schema, "", &mut defined)
}

fn full_name(name: &str, namespace: &str) -> String {
    if name.contains('.') || namespace.is_empty() {
        name.to_string()
    } else {
        format!("{namespace}.{name}")
    }
}

fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn pcf(
    schema: &serde_json::Value,
    namespace: &str,
    defined: &mut std::collections::HashSet<String>,
) -> Result<String, String> {
    use serde_json::Value;
    match schema {
        Value::String(name) if PRIMITIVES.contains(&name.as_str()) => Ok(quoted(name)),
        Value::String(name) => Ok(quoted(&full_name(name, namespace))),
        Value::Array(branches) => {
            let parts: Result<Vec<String>, String> = branches
                .iter()
                .map(|b| pcf(b, namespace, defined))
                .collect();
            Ok(format!("[{}]", parts?.join(",")))
        }
        Value::Object(map) => {
            let kind = map
                .get("type")
                .ok_or_else(|| format!("schema object without type: {schema}"))?;
            let Value::String(kind) = kind else {
                // {"type": {...}} or {"type": [...]}: the inner schema is the schema.
                return pcf(kind, namespace, defined);
            };
            match kind.as_str() {
                "record" | "error" | "enum" | "fixed" => {
                    let name = map
                        .get("name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| format!("named schema without a name: {schema}"))?;
                    let own_namespace = map
                        .get("namespace")
                        .and_then(Value::as_str)
                        .unwrap_or(namespace);
                    let full = full_name(name, own_namespace);
                    if !defined.insert(full.clone()) {
                        return Ok(quoted(&full));
                    }
                    let inner_namespace =
                        full.rsplit_once('.').map_or("", |(ns, _)| ns).to_string();
                    let mut out = format!("{{\"name\":{},\"type\":{}", quoted(&full), quoted(kind));
                    if let Some(Value::Array(fields)) = map.get("fields") {
                        let mut parts = Vec::new();
                        for field in fields {
                            let field_name = field
                                .get("name")
                                .and_then(Value::as_str)
                                .ok_or_else(|| format!("field without a name: {field}"))?;
                            let field_type = field
                                .get("type")
                                .ok_or_else(|| format!("field {field_name} without a type"))?;
                            parts.push(format!(
                                "{{\"name\":{},\"type\":{}}}",
                                quoted(field_name),
                                pcf(field_type, &inner_namespace, defined)?
                            ));
                        }
                        out.push_str(&format!(",\"fields\":[{}]", parts.join(",")));
                    }
                    if let Some(Value::Array(symbols)) = map.get("symbols") {
                        let symbols: Vec<String> = symbols
                            .iter()
                            .map(|s| quoted(s.as_str().unwrap_or_default()))
                            .collect();
                        out.push_str(&format!(",\"symbols\":[{}]", symbols.join(",")));
                    }
                    if let Some(size) = map.get("size") {
                        let size = size
                            .as_i64()
                            .or_else(|| size.as_str().and_then(|s| s.parse().ok()))
                            .ok_or_else(|| format!("bad size in {schema}"))?;
                        out.push_str(&format!(",\"size\":{size}"));
                    }
                    out.push('}');
                    Ok(out)
                }
                "array" => {
                    let items = map.get("items").ok_or("array without items")?;
                    Ok(format!(
                        "{{\"type\":\"array\",\"items\":{}}}",
                        pcf(items, namespace, defined)?
                    ))
                }
                "map" => {
                    let values = map.get("values").ok_or("map without values")?;
                    Ok(format!(
                        "{{\"type\":\"map\",\"values\":{}}}",
                        pcf(values, namespace, defined)?
                    ))
                }
                // A primitive, possibly with a logical type: the logical type is stripped.
                primitive if PRIMITIVES.contains(&primitive) => Ok(quoted(primitive)),
                reference => Ok(quoted(&full_name(reference, namespace))),
            }
        }
        other => Err(format!("not a schema: {other}")),
    }
}

impl Registry {
    fn build() -> Registry {
        let mut schemas = Vec::new();
        let mut by_fingerprint: HashMap<u64, usize, foldhash::fast::RandomState> =
            HashMap::default();
        let mut current: HashMap<RecordKind, usize, foldhash::fast::RandomState> =
            HashMap::default();
        for shipped in SHIPPED {
            // The files are compiled in and parsed by a unit test, so a failure here is a build defect.
            let schema = Schema::parse_str(shipped.json)
                .unwrap_or_else(|e| panic!("shipped schema {} does not parse: {e}", shipped.file));
            let json: serde_json::Value = serde_json::from_str(shipped.json)
                .unwrap_or_else(|e| panic!("shipped schema {} is not JSON: {e}", shipped.file));
            let canonical_form = parsing_canonical_form(&json).unwrap_or_else(|e| {
                panic!("shipped schema {} has no canonical form: {e}", shipped.file)
            });
            let fingerprint = fingerprint(&canonical_form);
            let index = schemas.len();
            by_fingerprint.insert(fingerprint, index);
            let newer = current
                .get(&shipped.kind)
                .is_none_or(|i| schemas_version(&schemas, *i) < shipped.version);
            if newer {
                current.insert(shipped.kind, index);
            }
            schemas.push(KnownSchema {
                shipped: *shipped,
                schema,
                canonical_form,
                fingerprint,
            });
        }
        Registry {
            schemas,
            by_fingerprint,
            current,
        }
    }

    /// The schema with this fingerprint, if it is shipped.
    pub fn by_fingerprint(&self, fingerprint: u64) -> Option<&KnownSchema> {
        self.by_fingerprint
            .get(&fingerprint)
            .map(|i| &self.schemas[*i])
    }

    /// The version orderflow writes for a kind.
    pub fn current(&self, kind: RecordKind) -> &KnownSchema {
        &self.schemas[self.current[&kind]]
    }

    /// A shipped version of a kind.
    pub fn version(&self, kind: RecordKind, version: u32) -> Option<&KnownSchema> {
        self.schemas
            .iter()
            .find(|s| s.shipped.kind == kind && s.shipped.version == version)
    }

    /// Every shipped schema.
    pub fn all(&self) -> &[KnownSchema] {
        &self.schemas
    }
}

fn schemas_version(schemas: &[KnownSchema], index: usize) -> u32 {
    schemas[index].shipped.version
}

/// The process-wide registry of shipped schemas, parsed on first use.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::build)
}
