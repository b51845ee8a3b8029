//! The AWS API actions each function's code calls: the one list the IAM
//! policies in `infra/template.yaml` must grant, no more and no less.
//!
//! A new SDK call (a new DynamoDB or Secrets Manager operation, or an
//! existing one reached from another function) must be added here in the
//! same change; `shared/tests/infra_template.rs` then fails until the
//! template grants exactly this list, so a deploy never meets an
//! `AccessDenied` the tests could have caught, and no grant outlives the
//! call that needed it.

/// The actions one function (named by its binary) is allowed.
#[derive(Debug, Clone, Copy)]
pub struct FunctionPolicy {
    /// The binary name, as in `functions/<name>` and the template's
    /// `BuildProperties: Binary`.
    pub function: &'static str,
    /// DynamoDB actions on the installs table itself.
    pub dynamodb: &'static [&'static str],
    /// The partition-key prefixes its table calls may touch
    /// (`dynamodb:LeadingKeys` in the template); empty: any. The public
    /// functions are held to the items they own, so a flaw in either
    /// cannot reach another kind of item (the callback never a minted
    /// grant, the webhook never a code claim).
    pub table_keys: &'static [&'static str],
    /// DynamoDB actions on the due index (`<table arn>/index/due-index`).
    pub dynamodb_index: &'static [&'static str],
    /// Secrets Manager actions on the app secret.
    pub secretsmanager: &'static [&'static str],
    /// EventBridge actions on the state-change bus (`EVENT_BUS_NAME`).
    pub events: &'static [&'static str],
}

pub const POLICIES: &[FunctionPolicy] = &[
    FunctionPolicy {
        function: "oauth-callback",
        // Code claims: PutItem to claim, UpdateItem to finish, DeleteItem to
        // release after a failed exchange, GetItem to answer a replay.
        dynamodb: &[
            "dynamodb:PutItem",
            "dynamodb:GetItem",
            "dynamodb:UpdateItem",
            "dynamodb:DeleteItem",
        ],
        table_keys: &["code#", "company#", "location#"],
        dynamodb_index: &[],
        secretsmanager: &["secretsmanager:GetSecretValue"],
        events: &["events:PutEvents"],
    },
    FunctionPolicy {
        function: "refresh-sweep",
        // Query on the table reads the refresh journal; on the index it
        // finds the installs that are due.
        dynamodb: &[
            "dynamodb:Query",
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
        ],
        table_keys: &[],
        dynamodb_index: &["dynamodb:Query"],
        secretsmanager: &["secretsmanager:GetSecretValue"],
        events: &["events:PutEvents"],
    },
    FunctionPolicy {
        function: "token-mint",
        // Like the sweep (it refreshes under the same protocol); its
        // single-flight lock is a lease, taken and given back with UpdateItem.
        dynamodb: &[
            "dynamodb:Query",
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
        ],
        table_keys: &[],
        dynamodb_index: &[],
        secretsmanager: &["secretsmanager:GetSecretValue"],
        events: &["events:PutEvents"],
    },
    FunctionPolicy {
        function: "marketplace-webhook",
        // GetItem/PutItem: replay protection (webhook ids) and a location's
        // link; UpdateItem: links, uninstalls (erasing tokens), plan changes;
        // Query: a company's links and an install's journal entries to erase.
        dynamodb: &[
            "dynamodb:Query",
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
        ],
        table_keys: &["company#", "location#", "minted#", "webhook#"],
        dynamodb_index: &[],
        // None: it erases tokens without opening them and takes its app id
        // from GHL_APP_ID, so it never reads the app secret (data keys,
        // client secret).
        secretsmanager: &[],
        events: &["events:PutEvents"],
    },
];

/// The policy of one function, by binary name.
pub fn policy(function: &str) -> Option<&'static FunctionPolicy> {
    POLICIES.iter().find(|p| p.function == function)
}
