//! Cedar policies: global ones from the governance folder, domain ones from each domain's folder.
//!
//! A request is allowed when the global policies permit it (Cedar: some `permit` applies and no
//! `forbid` does) and no policy of the resource's domain forbids it. Domain files may only
//! narrow: a `permit` in a domain file is refused at load. Every file is validated against the
//! Cedar schema in `schema.cedarschema`; an invalid file keeps the last good set in force.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision, Effect, Entities, Entity, EntityId, EntityTypeName, EntityUid, Policy, PolicyId,
    PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};

use crate::auth::Principal;

/// Result with the policy [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why policies could not be loaded or evaluated.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// A policy file is invalid; the message names the file and Cedar's diagnostics.
    #[error("{file}: {message}")]
    Invalid {
        /// File relative to the mesh.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// Building the request or entities failed (a name Cedar cannot hold).
    #[error("policy evaluation failed: {0}")]
    Evaluation(String),
}

/// The schema, compiled in.
const SCHEMA: &str = include_str!("schema.cedarschema");

/// Actions of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// See that a product exists.
    Discover,
    /// Read a product.
    Read,
    /// Read a column without its mask.
    ReadUnmasked,
    /// Publish a new version of a product.
    Write,
    /// Operate the gateway (e.g. reload); asked about the product `_governance/gateway`.
    Admin,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Discover => "discover",
            Action::Read => "read",
            Action::ReadUnmasked => "read_unmasked",
            Action::Write => "write",
            Action::Admin => "admin",
        }
    }
}

/// A resource a decision is about.
#[derive(Debug, Clone)]
pub enum Resource<'a> {
    /// A product.
    Product(&'a ProductAttrs),
    /// A column of a product.
    Column(&'a ProductAttrs, &'a str, &'a str),
}

/// What policies know about a product.
#[derive(Debug, Clone, Default)]
pub struct ProductAttrs {
    /// Domain.
    pub domain: String,
    /// Product name.
    pub name: String,
    /// Owning team.
    pub owner: String,
    /// Sensitivity (`meshgate.sensitivity`, default `internal`).
    pub sensitivity: String,
    /// Status.
    pub status: String,
    /// Tags.
    pub tags: Vec<String>,
}

/// An allow or deny, with the policies that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the action is allowed.
    pub allowed: bool,
    /// Ids of the deciding policies (`file#n` or their `@id` annotation).
    pub policy_ids: Vec<String>,
}

/// The policies in force.
#[derive(Debug)]
pub struct Policies {
    global: PolicySet,
    domains: BTreeMap<String, PolicySet>,
    names: HashMap<PolicyId, String>,
    schema: Schema,
    /// Version (hash of every file), part of decision cache keys.
    pub version: String,
}

fn parse_file(
    path: &Path,
    rel: &str,
    schema: &Schema,
    domain_only_narrows: bool,
    names: &mut HashMap<PolicyId, String>,
) -> Result<Vec<Policy>> {
    let invalid = |message: String| Error::Invalid { file: rel.to_string(), message };
    let text = std::fs::read_to_string(path).map_err(|e| invalid(format!("cannot be read ({})", e.kind())))?;
    let set = PolicySet::from_str(&text).map_err(|e| invalid(format!("{e}")))?;
    let validation = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
    if !validation.validation_passed() {
        let errors: Vec<String> = validation.validation_errors().map(|e| e.to_string()).collect();
        return Err(invalid(format!("does not match the policy schema: {}", errors.join("; "))));
    }
    let mut out = Vec::new();
    for (i, p) in set.policies().enumerate() {
        if domain_only_narrows && p.effect() == Effect::Permit {
            return Err(invalid("domain policies may only narrow access: use `forbid`, not `permit`".into()));
        }
        let id = PolicyId::new(format!("{rel}#{i}"));
        let label = p.annotation("id").map_or_else(|| format!("{rel}#{i}"), str::to_string);
        names.insert(id.clone(), label);
        out.push(p.new_id(id));
    }
    Ok(out)
}

fn cedar_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cedar"))
        .collect();
    files.sort();
    files
}

impl Policies {
    /// Loads `<mesh>/_governance/policies/*.cedar` and `<mesh>/<domain>/_policies/*.cedar`.
    pub fn load(mesh: &Path) -> Result<Self> {
        let (schema, _) = Schema::from_cedarschema_str(SCHEMA)
            .map_err(|e| Error::Invalid { file: "schema".into(), message: e.to_string() })?;
        let mut names = HashMap::new();
        let mut digest = sha2::Sha256::default();
        let mut global = PolicySet::new();
        let add = |set: &mut PolicySet, p: Policy, rel: &str| {
            set.add(p).map_err(|e| Error::Invalid { file: rel.to_string(), message: e.to_string() })
        };
        for f in cedar_files(&mesh.join("_governance").join("policies")) {
            let rel = f.strip_prefix(mesh).unwrap_or(&f).to_string_lossy().into_owned();
            sha2::Digest::update(&mut digest, std::fs::read(&f).unwrap_or_default());
            for p in parse_file(&f, &rel, &schema, false, &mut names)? {
                add(&mut global, p, &rel)?;
            }
        }
        let mut domains = BTreeMap::new();
        for d in std::fs::read_dir(mesh).into_iter().flatten().flatten() {
            let name = d.file_name().to_string_lossy().into_owned();
            if name.starts_with(['_', '.']) {
                continue;
            }
            let mut set = PolicySet::new();
            for f in cedar_files(&d.path().join("_policies")) {
                let rel = f.strip_prefix(mesh).unwrap_or(&f).to_string_lossy().into_owned();
                sha2::Digest::update(&mut digest, std::fs::read(&f).unwrap_or_default());
                for p in parse_file(&f, &rel, &schema, true, &mut names)? {
                    add(&mut set, p, &rel)?;
                }
            }
            // Narrowing only: everything is permitted unless a domain `forbid` applies.
            let base = Policy::parse(Some(PolicyId::new("domain-default")), "permit(principal, action, resource);")
                .map_err(|e| Error::Evaluation(e.to_string()))?;
            add(&mut set, base, "domain-default")?;
            domains.insert(name, set);
        }
        let version = hex::encode(sha2::Digest::finalize(digest));
        Ok(Self { global, domains, names, schema, version })
    }

    fn uid(kind: &str, id: &str) -> Result<EntityUid> {
        let t = EntityTypeName::from_str(kind).map_err(|e| Error::Evaluation(e.to_string()))?;
        Ok(EntityUid::from_type_name_and_id(t, EntityId::new(id)))
    }

    fn entities(
        &self,
        p: &Principal,
        product: &ProductAttrs,
        column: Option<(&str, &str)>,
    ) -> Result<(EntityUid, EntityUid, Entities)> {
        let s = |v: &str| RestrictedExpression::new_string(v.to_string());
        let set = |v: &[String]| RestrictedExpression::new_set(v.iter().map(|x| s(x)));
        let user = Self::uid("User", &p.subject)?;
        let roles: HashSet<EntityUid> = p.roles.iter().map(|r| Self::uid("Role", r)).collect::<Result<_>>()?;
        let mut entities = vec![
            Entity::new(
                user.clone(),
                HashMap::from([
                    ("roles".to_string(), set(&p.roles)),
                    ("groups".to_string(), set(&p.groups)),
                    ("domain".to_string(), s(p.domain.as_deref().unwrap_or(""))),
                    ("purpose".to_string(), s(p.purpose.as_deref().unwrap_or(""))),
                    ("clearance".to_string(), s(p.clearance.as_deref().unwrap_or(""))),
                ]),
                roles.clone(),
            )
            .map_err(|e| Error::Evaluation(e.to_string()))?,
        ];
        entities.extend(roles.into_iter().map(|r| Entity::new_no_attrs(r, HashSet::new())));
        let domain = Self::uid("Domain", &product.domain)?;
        let product_uid = Self::uid("Product", &format!("{}/{}", product.domain, product.name))?;
        entities.push(Entity::new_no_attrs(domain.clone(), HashSet::new()));
        entities.push(
            Entity::new(
                product_uid.clone(),
                HashMap::from([
                    ("domain".to_string(), s(&product.domain)),
                    ("name".to_string(), s(&product.name)),
                    ("owner".to_string(), s(&product.owner)),
                    ("sensitivity".to_string(), s(&product.sensitivity)),
                    ("status".to_string(), s(&product.status)),
                    ("tags".to_string(), set(&product.tags)),
                ]),
                HashSet::from([domain]),
            )
            .map_err(|e| Error::Evaluation(e.to_string()))?,
        );
        let resource = match column {
            None => product_uid,
            Some((name, classification)) => {
                let c = Self::uid("Column", &format!("{}/{}/{name}", product.domain, product.name))?;
                entities.push(
                    Entity::new(
                        c.clone(),
                        HashMap::from([
                            ("name".to_string(), s(name)),
                            ("classification".to_string(), s(classification)),
                            ("domain".to_string(), s(&product.domain)),
                            ("product".to_string(), s(&product.name)),
                        ]),
                        HashSet::from([product_uid]),
                    )
                    .map_err(|e| Error::Evaluation(e.to_string()))?,
                );
                c
            }
        };
        let entities =
            Entities::from_entities(entities, Some(&self.schema)).map_err(|e| Error::Evaluation(e.to_string()))?;
        Ok((user, resource, entities))
    }

    /// Decides whether `principal` may do `action` on `resource`.
    pub fn decide(&self, principal: &Principal, action: Action, resource: &Resource<'_>) -> Result<Verdict> {
        let (product, column) = match resource {
            Resource::Product(p) => (*p, None),
            Resource::Column(p, name, classification) => (*p, Some((*name, *classification))),
        };
        let (user, res, entities) = self.entities(principal, product, column)?;
        let action_uid = Self::uid("Action", action.name())?;
        let request = Request::new(user, action_uid, res, Context::empty(), Some(&self.schema))
            .map_err(|e| Error::Evaluation(e.to_string()))?;
        let authorizer = Authorizer::new();
        let label = |id: &PolicyId| self.names.get(id).cloned().unwrap_or_else(|| id.to_string());
        let global = authorizer.is_authorized(&request, &self.global, &entities);
        let mut ids: Vec<String> = global.diagnostics().reason().map(label).collect();
        if global.decision() == Decision::Deny {
            return Ok(Verdict { allowed: false, policy_ids: ids });
        }
        if let Some(set) = self.domains.get(&product.domain) {
            let domain = authorizer.is_authorized(&request, set, &entities);
            if domain.decision() == Decision::Deny {
                let forbids: Vec<String> = domain.diagnostics().reason().map(label).collect();
                return Ok(Verdict { allowed: false, policy_ids: forbids });
            }
        }
        ids.sort();
        Ok(Verdict { allowed: true, policy_ids: ids })
    }
}
