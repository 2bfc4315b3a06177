//! infra/permissions.yaml held against the template's policies and the code:
//! every AWS call each function makes is granted, and nothing else is.

use std::collections::{BTreeMap, BTreeSet};

use serde_yaml::Value;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

pub fn load_list() -> Value {
    let text = std::fs::read_to_string(format!("{REPO}/infra/permissions.yaml"))
        .expect("infra/permissions.yaml is readable");
    serde_yaml::from_str(&text).expect("infra/permissions.yaml is valid YAML")
}

/// The sources the check reads, by path: the adapters, bootstrap.rs and
/// every function's main.rs. Tests change a copy to show a rule can fail.
pub fn sources() -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let mut read_dir = |dir: &str, only: Option<&str>| {
        for entry in std::fs::read_dir(format!("{REPO}/{dir}"))
            .unwrap()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().to_string();
            if only.is_some_and(|o| o != name) || !name.ends_with(".rs") {
                continue;
            }
            let path = format!("{dir}/{name}");
            found.insert(path, std::fs::read_to_string(entry.path()).unwrap());
        }
    };
    read_dir("shared/src/adapters", None);
    read_dir("shared/src", Some("bootstrap.rs"));
    for function in std::fs::read_dir(format!("{REPO}/functions"))
        .unwrap()
        .flatten()
    {
        let name = function.file_name().to_string_lossy().to_string();
        read_dir(&format!("functions/{name}/src"), Some("main.rs"));
    }
    found
}

/// One `impl` (or `pub struct`) block of an adapter file.
struct Block {
    owner: String,
    /// The trait of `impl Trait for Owner`, None for an inherent impl.
    trait_name: Option<String>,
    text: String,
}

fn blocks(source: &str) -> Vec<Block> {
    let mut found: Vec<Block> = Vec::new();
    // A #[cfg(test)] module (up to its closing brace at column 0) is not shipped.
    let mut in_tests = false;
    for line in source.lines() {
        if line == "#[cfg(test)]" {
            in_tests = true;
            continue;
        }
        if in_tests {
            in_tests = line != "}";
            continue;
        }
        let header = line
            .strip_prefix("impl ")
            .or_else(|| {
                line.strip_prefix("impl<")
                    .map(|l| l.split_once("> ").map_or(l, |x| x.1))
            })
            .map(|h| h.trim_end_matches('{').trim().to_string());
        let header = header.or_else(|| {
            line.strip_prefix("pub struct ")
                .map(|h| h.trim_end_matches('{').trim().to_string())
        });
        if let Some(header) = header {
            let (trait_name, owner) = match header.split_once(" for ") {
                Some((t, o)) => (Some(t.trim().to_string()), o.trim().to_string()),
                None => (None, header.clone()),
            };
            let owner = owner
                .split(['<', ' ', ';', '('])
                .next()
                .unwrap_or_default()
                .to_string();
            found.push(Block {
                owner,
                trait_name: trait_name
                    .map(|t| t.rsplit("::").next().unwrap_or_default().to_string()),
                text: String::new(),
            });
        } else if let Some(last) = found.last_mut() {
            last.text.push_str(line);
            last.text.push('\n');
        }
    }
    found
}

/// The SDK operations called in `text`: `client.<op>()` chains.
fn operations(text: &str) -> BTreeSet<String> {
    let flat: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let mut found = BTreeSet::new();
    for (at, _) in flat.match_indices("client.") {
        let rest = &flat[at + "client.".len()..];
        let rest = rest.strip_prefix("clone().").unwrap_or(rest);
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if rest[name.len()..].starts_with("()") && !name.is_empty() && name != "clone" {
            found.insert(name);
        }
    }
    found
}

fn service_of(path: &str) -> Option<&'static str> {
    Some(match path.rsplit('/').next()? {
        "s3.rs" => "s3",
        "sqs.rs" => "sqs",
        "dynamodb.rs" | "task_admin.rs" => "dynamodb",
        "secrets.rs" => "secretsmanager",
        "sns.rs" => "sns",
        _ => return None,
    })
}

/// (owner type, trait of the impl, service, SDK operations, the block's text).
type AdapterBlock = (
    String,
    Option<String>,
    &'static str,
    BTreeSet<String>,
    String,
);

/// What the code says: per adapter block, its service and operations; per
/// function, the adapter types it reaches.
pub struct Code {
    /// One entry per impl block: (owner, trait, service, operations, text).
    adapters: Vec<AdapterBlock>,
}

impl Code {
    pub fn read(sources: &BTreeMap<String, String>) -> Self {
        let mut adapters = Vec::new();
        for (path, text) in sources {
            let Some(service) = service_of(path) else {
                continue;
            };
            for block in blocks(text) {
                let ops = operations(&block.text);
                adapters.push((block.owner, block.trait_name, service, ops, block.text));
            }
        }
        Code { adapters }
    }

    fn types(&self) -> BTreeSet<String> {
        self.adapters.iter().map(|a| a.0.clone()).collect()
    }

    /// The adapter types `text` names, and those these name in turn.
    fn reached(&self, text: &str) -> BTreeSet<String> {
        let types = self.types();
        let names = |t: &str| -> BTreeSet<String> {
            types
                .iter()
                .filter(|name| {
                    t.match_indices(name.as_str()).any(|(i, _)| {
                        let after = t[i + name.len()..].chars().next();
                        !after.is_some_and(|c| c.is_ascii_alphanumeric())
                    })
                })
                .cloned()
                .collect()
        };
        let mut found = names(text);
        loop {
            let more: BTreeSet<String> = self
                .adapters
                .iter()
                .filter(|a| found.contains(&a.0))
                .flat_map(|a| names(&a.4))
                .collect();
            if more.is_subset(&found) {
                return found;
            }
            found.extend(more);
        }
    }
}

/// The adapter types a function's main.rs reaches: those it names, the
/// Platform fields it uses (and chain_runtime's), the ops stores (`Ops`)
/// when it builds them, and what Platform::connect always calls (the
/// database secret).
pub fn reached_by(code: &Code, sources: &BTreeMap<String, String>, main: &str) -> BTreeSet<String> {
    let main_text = &sources[main];
    let bootstrap = &sources["shared/src/bootstrap.rs"];
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    let platform = bootstrap
        .split("pub struct Platform {")
        .nth(1)
        .and_then(|s| s.split('}').next())
        .unwrap_or_default();
    for line in platform.lines() {
        if let Some((name, ty)) = line
            .trim()
            .strip_prefix("pub ")
            .and_then(|l| l.split_once(':'))
        {
            fields.insert(
                name.trim().to_string(),
                ty.trim().trim_end_matches(',').to_string(),
            );
        }
    }
    let function_body = |name: &str| {
        bootstrap
            .split(&format!("fn {name}"))
            .nth(1)
            .map(|rest| {
                rest.split("\n    }\n")
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .unwrap_or_default()
    };
    let mut text = main_text.clone();
    for (field, ty) in &fields {
        if main_text.contains(&format!("platform.{field}")) {
            text.push_str(ty);
        }
    }
    if main_text.contains("platform.chain_runtime(") {
        let body = function_body("chain_runtime");
        for (field, ty) in &fields {
            if body.contains(&format!("self.{field}")) {
                text.push_str(ty);
                text.push('\n');
            }
        }
    }
    // The ops function's stores (bootstrap's `Ops`): every adapter they
    // hold, and the platform's that its console lends them.
    if main_text.contains("Ops::new(") {
        let ops = bootstrap
            .split("pub struct Ops {")
            .nth(1)
            .and_then(|s| s.split('}').next())
            .unwrap_or_default();
        for line in ops.lines() {
            if let Some((_, ty)) = line.trim().trim_start_matches("pub ").split_once(':') {
                text.push_str(ty.trim().trim_end_matches(','));
                text.push('\n');
            }
        }
        let console = function_body("console");
        for (field, ty) in &fields {
            if console.contains(&format!("platform.{field}")) {
                text.push_str(ty);
                text.push('\n');
            }
        }
    }
    // connect reads the database secret through the SecretsManager adapter
    // whose methods it calls.
    let connect = function_body("connect");
    for adapter in &code.adapters {
        for method in adapter.4.lines().filter_map(|l| {
            l.trim()
                .strip_prefix("async fn ")
                .or_else(|| l.trim().strip_prefix("pub async fn "))
        }) {
            let name: String = method
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if connect.contains(&format!(".{name}(")) {
                text.push_str(&adapter.0);
                text.push('\n');
            }
        }
    }
    code.reached(&text)
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Tagged(t) => match &t.value {
            Value::String(s) => s.clone(),
            // !Sub [string, vars]
            Value::Sequence(s) => scalar(&s[0]),
            other => serde_yaml::to_string(other).unwrap_or_default(),
        },
        Value::Mapping(m) => m.iter().next().map(|(_, v)| scalar(v)).unwrap_or_default(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

fn list(value: &Value) -> Vec<Value> {
    match value {
        Value::Sequence(s) => s.clone(),
        Value::Null => vec![],
        other => vec![other.clone()],
    }
}

/// (action, resource, condition) granted by a function's inline policies.
type Grant = (String, String, Option<String>);

fn granted(function: &Value) -> BTreeSet<Grant> {
    let mut found = BTreeSet::new();
    let mut add = |policy: &Value, when: Option<String>| {
        for statement in list(&policy["Statement"]) {
            if statement["Effect"].as_str() != Some("Allow") {
                continue;
            }
            for action in list(&statement["Action"]) {
                for resource in list(&statement["Resource"]) {
                    found.insert((scalar(&action), scalar(&resource), when.clone()));
                }
            }
        }
    };
    for policy in list(&function["Properties"]["Policies"]) {
        match &policy {
            Value::Tagged(t) if t.tag == "If" => {
                let parts = list(&t.value);
                let condition = scalar(&parts[0]);
                add(&parts[1], Some(condition.clone()));
                if parts.len() > 2 {
                    add(&parts[2], Some(format!("!{condition}")));
                }
            }
            other => add(other, None),
        }
    }
    found
}

fn expand(text: &str, name: &str, provider: &str) -> String {
    text.replace("{Name}", name).replace("{provider}", provider)
}

/// Every disagreement between infra/permissions.yaml, the template's
/// policies and the code, as a sentence.
pub fn permission_violations(
    template: &Value,
    permissions: &Value,
    sources: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut found = Vec::new();
    let code = Code::read(sources);
    let actions_of = |service: &str, op: &str| -> Option<Vec<String>> {
        permissions["operations"][service][op]
            .as_sequence()
            .map(|s| s.iter().map(scalar).collect())
    };
    for (owner, trait_name, service, ops, _) in &code.adapters {
        for op in ops {
            if actions_of(service, op).is_none() {
                found.push(format!(
                    "adapter {owner} calls {service} {op}, which infra/permissions.yaml does not map to IAM actions"
                ));
            }
        }
        let _ = trait_name;
    }

    // The list, with the provider entries expanded.
    let mut entries: BTreeMap<String, Value> = BTreeMap::new();
    for (key, entry) in permissions["functions"].as_mapping().into_iter().flatten() {
        let key = scalar(key);
        if key.contains("{Name}") {
            for (name, provider) in permissions["providers"].as_mapping().into_iter().flatten() {
                let text = serde_yaml::to_string(entry).unwrap();
                let text = expand(&text, &scalar(name), &scalar(provider));
                entries.insert(
                    expand(&key, &scalar(name), &scalar(provider)),
                    serde_yaml::from_str(&text).unwrap(),
                );
            }
        } else {
            entries.insert(key, entry.clone());
        }
    }

    let functions: Vec<(String, &Value)> = template["Resources"]
        .as_mapping()
        .into_iter()
        .flatten()
        .filter(|(_, r)| r["Type"].as_str() == Some("AWS::Serverless::Function"))
        .map(|(k, r)| (scalar(k), r))
        .collect();
    for (id, function) in &functions {
        let Some(entry) = entries.get(id) else {
            found.push(format!("function {id} is not in infra/permissions.yaml"));
            continue;
        };
        let main = scalar(&entry["code"]);
        if !sources.contains_key(&main) {
            found.push(format!("function {id}: code {main} does not exist"));
            continue;
        }
        // uses <-> the adapters the code reaches.
        let uses: Vec<String> = list(&entry["uses"]).iter().map(scalar).collect();
        let used_types: BTreeSet<String> = uses
            .iter()
            .map(|u| u.split(':').next().unwrap().trim().to_string())
            .collect();
        let reached = reached_by(&code, sources, &main);
        for t in reached.difference(&used_types) {
            found.push(format!(
                "function {id} reaches adapter {t} ({main}), which its uses list lacks"
            ));
        }
        for t in used_types.difference(&reached) {
            found.push(format!(
                "function {id} lists adapter {t}, which {main} never reaches"
            ));
        }
        // The actions the used adapters need <-> the listed calls.
        let mut needed: BTreeMap<String, String> = BTreeMap::new();
        for using in &uses {
            let (ty, only) = match using.split_once(':') {
                Some((t, tr)) => (t.trim(), Some(tr.trim())),
                None => (using.as_str(), None),
            };
            for (owner, trait_name, service, ops, _) in &code.adapters {
                let in_unit = owner == ty
                    && (only.is_none() || trait_name.is_none() || trait_name.as_deref() == only);
                if !in_unit {
                    continue;
                }
                for op in ops {
                    for action in actions_of(service, op).unwrap_or_default() {
                        needed.insert(action, format!("{owner} {op}"));
                    }
                }
            }
        }
        let calls: BTreeSet<Grant> = list(&entry["calls"])
            .iter()
            .map(|c| {
                (
                    scalar(&c["action"]),
                    scalar(&c["resource"]),
                    c.get("when").map(scalar),
                )
            })
            .collect();
        let listed_actions: BTreeSet<String> = calls.iter().map(|c| c.0.clone()).collect();
        for (action, via) in &needed {
            if !listed_actions.contains(action) {
                found.push(format!(
                    "function {id} calls {action} (adapter {via}), which infra/permissions.yaml does not list"
                ));
            }
        }
        for action in &listed_actions {
            if !needed.contains_key(action) {
                found.push(format!(
                    "function {id} lists {action}, which no adapter it uses calls"
                ));
            }
        }
        // The listed calls <-> the template's grants.
        let grants = granted(function);
        for call in calls.difference(&grants) {
            found.push(format!(
                "function {id} needs {} on {}{}, which its policies do not grant",
                call.0,
                call.1,
                call.2
                    .as_deref()
                    .map(|w| format!(" (when {w})"))
                    .unwrap_or_default()
            ));
        }
        for grant in grants.difference(&calls) {
            found.push(format!(
                "function {id} is granted {} on {}{}, which infra/permissions.yaml does not list as called",
                grant.0,
                grant.1,
                grant.2.as_deref().map(|w| format!(" (when {w})")).unwrap_or_default()
            ));
        }
    }
    for key in entries.keys() {
        if !functions.iter().any(|(id, _)| id == key) {
            found.push(format!(
                "infra/permissions.yaml lists {key}, which the template does not have"
            ));
        }
    }
    found
}
