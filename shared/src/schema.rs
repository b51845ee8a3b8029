//! The installs table: the one definition the code, the local bootstrap and
//! the infrastructure test share. `infra/template.yaml` must agree with it;
//! `shared/tests/infra_template.rs` checks that it does.

use crate::store::attr;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType,
};

/// Partition key: the install id (`company#…`, `location#…`, `minted#…`) or `code#<sha256>`.
pub const PK: &str = "pk";
/// Sort key: `grant` for an install, `journal#<version>` for a journal entry, `code` for a code claim.
pub const SK: &str = "sk";
/// The sparse index of installs the sweep must refresh.
pub const DUE_INDEX: &str = "due-index";
pub const DUE_SHARD: &str = "due_shard";
pub const DUE_AT: &str = "due_at";
/// The sparse index of installs that are not `active`: an install is in it
/// exactly while its state is something else (`store::Store::set_state`
/// writes and removes both keys with every state change).
pub const BROKEN_INDEX: &str = "broken-index";
/// The broken index's partition key: the install's state (`retrying`,
/// `lost`, …), so each state is one partition, read by one Query, and the
/// `uninstalled` ones (which only accumulate) never crowd out the others.
pub const BROKEN_SHARD: &str = "broken_shard";
/// The broken index's sort key: epoch seconds since the install stopped being `active`.
pub const BROKEN_SINCE: &str = "broken_since";
/// Epoch seconds after which DynamoDB may delete the item (journal entries, code claims).
pub const TTL: &str = "ttl";

/// Key attributes and their types, as the template must declare them.
pub const KEY_ATTRIBUTES: [(&str, &str); 6] = [
    (PK, "S"),
    (SK, "S"),
    (DUE_SHARD, "S"),
    (DUE_AT, "N"),
    (BROKEN_SHARD, "S"),
    (BROKEN_SINCE, "N"),
];

/// What a global secondary index carries besides its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexProjection {
    KeysOnly,
    /// The keys and these attributes.
    Include(&'static [&'static str]),
}

/// One global secondary index of the installs table.
#[derive(Debug, Clone, Copy)]
pub struct IndexSpec {
    pub name: &'static str,
    pub hash: &'static str,
    pub range: &'static str,
    pub projection: IndexProjection,
}

/// What `installs-admin broken` prints, projected into the broken index so
/// the listing is one Query and no reads of the table.
pub const BROKEN_PROJECTED: &[&str] = &[
    attr::STATE,
    attr::STATE_REASON,
    attr::STATE_CHANGED_AT,
    attr::DOUBT_SINCE,
    DUE_AT,
    attr::FAILURES,
    attr::COMPANY_ID,
    attr::LOCATION_ID,
];

/// Every global secondary index, as `create_table` makes them and the
/// template must declare them.
pub const INDEXES: [IndexSpec; 2] = [
    IndexSpec {
        name: DUE_INDEX,
        hash: DUE_SHARD,
        range: DUE_AT,
        projection: IndexProjection::KeysOnly,
    },
    IndexSpec {
        name: BROKEN_INDEX,
        hash: BROKEN_SHARD,
        range: BROKEN_SINCE,
        projection: IndexProjection::Include(BROKEN_PROJECTED),
    },
];

fn key(name: &str, kind: KeyType) -> KeySchemaElement {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .expect("key schema element has both fields")
}

fn attr(name: &str, kind: &str) -> AttributeDefinition {
    let t = if kind == "N" {
        ScalarAttributeType::N
    } else {
        ScalarAttributeType::S
    };
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(t)
        .build()
        .expect("attribute definition has both fields")
}

fn index(spec: &IndexSpec) -> Result<GlobalSecondaryIndex, String> {
    let projection = match spec.projection {
        IndexProjection::KeysOnly => {
            Projection::builder().projection_type(ProjectionType::KeysOnly)
        }
        IndexProjection::Include(attrs) => Projection::builder()
            .projection_type(ProjectionType::Include)
            .set_non_key_attributes(Some(attrs.iter().map(|a| (*a).to_owned()).collect())),
    };
    GlobalSecondaryIndex::builder()
        .index_name(spec.name)
        .key_schema(key(spec.hash, KeyType::Hash))
        .key_schema(key(spec.range, KeyType::Range))
        .projection(projection.build())
        .build()
        .map_err(|e| e.to_string())
}

/// Creates the table, its indexes ([`INDEXES`]) and its TTL setting.
pub async fn create_table(ddb: &aws_sdk_dynamodb::Client, table: &str) -> Result<(), String> {
    let mut req = ddb
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(key(PK, KeyType::Hash))
        .key_schema(key(SK, KeyType::Range));
    for spec in &INDEXES {
        req = req.global_secondary_indexes(index(spec)?);
    }
    for (name, kind) in KEY_ATTRIBUTES {
        req = req.attribute_definitions(attr(name, kind));
    }
    req.send().await.map_err(|e| crate::aws::error_text(&e))?;
    ddb.update_time_to_live()
        .table_name(table)
        .time_to_live_specification(
            aws_sdk_dynamodb::types::TimeToLiveSpecification::builder()
                .attribute_name(TTL)
                .enabled(true)
                .build()
                .map_err(|e| e.to_string())?,
        )
        .send()
        .await
        .map_err(|e| crate::aws::error_text(&e))?;
    Ok(())
}
