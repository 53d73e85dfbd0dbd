//! The Avro schemas shipped in `schemas/`, known by their single-object fingerprints.

use std::collections::HashMap;
use std::sync::OnceLock;

use apache_avro::rabin::Rabin;
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
    /// CRC-64-AVRO (Rabin) fingerprint of its parsing canonical form.
    pub fingerprint: u64,
}

/// All shipped schemas, by fingerprint and by kind.
#[derive(Debug)]
pub struct Registry {
    schemas: Vec<KnownSchema>,
    by_fingerprint: HashMap<u64, usize>,
    current: HashMap<RecordKind, usize>,
}

/// The Rabin fingerprint apache-avro and Java's `SchemaNormalization.parsingFingerprint64` compute.
pub fn fingerprint(schema: &Schema) -> u64 {
    let bytes = schema.fingerprint::<Rabin>().bytes;
    let mut le = [0u8; 8];
    le.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(le)
}

impl Registry {
    fn build() -> Registry {
        let mut schemas = Vec::new();
        let mut by_fingerprint = HashMap::new();
        let mut current: HashMap<RecordKind, usize> = HashMap::new();
        for shipped in SHIPPED {
            // The files are compiled in and parsed by a unit test, so a failure here is a build defect.
            let schema = Schema::parse_str(shipped.json)
                .unwrap_or_else(|e| panic!("shipped schema {} does not parse: {e}", shipped.file));
            let fingerprint = fingerprint(&schema);
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
