//! The installs table: the one definition the code, the local bootstrap and
//! the infrastructure test share. `infra/template.yaml` must agree with it;
//! `shared/tests/infra_template.rs` checks that it does.

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
/// Epoch seconds after which DynamoDB may delete the item (journal entries, code claims).
pub const TTL: &str = "ttl";

/// Key attributes and their types, as the template must declare them.
pub const KEY_ATTRIBUTES: [(&str, &str); 4] =
    [(PK, "S"), (SK, "S"), (DUE_SHARD, "S"), (DUE_AT, "N")];

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

/// Creates the table, its due index and its TTL setting.
pub async fn create_table(ddb: &aws_sdk_dynamodb::Client, table: &str) -> Result<(), String> {
    let index = GlobalSecondaryIndex::builder()
        .index_name(DUE_INDEX)
        .key_schema(key(DUE_SHARD, KeyType::Hash))
        .key_schema(key(DUE_AT, KeyType::Range))
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::KeysOnly)
                .build(),
        )
        .build()
        .map_err(|e| e.to_string())?;
    let mut req = ddb
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(key(PK, KeyType::Hash))
        .key_schema(key(SK, KeyType::Range))
        .global_secondary_indexes(index);
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
