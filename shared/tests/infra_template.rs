//! `infra/template.yaml` agrees with the code, without AWS:
//!
//! - each function's IAM statements grant exactly the actions
//!   `shared::iam::POLICIES` lists, on exactly the table, the due index and
//!   the app secret, and nothing else (no wildcards, no SAM policy
//!   templates, no managed policies);
//! - the installs table is the one `shared::schema` describes (keys, its
//!   indexes and their projections, TTL attribute), so the deployed table and the local one that
//!   `schema::create_table` makes are the same;
//! - every environment variable a function gets is one the README's
//!   configuration table documents for that function, and the required ones
//!   are set;
//! - every alarm on the code's metric namespace watches a metric the code
//!   emits, and the metrics that must page someone have an alarm;
//! - the stack's own state-change bus admits `events:PutEvents` from the
//!   functions' roles only (an Allow for them, a Deny for everyone else).
//!
//! Each check returns the list of differences, so a failure says what
//! differs; `checks_report_mismatches` proves the checks are not vacuous.

use aws_sdk_dynamodb::types::{BillingMode, KeyType, ProjectionType};
use serde_json::{Value, json};
use shared::iam::{FunctionPolicy, POLICIES};
use shared::schema;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

const TEMPLATE: &str = "infra/template.yaml";
const README: &str = "README.md";
/// The parameter through which an existing app secret may be passed instead
/// of the template's own.
const EXISTING_SECRET_PARAMETER: &str = "ExistingAppSecretArn";
const SERVERLESS_FUNCTION: &str = "AWS::Serverless::Function";

fn workspace_file(relative: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn load_template() -> Value {
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&workspace_file(TEMPLATE))
        .unwrap_or_else(|e| panic!("{TEMPLATE} is not valid YAML: {e}"));
    to_json(yaml)
}

/// YAML to JSON, CloudFormation's short tags in their long form: `!Ref X`
/// becomes `{"Ref": "X"}`, `!GetAtt A.B` becomes `{"Fn::GetAtt": "A.B"}`,
/// `!Sub s` becomes `{"Fn::Sub": "s"}`, and so on.
fn to_json(value: serde_yaml_ng::Value) -> Value {
    use serde_yaml_ng::Value as Yaml;
    match value {
        Yaml::Null => Value::Null,
        Yaml::Bool(b) => Value::Bool(b),
        Yaml::Number(n) => {
            if let Some(i) = n.as_i64() {
                json!(i)
            } else if let Some(u) = n.as_u64() {
                json!(u)
            } else {
                json!(n.as_f64())
            }
        }
        Yaml::String(s) => Value::String(s),
        Yaml::Sequence(items) => Value::Array(items.into_iter().map(to_json).collect()),
        Yaml::Mapping(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (key_string(k), to_json(v)))
                .collect(),
        ),
        Yaml::Tagged(tagged) => {
            let tag = tagged.tag.to_string();
            let name = tag.trim_start_matches('!');
            let key = match name {
                "Ref" | "Condition" => name.to_owned(),
                _ => format!("Fn::{name}"),
            };
            let mut object = serde_json::Map::new();
            object.insert(key, to_json(tagged.value));
            Value::Object(object)
        }
    }
}

fn key_string(key: serde_yaml_ng::Value) -> String {
    match key {
        serde_yaml_ng::Value::String(s) => s,
        other => serde_yaml_ng::to_string(&other)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
    }
}

/// A string, or each string of a list (IAM's `Action`, `Resource`).
fn one_or_many(value: &Value) -> Vec<&Value> {
    match value {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    }
}

/// What an IAM `Resource` points at.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Table,
    DueIndex,
    Secret,
    EventBus,
    Other(String),
}

/// A bus the stack does not own, named by the `EventBusName` parameter.
const EVENT_BUS_ARN: &str =
    "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:event-bus/${EventBusName}";

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Table => write!(f, "the installs table"),
            Target::DueIndex => write!(f, "the {} index", schema::DUE_INDEX),
            Target::Secret => write!(f, "the app secret"),
            Target::EventBus => write!(f, "the state-change event bus"),
            Target::Other(s) => write!(f, "resource {s}"),
        }
    }
}

/// The parsed template and the logical ids the checks refer to.
struct Template<'a> {
    root: &'a Value,
    table: Option<String>,
    secrets: BTreeSet<String>,
    /// The stack's own state-change bus (created unless `EventBusName`
    /// names another).
    buses: BTreeSet<String>,
}

impl<'a> Template<'a> {
    fn new(root: &'a Value) -> Self {
        let tables = Self::ids_of_type(root, "AWS::DynamoDB::Table");
        let table = (tables.len() == 1).then(|| tables[0].clone());
        let secrets = Self::ids_of_type(root, "AWS::SecretsManager::Secret")
            .into_iter()
            .collect();
        let buses = Self::ids_of_type(root, "AWS::Events::EventBus")
            .into_iter()
            .collect();
        Self {
            root,
            table,
            secrets,
            buses,
        }
    }

    fn resources(root: &Value) -> impl Iterator<Item = (&String, &Value)> {
        root.get("Resources")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
    }

    fn ids_of_type(root: &Value, kind: &str) -> Vec<String> {
        Self::resources(root)
            .filter(|(_, r)| r.get("Type").and_then(Value::as_str) == Some(kind))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Every serverless function as (logical id, resource, binary).
    fn functions(&self) -> Vec<(&'a String, &'a Value, Option<&'a str>)> {
        Self::resources(self.root)
            .filter(|(_, r)| r.get("Type").and_then(Value::as_str) == Some(SERVERLESS_FUNCTION))
            .map(|(id, r)| {
                let binary = r
                    .pointer("/Metadata/BuildProperties/Binary")
                    .and_then(Value::as_str);
                (id, r, binary)
            })
            .collect()
    }

    fn globals_function(&self) -> Option<&'a Value> {
        self.root.pointer("/Globals/Function")
    }

    /// What a `Resource` (or an environment value) refers to.
    fn classify(&self, value: &Value) -> Target {
        let other = || Target::Other(value.to_string());
        let Some(object) = value.as_object().filter(|o| o.len() == 1) else {
            return other();
        };
        let table = self.table.as_deref().unwrap_or("<no table>");
        if let Some(get_att) = object.get("Fn::GetAtt") {
            let (id, attribute) = match get_att {
                Value::String(s) => match s.split_once('.') {
                    Some((id, attribute)) => (id, attribute),
                    None => return other(),
                },
                Value::Array(parts) if parts.len() == 2 => {
                    match (parts[0].as_str(), parts[1].as_str()) {
                        (Some(id), Some(attribute)) => (id, attribute),
                        _ => return other(),
                    }
                }
                _ => return other(),
            };
            if id == table && attribute == "Arn" {
                return Target::Table;
            }
            if attribute == "Arn" && self.buses.contains(id) {
                return Target::EventBus;
            }
        }
        if let Some(sub) = object.get("Fn::Sub") {
            let text = match sub {
                Value::String(s) => Some(s.as_str()),
                Value::Array(parts) if parts.len() == 1 => parts[0].as_str(),
                _ => None,
            };
            if text == Some(format!("${{{table}.Arn}}/index/{}", schema::DUE_INDEX).as_str()) {
                return Target::DueIndex;
            }
            if text == Some(EVENT_BUS_ARN) {
                return Target::EventBus;
            }
        }
        if let Some(Value::String(id)) = object.get("Ref")
            && (self.secrets.contains(id) || id == EXISTING_SECRET_PARAMETER)
        {
            return Target::Secret;
        }
        if let Some(Value::Array(branches)) = object.get("Fn::If")
            && branches.len() == 3
        {
            let (a, b) = (self.classify(&branches[1]), self.classify(&branches[2]));
            if a == b && !matches!(a, Target::Other(_)) {
                return a;
            }
        }
        other()
    }
}

// ------------------------------------------------------------------ IAM

/// Differences between the functions' IAM grants and `shared::iam::POLICIES`.
fn policy_differences(root: &Value) -> Vec<String> {
    let t = Template::new(root);
    let mut diffs = Vec::new();
    if t.table.is_none() {
        diffs.push(format!(
            "{TEMPLATE} must define exactly one AWS::DynamoDB::Table (the installs table)"
        ));
        return diffs;
    }
    if let Some(globals) = t.globals_function() {
        for key in ["Policies", "Role"] {
            if globals.get(key).is_some() {
                diffs.push(format!(
                    "Globals.Function sets {key}: grants must be per function, as shared::iam::POLICIES lists them"
                ));
            }
        }
    }
    for kind in [
        "AWS::IAM::Role",
        "AWS::IAM::Policy",
        "AWS::IAM::ManagedPolicy",
        "AWS::IAM::RolePolicy",
    ] {
        for id in Template::ids_of_type(root, kind) {
            diffs.push(format!(
                "{id} ({kind}) grants outside the functions' inline Policies, which this test cannot match to shared::iam::POLICIES"
            ));
        }
    }
    let functions = t.functions();
    for (id, _, binary) in &functions {
        match binary {
            None => diffs.push(format!(
                "function {id} has no Metadata.BuildProperties.Binary naming its binary"
            )),
            Some(b) if shared::iam::policy(b).is_none() => diffs.push(format!(
                "function {id} (binary {b}) has no entry in shared::iam::POLICIES: add the actions its code calls there"
            )),
            Some(_) => {}
        }
    }
    for policy in POLICIES {
        let matching: Vec<_> = functions
            .iter()
            .filter(|(_, _, b)| *b == Some(policy.function))
            .collect();
        match matching.as_slice() {
            [] => diffs.push(format!(
                "no {SERVERLESS_FUNCTION} has Metadata.BuildProperties.Binary: {} (listed in shared::iam::POLICIES)",
                policy.function
            )),
            [(id, resource, _)] => diffs.extend(function_differences(&t, policy, id, resource)),
            many => diffs.push(format!(
                "{} functions have Binary: {} ({}); expected one",
                many.len(),
                policy.function,
                many.iter()
                    .map(|(id, _, _)| id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
    diffs
}

fn function_differences(
    t: &Template<'_>,
    policy: &FunctionPolicy,
    id: &str,
    resource: &Value,
) -> Vec<String> {
    let who = format!("{} ({id})", policy.function);
    let mut diffs = Vec::new();
    let properties = resource.get("Properties").unwrap_or(&Value::Null);
    if properties.get("Role").is_some() {
        diffs.push(format!(
            "{who} sets Role: its grants must come from its inline Policies statements"
        ));
    }
    let mut granted: BTreeSet<(Target, String)> = BTreeSet::new();
    let entries = properties
        .get("Policies")
        .map(one_or_many)
        .unwrap_or_default();
    for entry in entries {
        let Some(document) = entry.as_object().filter(|d| d.contains_key("Statement")) else {
            diffs.push(format!(
                "{who}: Policies entry {entry} is a managed policy or a SAM policy template; use inline statements (templates grant more than shared::iam lists)"
            ));
            continue;
        };
        for key in document.keys() {
            if key != "Statement" && key != "Version" {
                diffs.push(format!("{who}: unexpected key {key} in a policy document"));
            }
        }
        for statement in one_or_many(&document["Statement"]) {
            if statement.get("Effect").and_then(Value::as_str) != Some("Allow") {
                diffs.push(format!("{who}: statement {statement} is not Effect: Allow"));
                continue;
            }
            for key in ["NotAction", "NotResource", "NotPrincipal"] {
                if statement.get(key).is_some() {
                    diffs.push(format!(
                        "{who}: statement uses {key}, which grants by exclusion"
                    ));
                }
            }
            let actions: Vec<String> = statement
                .get("Action")
                .map(one_or_many)
                .unwrap_or_default()
                .into_iter()
                .map(|a| a.as_str().map_or_else(|| a.to_string(), str::to_owned))
                .collect();
            let resources: Vec<Target> = statement
                .get("Resource")
                .map(one_or_many)
                .unwrap_or_default()
                .into_iter()
                .map(|r| t.classify(r))
                .collect();
            if actions.is_empty() || resources.is_empty() {
                diffs.push(format!(
                    "{who}: statement {statement} needs both Action and Resource"
                ));
            }
            for action in &actions {
                if action.contains('*') {
                    diffs.push(format!("{who}: wildcard action {action}"));
                }
            }
            if resources.contains(&Target::Table) {
                diffs.extend(leading_key_differences(&who, policy, statement));
            }
            for target in &resources {
                if let Target::Other(r) = target
                    && r.contains('*')
                {
                    diffs.push(format!("{who}: wildcard resource {r}"));
                }
                for action in &actions {
                    granted.insert((target.clone(), action.clone()));
                }
            }
        }
    }
    let expected: BTreeSet<(Target, String)> = [
        (Target::Table, policy.dynamodb),
        (Target::DueIndex, policy.dynamodb_index),
        (Target::Secret, policy.secretsmanager),
        (Target::EventBus, policy.events),
    ]
    .into_iter()
    .flat_map(|(target, actions)| {
        actions
            .iter()
            .map(move |a| (target.clone(), (*a).to_owned()))
    })
    .collect();
    for (target, action) in expected.difference(&granted) {
        diffs.push(format!(
            "{who} is not granted {action} on {target}, which shared::iam::POLICIES lists (the code calls it)"
        ));
    }
    for (target, action) in granted.difference(&expected) {
        diffs.push(format!(
            "{who} is granted {action} on {target}, which shared::iam::POLICIES does not list for it"
        ));
    }
    diffs
}

/// A table statement's `dynamodb:LeadingKeys` condition against the
/// partition-key prefixes `shared::iam` lists for the function (none: no
/// condition at all).
fn leading_key_differences(who: &str, policy: &FunctionPolicy, statement: &Value) -> Vec<String> {
    let expected: BTreeSet<String> = policy.table_keys.iter().map(|p| format!("{p}*")).collect();
    let condition = statement.get("Condition");
    let granted: Option<BTreeSet<String>> = condition.map(|c| {
        one_or_many(&c["ForAllValues:StringLike"]["dynamodb:LeadingKeys"])
            .into_iter()
            .map(|k| k.as_str().map_or_else(|| k.to_string(), str::to_owned))
            .collect()
    });
    match (expected.is_empty(), granted) {
        (true, None) => vec![],
        (true, Some(_)) => vec![format!(
            "{who}: its table statement has a condition, but shared::iam lists no table_keys for it"
        )],
        (false, None) => vec![format!(
            "{who}: its table statement has no dynamodb:LeadingKeys condition; shared::iam limits it to {expected:?}"
        )],
        (false, Some(granted)) => {
            let extra_conditions = condition
                .and_then(Value::as_object)
                .is_some_and(|c| c.len() != 1);
            let mut diffs = Vec::new();
            if granted != expected || extra_conditions {
                diffs.push(format!(
                    "{who}: dynamodb:LeadingKeys (ForAllValues:StringLike) is {granted:?}, not {expected:?} from shared::iam"
                ));
            }
            diffs
        }
    }
}

// ---------------------------------------------------------------- table

/// Differences between the installs table and `shared::schema`.
fn table_differences(root: &Value) -> Vec<String> {
    let t = Template::new(root);
    let Some(id) = t.table.as_deref() else {
        return vec![format!(
            "{TEMPLATE} must define exactly one AWS::DynamoDB::Table (the installs table)"
        )];
    };
    let p = &root["Resources"][id]["Properties"];
    let mut diffs = Vec::new();
    let (hash, range) = (KeyType::Hash.as_str(), KeyType::Range.as_str());

    let pairs = |value: &Value, a: &str, b: &str| -> BTreeSet<(String, String)> {
        value
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let field = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
                (field(a), field(b))
            })
            .collect()
    };
    let set = |items: &[(&str, &str)]| -> BTreeSet<(String, String)> {
        items
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    };
    let mut compare =
        |what: &str, actual: BTreeSet<(String, String)>, expected: BTreeSet<(String, String)>| {
            for (name, kind) in expected.difference(&actual) {
                diffs.push(format!(
                    "{id} {what}: missing {name} ({kind}), which shared::schema has"
                ));
            }
            for (name, kind) in actual.difference(&expected) {
                diffs.push(format!(
                    "{id} {what}: {name} ({kind}) is not in shared::schema"
                ));
            }
        };

    compare(
        "AttributeDefinitions",
        pairs(&p["AttributeDefinitions"], "AttributeName", "AttributeType"),
        set(&schema::KEY_ATTRIBUTES),
    );
    compare(
        "KeySchema",
        pairs(&p["KeySchema"], "AttributeName", "KeyType"),
        set(&[(schema::PK, hash), (schema::SK, range)]),
    );

    let indexes: Vec<&Value> = p["GlobalSecondaryIndexes"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let name_of = |i: &Value| {
        i.get("IndexName")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned()
    };
    for index in &indexes {
        if !schema::INDEXES.iter().any(|s| s.name == name_of(index)) {
            diffs.push(format!(
                "{id}: index {} is not in shared::schema (create_table does not make it)",
                name_of(index)
            ));
        }
    }
    for spec in &schema::INDEXES {
        let Some(index) = indexes.iter().find(|i| name_of(i) == spec.name) else {
            diffs.push(format!("{id}: no global secondary index {}", spec.name));
            continue;
        };
        let keys = pairs(&index["KeySchema"], "AttributeName", "KeyType");
        let expected = set(&[(spec.hash, hash), (spec.range, range)]);
        for (name, kind) in expected.difference(&keys) {
            diffs.push(format!(
                "{id} index {}: missing key {name} ({kind}), which shared::schema has",
                spec.name
            ));
        }
        for (name, kind) in keys.difference(&expected) {
            diffs.push(format!(
                "{id} index {}: key {name} ({kind}) is not in shared::schema",
                spec.name
            ));
        }
        let projection = index
            .pointer("/Projection/ProjectionType")
            .and_then(Value::as_str);
        let (expected_type, expected_attrs): (ProjectionType, &[&str]) = match spec.projection {
            schema::IndexProjection::KeysOnly => (ProjectionType::KeysOnly, &[]),
            schema::IndexProjection::Include(attrs) => (ProjectionType::Include, attrs),
        };
        if projection != Some(expected_type.as_str()) {
            diffs.push(format!(
                "{id} index {}: projection {projection:?}, but schema::create_table makes it {}",
                spec.name,
                expected_type.as_str()
            ));
        }
        let attrs: BTreeSet<&str> = index
            .pointer("/Projection/NonKeyAttributes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let expected_attrs: BTreeSet<&str> = expected_attrs.iter().copied().collect();
        for a in expected_attrs.difference(&attrs) {
            diffs.push(format!(
                "{id} index {}: NonKeyAttributes lacks {a}, which shared::schema projects",
                spec.name
            ));
        }
        for a in attrs.difference(&expected_attrs) {
            diffs.push(format!(
                "{id} index {}: NonKeyAttributes has {a}, which shared::schema does not project",
                spec.name
            ));
        }
    }
    if p.get("LocalSecondaryIndexes").is_some() {
        diffs.push(format!(
            "{id}: local secondary indexes are not in shared::schema"
        ));
    }

    let ttl = p
        .pointer("/TimeToLiveSpecification/AttributeName")
        .and_then(Value::as_str);
    if ttl != Some(schema::TTL) {
        diffs.push(format!(
            "{id}: TTL attribute {ttl:?}, but shared::schema::TTL is {:?}",
            schema::TTL
        ));
    }
    if p.pointer("/TimeToLiveSpecification/Enabled") != Some(&Value::Bool(true)) {
        diffs.push(format!(
            "{id}: TimeToLiveSpecification is not Enabled: true"
        ));
    }
    let billing = p.get("BillingMode").and_then(Value::as_str);
    if billing != Some(BillingMode::PayPerRequest.as_str()) {
        diffs.push(format!(
            "{id}: BillingMode {billing:?}, but schema::create_table uses {}",
            BillingMode::PayPerRequest.as_str()
        ));
    }
    diffs
}

// ---------------------------------------------------------- environment

/// Which functions a README configuration row applies to, and whether the
/// variable is required.
#[derive(Debug)]
struct Documented {
    functions: Option<BTreeSet<String>>,
    required: bool,
}

impl Documented {
    fn applies_to(&self, binary: &str) -> bool {
        self.functions.as_ref().is_none_or(|f| f.contains(binary))
    }
}

/// The README's `## Configuration` table: variable name to its row.
fn documented_variables(readme: &str) -> BTreeMap<String, Documented> {
    let mut out = BTreeMap::new();
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Configuration"))
        .unwrap_or("");
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 5 {
            continue;
        }
        let functions = (cells[2] != "all").then(|| {
            cells[2]
                .split(',')
                .map(|f| f.trim().trim_matches('`').to_owned())
                .collect()
        });
        let required = cells[3] == "required";
        for name in cells[1].split('`').skip(1).step_by(2) {
            out.insert(
                name.to_owned(),
                Documented {
                    functions: functions.clone(),
                    required,
                },
            );
        }
    }
    out
}

/// Differences between the functions' environments and the README.
fn environment_differences(root: &Value, readme: &str) -> Vec<String> {
    let t = Template::new(root);
    let documented = documented_variables(readme);
    if documented.is_empty() {
        return vec![format!(
            "{README} has no configuration table (a `## Configuration` section with `| \\`VAR\\` | functions | default | meaning |` rows)"
        )];
    }
    let variables = |v: Option<&Value>| -> BTreeMap<String, Value> {
        v.and_then(|v| v.pointer("/Environment/Variables"))
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    };
    let globals = variables(t.globals_function());
    let mut diffs = Vec::new();
    for (id, resource, binary) in t.functions() {
        let Some(binary) = binary else { continue };
        let who = format!("{binary} ({id})");
        let mut env = globals.clone();
        env.extend(variables(resource.get("Properties")));
        for name in env.keys() {
            match documented.get(name) {
                None => diffs.push(format!(
                    "{who} sets {name}, which {README}'s configuration table does not document"
                )),
                Some(doc) if !doc.applies_to(binary) => diffs.push(format!(
                    "{who} sets {name}, which {README} documents for {} only",
                    doc.functions
                        .iter()
                        .flatten()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                Some(_) => {}
            }
            if name == "AWS_ENDPOINT_URL" {
                diffs.push(format!(
                    "{who} sets AWS_ENDPOINT_URL, which is for local stacks only"
                ));
            }
        }
        for (name, doc) in &documented {
            if doc.required && doc.applies_to(binary) && !env.contains_key(name) {
                diffs.push(format!(
                    "{who} does not set {name}, which {README} marks required"
                ));
            }
        }
        if let Some(table) = env.get("INSTALLS_TABLE")
            && t.table
                .as_ref()
                .is_none_or(|id| table != &json!({"Ref": id}))
        {
            diffs.push(format!(
                "{who}: INSTALLS_TABLE is {table}, not a Ref of the installs table"
            ));
        }
        if let Some(secret) = env.get("GHL_APP_SECRET_ID")
            && t.classify(secret) != Target::Secret
        {
            diffs.push(format!(
                "{who}: GHL_APP_SECRET_ID is {secret}, not the app secret"
            ));
        }
    }
    diffs
}

// ---------------------------------------------------------------- alarms

/// Metrics of refresh-sweep that must have an alarm: reconciliation erasing
/// grants, holding removals back, or unable to check a company.
const ALARMED_SWEEP_METRICS: [&str; 4] = [
    "ReconcileRemoved",
    "ReconcileCapped",
    "ReconcileIncomplete",
    "ReconcileFailed",
];

/// Every `.rs` file of the library and the functions (not their tests),
/// concatenated: where the metrics are named.
fn code_sources() -> String {
    fn walk(dir: &std::path::Path, out: &mut String) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut out = String::new();
    walk(&shared.join("src"), &mut out);
    for f in std::fs::read_dir(shared.join("../functions")).expect("functions/") {
        walk(&f.unwrap().path().join("src"), &mut out);
    }
    out
}

/// Differences between the template's alarms and the metrics in `sources`.
fn alarm_differences(root: &Value, sources: &str) -> Vec<String> {
    let sweep = json!({"Ref": function_id(root, "refresh-sweep")});
    let ours: Vec<(&String, &Value)> = Template::resources(root)
        .filter(|(_, r)| r.get("Type").and_then(Value::as_str) == Some("AWS::CloudWatch::Alarm"))
        .filter_map(|(id, r)| Some((id, r.get("Properties")?)))
        .filter(|(_, p)| {
            p.get("Namespace").and_then(Value::as_str) == Some(shared::metrics::NAMESPACE)
        })
        .collect();
    let mut diffs = Vec::new();
    for (id, p) in &ours {
        let metric = p.get("MetricName").and_then(Value::as_str).unwrap_or("");
        if !sources.contains(&format!("\"{metric}\"")) {
            diffs.push(format!(
                "{id} watches {metric:?}, a metric the code never emits"
            ));
        }
    }
    for metric in ALARMED_SWEEP_METRICS {
        let watched = ours.iter().any(|(_, p)| {
            p.get("MetricName").and_then(Value::as_str) == Some(metric)
                && p.get("Dimensions")
                    .is_some_and(|d| d == &json!([{"Name": "Function", "Value": sweep}]))
                && p.get("AlarmActions")
                    .and_then(Value::as_array)
                    .is_some_and(|a| !a.is_empty())
        });
        if !watched {
            diffs.push(format!(
                "no alarm with actions watches {metric} of refresh-sweep"
            ));
        }
    }
    diffs
}

// ---------------------------------------------------------------- tests

fn assert_none(what: &str, diffs: Vec<String>) {
    assert!(
        diffs.is_empty(),
        "{TEMPLATE}: {what}:\n  - {}",
        diffs.join("\n  - ")
    );
}

#[test]
fn iam_grants_exactly_the_actions_the_code_calls() {
    assert!(!POLICIES.is_empty(), "shared::iam::POLICIES is empty");
    assert_none(
        "IAM grants differ from shared::iam::POLICIES",
        policy_differences(&load_template()),
    );
}

#[test]
fn installs_table_matches_the_schema() {
    assert_none(
        "the installs table differs from shared::schema",
        table_differences(&load_template()),
    );
}

#[test]
fn alarms_watch_metrics_the_code_emits() {
    assert_none(
        "alarms differ from the code's metrics",
        alarm_differences(&load_template(), &code_sources()),
    );
}

#[test]
fn environment_variables_are_the_documented_ones() {
    assert_none(
        "function environments differ from the README's configuration table",
        environment_differences(&load_template(), &workspace_file(README)),
    );
}

/// The logical id of the function built from `binary`.
fn function_id(root: &Value, binary: &str) -> String {
    Template::new(root)
        .functions()
        .into_iter()
        .find(|(_, _, b)| *b == Some(binary))
        .map(|(id, _, _)| id.clone())
        .unwrap_or_else(|| panic!("no function with Binary: {binary} in {TEMPLATE}"))
}

/// The first inline statement of `binary` that `wanted` picks.
fn statement_where<'a>(
    root: &'a mut Value,
    binary: &str,
    what: &str,
    wanted: impl Fn(&Value) -> bool,
) -> &'a mut Value {
    let id = function_id(root, binary);
    root["Resources"][&id]["Properties"]["Policies"]
        .as_array_mut()
        .into_iter()
        .flatten()
        .filter_map(|doc| doc.get_mut("Statement").and_then(Value::as_array_mut))
        .flatten()
        .find(|s| wanted(s))
        .unwrap_or_else(|| panic!("{binary} has no statement {what}"))
}

/// The first inline statement of `binary` whose actions include `action`.
fn statement_with<'a>(root: &'a mut Value, binary: &str, action: &str) -> &'a mut Value {
    statement_where(root, binary, &format!("granting {action}"), |s| {
        one_or_many(&s["Action"])
            .iter()
            .any(|a| a.as_str() == Some(action))
    })
}

fn changed(root: &Value, change: impl FnOnce(&mut Value)) -> Value {
    let mut copy = root.clone();
    change(&mut copy);
    copy
}

fn assert_reports(what: &str, diffs: &[String], needle: &str) {
    assert!(
        diffs.iter().any(|d| d.contains(needle)),
        "{what}: expected a difference mentioning {needle:?}, got {diffs:#?}"
    );
}

#[test]
fn checks_report_mismatches() {
    let root = load_template();
    let readme = workspace_file(README);
    let table = Template::new(&root).table.clone().expect("one table");

    // An extra action.
    let extra = changed(&root, |t| {
        let s = statement_with(t, "refresh-sweep", "dynamodb:GetItem");
        s["Action"]
            .as_array_mut()
            .unwrap()
            .push(json!("dynamodb:Scan"));
    });
    assert_reports(
        "extra action",
        &policy_differences(&extra),
        "dynamodb:Scan on the installs table",
    );

    // A missing action.
    let missing = changed(&root, |t| {
        let s = statement_with(t, "oauth-callback", "dynamodb:DeleteItem");
        s["Action"]
            .as_array_mut()
            .unwrap()
            .retain(|a| a != "dynamodb:DeleteItem");
    });
    assert_reports(
        "missing action",
        &policy_differences(&missing),
        "not granted dynamodb:DeleteItem",
    );

    // The index action granted on the table instead of the index.
    let moved = changed(&root, |t| {
        let s = statement_where(t, "refresh-sweep", "on the due index", |s| {
            s["Resource"].get("Fn::Sub").is_some()
        });
        s["Resource"] = json!({"Fn::GetAtt": format!("{table}.Arn")});
    });
    let diffs = policy_differences(&moved);
    assert_reports(
        "index grant on the wrong resource",
        &diffs,
        "not granted dynamodb:Query on the due-index index",
    );

    // Wildcards.
    let wildcard = changed(&root, |t| {
        let s = statement_with(t, "oauth-callback", "secretsmanager:GetSecretValue");
        s["Resource"] = json!("*");
        s["Action"] = json!(["secretsmanager:*"]);
    });
    let diffs = policy_differences(&wildcard);
    assert_reports("wildcard resource", &diffs, "wildcard resource");
    assert_reports(
        "wildcard action",
        &diffs,
        "wildcard action secretsmanager:*",
    );

    // A SAM policy template.
    let sam_template = changed(&root, |t| {
        let id = function_id(t, "oauth-callback");
        t["Resources"][&id]["Properties"]["Policies"]
            .as_array_mut()
            .unwrap()
            .push(json!({"DynamoDBCrudPolicy": {"TableName": {"Ref": table}}}));
    });
    let role = changed(&root, |t| {
        t["Resources"]["ExtraPolicy"] = json!({"Type": "AWS::IAM::Policy", "Properties": {}});
    });
    assert_reports(
        "standalone IAM resource",
        &policy_differences(&role),
        "ExtraPolicy (AWS::IAM::Policy)",
    );
    assert_reports(
        "SAM policy template",
        &policy_differences(&sam_template),
        "DynamoDBCrudPolicy",
    );

    // A function the policies do not know, and one they name but is gone.
    let renamed = changed(&root, |t| {
        let id = function_id(t, "token-mint");
        t["Resources"][&id]["Metadata"]["BuildProperties"]["Binary"] = json!("token-mint-v2");
    });
    let diffs = policy_differences(&renamed);
    assert_reports("unknown binary", &diffs, "token-mint-v2");
    assert_reports("missing function", &diffs, "Binary: token-mint (listed");

    // The table.
    let projection = changed(&root, |t| {
        t["Resources"][&table]["Properties"]["GlobalSecondaryIndexes"][0]["Projection"] =
            json!({"ProjectionType": "ALL"});
    });
    assert_reports("projection", &table_differences(&projection), "KEYS_ONLY");
    let projected = changed(&root, |t| {
        t["Resources"][&table]["Properties"]["GlobalSecondaryIndexes"][1]["Projection"]
            ["NonKeyAttributes"]
            .as_array_mut()
            .unwrap()
            .retain(|a| a != "state_reason");
    });
    assert_reports(
        "projected attributes",
        &table_differences(&projected),
        "broken-index: NonKeyAttributes lacks state_reason",
    );
    let no_broken_index = changed(&root, |t| {
        t["Resources"][&table]["Properties"]["GlobalSecondaryIndexes"]
            .as_array_mut()
            .unwrap()
            .truncate(1);
    });
    assert_reports(
        "missing index",
        &table_differences(&no_broken_index),
        "no global secondary index broken-index",
    );
    let ttl = changed(&root, |t| {
        t["Resources"][&table]["Properties"]["TimeToLiveSpecification"]["AttributeName"] =
            json!("expires");
    });
    assert_reports("TTL", &table_differences(&ttl), "\"expires\"");
    let key = changed(&root, |t| {
        t["Resources"][&table]["Properties"]["AttributeDefinitions"][3]["AttributeType"] =
            json!("S");
    });
    assert_reports(
        "attribute type",
        &table_differences(&key),
        "is not in shared::schema",
    );

    // The alarms.
    let sources = code_sources();
    let unalarmed = changed(&root, |t| {
        t["Resources"]
            .as_object_mut()
            .unwrap()
            .remove("ReconcileRemovedAlarm");
    });
    assert_reports(
        "missing alarm",
        &alarm_differences(&unalarmed, &sources),
        "no alarm with actions watches ReconcileRemoved",
    );
    let renamed = changed(&root, |t| {
        t["Resources"]["ReconcileFailedAlarm"]["Properties"]["MetricName"] =
            json!("ReconcileFailures");
    });
    let diffs = alarm_differences(&renamed, &sources);
    assert_reports("unknown metric", &diffs, "\"ReconcileFailures\", a metric");
    assert_reports("renamed metric", &diffs, "watches ReconcileFailed");

    // The environment.
    let undocumented = changed(&root, |t| {
        let id = function_id(t, "token-mint");
        t["Resources"][&id]["Properties"]["Environment"] =
            json!({"Variables": {"FOO": "1", "SWEEP_CONCURRENCY": "8"}});
    });
    let diffs = environment_differences(&undocumented, &readme);
    assert_reports("undocumented variable", &diffs, "sets FOO");
    assert_reports(
        "variable of another function",
        &diffs,
        "documents for refresh-sweep only",
    );
    let unset = changed(&root, |t| {
        t["Globals"]["Function"]["Environment"]["Variables"]
            .as_object_mut()
            .unwrap()
            .remove("INSTALLS_TABLE");
    });
    assert_reports(
        "required variable",
        &environment_differences(&unset, &readme),
        "does not set INSTALLS_TABLE",
    );
}

// ------------------------------------------- exposure and capacity (issue 16)

/// A parameter's default, as a number.
fn parameter_default(root: &Value, name: &str) -> Option<i64> {
    let d = root.pointer(&format!("/Parameters/{name}/Default"))?;
    d.as_i64()
        .or_else(|| d.as_str().and_then(|s| s.parse().ok()))
}

/// The public functions and the mint have reserved concurrency from a
/// parameter with a sane default (so a flood on a public URL stays inside
/// its cap and cannot starve the mint); the callback's volume and its
/// install errors alarm per minute; the mint's optional entrance is IAM-only
/// on the alias the code trusts; the optional trail records the mint.
fn exposure_differences(root: &Value) -> Vec<String> {
    let mut diffs = Vec::new();
    for (binary, parameter, max_default) in [
        ("oauth-callback", "CallbackReservedConcurrency", 50),
        ("marketplace-webhook", "WebhookReservedConcurrency", 200),
        ("token-mint", "MintReservedConcurrency", 200),
    ] {
        let id = function_id(root, binary);
        let reserved = root.pointer(&format!(
            "/Resources/{id}/Properties/ReservedConcurrentExecutions"
        ));
        let from_parameter = reserved.and_then(|r| r.pointer("/Fn::If/1"))
            == Some(&json!({"Ref": parameter}))
            || reserved == Some(&json!({"Ref": parameter}));
        if !from_parameter {
            diffs.push(format!(
                "{binary}: ReservedConcurrentExecutions is not taken from parameter {parameter}"
            ));
        }
        match parameter_default(root, parameter) {
            Some(d) if (1..=max_default).contains(&d) => {}
            other => diffs.push(format!(
                "{parameter} defaults to {other:?}; expected 1..={max_default}"
            )),
        }
    }
    let alarms: Vec<&Value> = Template::resources(root)
        .filter(|(_, r)| r["Type"] == "AWS::CloudWatch::Alarm")
        .map(|(_, r)| &r["Properties"])
        .collect();
    let callback = function_id(root, "oauth-callback");
    for (namespace, metric, dimension) in [
        ("AWS/Lambda", "Invocations", "FunctionName"),
        ("GhlOAuth", "InstallErrors", "Function"),
    ] {
        let found = alarms.iter().any(|p| {
            p["Namespace"] == namespace
                && p["MetricName"] == metric
                && p["Period"] == 60
                && p["AlarmActions"].is_array()
                && p["Dimensions"].as_array().is_some_and(|d| {
                    d.contains(&json!({"Name": dimension, "Value": {"Ref": callback}}))
                })
        });
        if !found {
            diffs.push(format!(
                "no per-minute alarm with actions on {namespace} {metric} of {callback}"
            ));
        }
    }
    let mint = function_id(root, "token-mint");
    for (id, r) in Template::resources(root).filter(|(_, r)| r["Type"] == "AWS::Lambda::Url") {
        let p = &r["Properties"];
        if p["TargetFunctionArn"] != json!({"Fn::GetAtt": format!("{mint}.Arn")}) {
            continue;
        }
        if p["AuthType"] != "AWS_IAM" {
            diffs.push(format!(
                "{id}: the mint's Function URL must use AuthType AWS_IAM"
            ));
        }
        if p["Qualifier"] != shared::callers::URL_ALIAS {
            diffs.push(format!(
                "{id}: the mint's Function URL must target the {:?} alias, the only qualifier whose request context the code trusts",
                shared::callers::URL_ALIAS
            ));
        }
    }
    let trail_selects_mint = Template::resources(root)
        .filter(|(_, r)| r["Type"] == "AWS::CloudTrail::Trail")
        .any(|(_, r)| {
            r["Properties"]["AdvancedEventSelectors"]
                .to_string()
                .contains(&format!("\"{mint}.Arn\""))
        });
    if !trail_selects_mint {
        diffs.push(format!("no CloudTrail trail records data events of {mint}"));
    }
    diffs
}

#[test]
fn public_urls_are_capped_alarmed_and_the_mint_url_is_iam_only() {
    let root = load_template();
    assert_none("exposure", exposure_differences(&root));
    let mint = function_id(&root, "token-mint");
    let uncapped = changed(&root, |t| {
        let id = function_id(t, "oauth-callback");
        t["Resources"][&id]["Properties"]
            .as_object_mut()
            .unwrap()
            .remove("ReservedConcurrentExecutions");
    });
    assert_reports(
        "uncapped callback",
        &exposure_differences(&uncapped),
        "oauth-callback: ReservedConcurrentExecutions",
    );
    let open = changed(&root, |t| {
        t["Resources"]["TokenMintUrl"]["Properties"]["AuthType"] = json!("NONE");
        t["Resources"]["TokenMintUrl"]["Properties"]
            .as_object_mut()
            .unwrap()
            .remove("Qualifier");
    });
    let diffs = exposure_differences(&open);
    assert_reports("public mint", &diffs, "must use AuthType AWS_IAM");
    assert_reports(
        "unqualified mint URL",
        &diffs,
        "must target the \"url\" alias",
    );
    let quiet = changed(&root, |t| {
        t["Resources"]
            .as_object_mut()
            .unwrap()
            .remove("InstallErrorsAlarm");
    });
    assert_reports(
        "no install error alarm",
        &exposure_differences(&quiet),
        "InstallErrors",
    );
    assert!(!mint.is_empty());
}

// ------------------------------------------------ the state-change bus (issue 16)

/// The stack creates its own bus unless `EventBusName` names another (so the
/// default is the stack's bus), the functions publish to it, and its
/// resource policy admits `events:PutEvents` from the functions' roles and
/// denies it to every other principal: an identity policy allowing
/// PutEvents on `*` (an admin's, another service's) cannot forge an event,
/// because an explicit Deny in the bus's policy wins.
fn bus_policy_differences(root: &Value) -> Vec<String> {
    let mut diffs = Vec::new();
    let buses = Template::ids_of_type(root, "AWS::Events::EventBus");
    let [bus] = buses.as_slice() else {
        return vec![format!(
            "expected one AWS::Events::EventBus (the state-change bus), found {buses:?}"
        )];
    };
    let bus_resource = &root["Resources"][bus];
    match bus_resource["Condition"].as_str() {
        Some(c)
            if root["Conditions"][c]
                == json!({"Fn::Equals": [{"Ref": "EventBusName"}, ""]}) => {}
        other => diffs.push(format!(
            "{bus}: its Condition {other:?} is not EventBusName == \"\" (create the bus unless another is named)"
        )),
    }
    if root.pointer("/Parameters/EventBusName/Default") != Some(&json!("")) {
        diffs.push(
            "EventBusName must default to \"\", so that a stack gets its own bus by default"
                .to_owned(),
        );
    }
    if bus_resource["Properties"].get("Policy").is_some() {
        diffs.push(format!(
            "{bus}: a Policy property on the bus is not checked here; use AWS::Events::EventBusPolicy"
        ));
    }
    let bus_env = root.pointer("/Globals/Function/Environment/Variables/EVENT_BUS_NAME");
    let names_bus = bus_env
        .and_then(|v| v.pointer("/Fn::If"))
        .is_some_and(|b| b[1] == json!({"Ref": bus}) && b[2] == json!({"Ref": "EventBusName"}));
    if !names_bus {
        diffs.push(format!(
            "Globals EVENT_BUS_NAME is {bus_env:?}, not !If [.., !Ref {bus}, !Ref EventBusName]"
        ));
    }
    // The roles SAM makes for the functions that publish.
    // (As JSON text: serde_json's Value is not Ord.)
    let roles: BTreeSet<String> = POLICIES
        .iter()
        .filter(|p| !p.events.is_empty())
        .map(|p| {
            json!({"Fn::GetAtt": format!("{}Role.Arn", function_id(root, p.function))}).to_string()
        })
        .collect();
    let set = |v: &Value| -> BTreeSet<String> {
        one_or_many(v).into_iter().map(Value::to_string).collect()
    };
    let bus_arn = json!({"Fn::GetAtt": format!("{bus}.Arn")});
    let (mut allows, mut denies) = (0, 0);
    for (id, r) in
        Template::resources(root).filter(|(_, r)| r["Type"] == "AWS::Events::EventBusPolicy")
    {
        let p = &r["Properties"];
        if p["EventBusName"] != json!({"Ref": bus}) {
            continue;
        }
        if r["Condition"] != bus_resource["Condition"] {
            diffs.push(format!("{id}: not under the bus's Condition"));
        }
        let st = &p["Statement"];
        if st["Action"] != "events:PutEvents" || st["Resource"] != bus_arn {
            diffs.push(format!(
                "{id}: the statement must be Action events:PutEvents on {bus}.Arn exactly"
            ));
        }
        match st["Effect"].as_str() {
            Some("Allow") => {
                allows += 1;
                if set(&st["Principal"]["AWS"]) != roles || st.get("Condition").is_some() {
                    diffs.push(format!(
                        "{id}: Allow must name exactly the publishing functions' roles {roles:?}, got {}",
                        st["Principal"]
                    ));
                }
            }
            Some("Deny") => {
                denies += 1;
                let except = &st["Condition"]["ArnNotEquals"]["aws:PrincipalArn"];
                if st["Principal"] != "*"
                    || set(except) != roles
                    || st["Condition"].as_object().map(|c| c.len()) != Some(1)
                {
                    diffs.push(format!(
                        "{id}: Deny must cover Principal \"*\" except (ArnNotEquals aws:PrincipalArn) exactly the roles {roles:?}"
                    ));
                }
            }
            other => diffs.push(format!("{id}: Effect {other:?}")),
        }
    }
    if allows != 1 || denies != 1 {
        diffs.push(format!(
            "{bus}: expected one Allow and one Deny EventBusPolicy, found {allows} and {denies}"
        ));
    }
    diffs
}

#[test]
fn only_the_functions_may_put_events_on_the_stacks_bus() {
    let root = load_template();
    assert_none("the state-change bus", bus_policy_differences(&root));
    let policy = |t: &mut Value, effect: &str| -> String {
        Template::resources(t)
            .find(|(_, r)| {
                r["Type"] == "AWS::Events::EventBusPolicy"
                    && r["Properties"]["Statement"]["Effect"] == effect
            })
            .map(|(id, _)| id.clone())
            .unwrap()
    };
    let allow_all = changed(&root, |t| {
        let id = policy(t, "Allow");
        t["Resources"][&id]["Properties"]["Statement"]["Principal"] = json!("*");
    });
    assert_reports(
        "anyone allowed",
        &bus_policy_differences(&allow_all),
        "Allow must name exactly",
    );
    let no_deny = changed(&root, |t| {
        let id = policy(t, "Deny");
        t["Resources"].as_object_mut().unwrap().remove(&id);
    });
    assert_reports(
        "no deny",
        &bus_policy_differences(&no_deny),
        "found 1 and 0",
    );
    let wider_deny_hole = changed(&root, |t| {
        let id = policy(t, "Deny");
        t["Resources"][&id]["Properties"]["Statement"]["Condition"]["ArnNotEquals"]
            ["aws:PrincipalArn"]
            .as_array_mut()
            .unwrap()
            .push(json!("arn:aws:iam::123456789012:role/Admin"));
    });
    assert_reports(
        "extra exempt principal",
        &bus_policy_differences(&wider_deny_hole),
        "Deny must cover",
    );
    let default_bus = changed(&root, |t| {
        t["Parameters"]["EventBusName"]["Default"] = json!("default");
    });
    assert_reports(
        "default bus by default",
        &bus_policy_differences(&default_bus),
        "must default to \"\"",
    );
    // A function granted PutEvents on some other bus.
    let elsewhere = changed(&root, |t| {
        let s = statement_with(t, "marketplace-webhook", "events:PutEvents");
        s["Resource"] = json!("arn:aws:events:us-east-1:123456789012:event-bus/default");
    });
    assert_reports(
        "PutEvents elsewhere",
        &policy_differences(&elsewhere),
        "not granted events:PutEvents on the state-change event bus",
    );
}

// ------------------------------------------- least privilege (issue 16, item 4)

/// marketplace-webhook holds no key: no statement of its role names the app
/// secret, and it gets the app id (its only use of the secret before) from
/// the `AppId` parameter as `GHL_APP_ID`.
fn webhook_secret_differences(root: &Value) -> Vec<String> {
    let t = Template::new(root);
    let id = function_id(root, "marketplace-webhook");
    let mut diffs = Vec::new();
    let statements = root["Resources"][&id]["Properties"]["Policies"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|d| one_or_many(&d["Statement"]));
    for s in statements {
        if one_or_many(&s["Resource"])
            .iter()
            .any(|r| t.classify(r) == Target::Secret)
        {
            diffs.push(format!("{id} is granted {} on the app secret", s["Action"]));
        }
    }
    let app_id = &root["Resources"][&id]["Properties"]["Environment"]["Variables"]["GHL_APP_ID"];
    if app_id.pointer("/Fn::If/1") != Some(&json!({"Ref": "AppId"})) {
        diffs.push(format!(
            "{id}: GHL_APP_ID is {app_id}, not the AppId parameter"
        ));
    }
    diffs
}

#[test]
fn the_webhook_never_reads_the_app_secret() {
    assert!(
        shared::iam::policy("marketplace-webhook").is_some_and(|p| p.secretsmanager.is_empty()),
        "shared::iam lists a Secrets Manager action for marketplace-webhook"
    );
    let root = load_template();
    assert_none("the webhook's secret", webhook_secret_differences(&root));
    let reads = changed(&root, |t| {
        let id = function_id(t, "marketplace-webhook");
        t["Resources"][&id]["Properties"]["Policies"][0]["Statement"]
            .as_array_mut()
            .unwrap()
            .push(json!({"Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
                "Resource": {"Fn::If": ["CreateAppSecret", {"Ref": "AppSecret"}, {"Ref": "ExistingAppSecretArn"}]}}));
    });
    assert_reports(
        "webhook reading the secret",
        &webhook_secret_differences(&reads),
        "on the app secret",
    );
    assert_reports(
        "webhook reading the secret (against shared::iam)",
        &policy_differences(&reads),
        "secretsmanager:GetSecretValue on the app secret",
    );
}

#[test]
fn public_functions_touch_only_their_own_kinds_of_item() {
    for (function, keys) in [
        ("oauth-callback", &["code#", "company#", "location#"][..]),
        (
            "marketplace-webhook",
            &["company#", "location#", "minted#", "webhook#"][..],
        ),
    ] {
        assert_eq!(
            shared::iam::policy(function).map(|p| p.table_keys),
            Some(keys),
            "{function}"
        );
    }
    let root = load_template();
    let widened = changed(&root, |t| {
        let s = statement_with(t, "marketplace-webhook", "dynamodb:PutItem");
        s["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"]
            .as_array_mut()
            .unwrap()
            .push(json!("code#*"));
    });
    assert_reports(
        "webhook admitted to code claims",
        &policy_differences(&widened),
        "dynamodb:LeadingKeys",
    );
    let dropped = changed(&root, |t| {
        let s = statement_with(t, "oauth-callback", "dynamodb:PutItem");
        s.as_object_mut().unwrap().remove("Condition");
    });
    assert_reports(
        "callback without LeadingKeys",
        &policy_differences(&dropped),
        "no dynamodb:LeadingKeys condition",
    );
}
