//! Where the endpoints of a product read say their tickets are redeemed.
//!
//! `--advertise` names the gateway nodes behind the mesh's address; `--nodes FILE` names, per
//! product or per domain, the nodes that serve its reads (e.g. nodes next to a domain's
//! storage). An endpoint's location is one node of the most specific list, round-robin per
//! list, so the shards of one read spread over the nodes. Tickets are signed with the shared
//! key: any node redeems any ticket, the location only says where reading is best.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Deserialize;

use crate::catalog::is_valid_name;

/// The location meaning "the connection this `FlightInfo` came on" (Arrow Flight 16+).
pub const REUSE_CONNECTION: &str = "arrow-flight-reuse-connection://?";

/// The nodes named in endpoints: the mesh's, and those placed for products and domains.
#[derive(Debug, Default)]
pub struct Nodes {
    /// The gateway nodes behind this address (`--advertise`); none: this one only.
    mesh: NodeList,
    /// Nodes of one product (`domain/name`) or of a whole domain (`domain`), from `--nodes`.
    placed: HashMap<String, NodeList>,
}

/// One list of nodes and where its next endpoint goes, so single-endpoint reads spread too.
#[derive(Debug, Default)]
struct NodeList {
    urls: Vec<String>,
    next: AtomicUsize,
}

impl NodeList {
    fn take(&self, count: usize) -> Vec<Vec<String>> {
        let start = self.next.fetch_add(count.max(1), Ordering::Relaxed);
        (0..count).map(|i| vec![self.urls[(start + i) % self.urls.len()].clone()]).collect()
    }
}

/// The `--nodes` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodesFile {
    /// `domain/product` or `domain` → node URLs.
    #[serde(default)]
    products: BTreeMap<String, Vec<String>>,
}

/// Refuses a node URL whose scheme is not a Flight one, or plain gRPC behind a TLS gateway (a
/// plain-text gateway may sit behind a TLS-terminating proxy, so either is accepted there).
fn check_url(url: &str, tls: bool, source: &str) -> Result<(), String> {
    match url.split_once("://").map(|(s, _)| s).unwrap_or("") {
        "grpc+tls" => Ok(()),
        "grpc" | "grpc+tcp" if !tls => Ok(()),
        "grpc" | "grpc+tcp" => Err(format!(
            "{source} `{url}` is plain gRPC but this gateway serves TLS; name its nodes as grpc+tls://host:port"
        )),
        _ => Err(format!("{source} `{url}` is not a grpc://, grpc+tcp:// or grpc+tls:// URL")),
    }
}

impl Nodes {
    /// The mesh's nodes `urls` (`--advertise`), checked against the gateway's own scheme: a TLS
    /// gateway's nodes are `grpc+tls://`.
    pub fn new(urls: Vec<String>, tls: bool) -> Result<Self, String> {
        for u in &urls {
            check_url(u, tls, "--advertise")?;
        }
        Ok(Self { mesh: NodeList { urls, next: Default::default() }, placed: HashMap::new() })
    }

    /// Adds the per-product and per-domain lists of the YAML file at `path` (`--nodes`):
    ///
    /// ```yaml
    /// products:
    ///   sales/orders: [grpc+tls://sales-gw-1:8815, grpc+tls://sales-gw-2:8815]
    ///   logistics: [grpc+tls://eu-gw-1:8815]
    /// ```
    pub fn with_file(self, path: &Path, tls: bool) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read --nodes {}: {e}", path.display()))?;
        self.with_yaml(&text, tls).map_err(|e| format!("--nodes {}: {e}", path.display()))
    }

    fn with_yaml(mut self, text: &str, tls: bool) -> Result<Self, String> {
        let file: NodesFile = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        for (key, urls) in file.products {
            let names: Vec<&str> = key.split('/').collect();
            if names.len() > 2 || !names.iter().all(|n| is_valid_name(n)) {
                return Err(format!("`{key}` is not a `domain` or a `domain/product`"));
            }
            if urls.is_empty() {
                return Err(format!("`{key}` lists no node; name one or more, or remove the entry"));
            }
            for u in &urls {
                check_url(u, tls, &format!("node of `{key}`"))?;
            }
            self.placed.insert(key, NodeList { urls, next: Default::default() });
        }
        Ok(self)
    }

    /// The locations of `count` endpoints reading `product` (`(domain, name)`; `None`: a
    /// statement, redeemed where it was asked). The product's own list or else its domain's,
    /// round-robin, even with one node (a placed node may not be this one); otherwise the
    /// mesh's: round-robin over two nodes or more, the reuse-connection location for one, none
    /// without any configured.
    pub fn locations(&self, product: Option<(&str, &str)>, count: usize) -> Vec<Vec<String>> {
        let Some((domain, name)) = product else { return vec![Vec::new(); count] };
        if let Some(list) = self.placed.get(&format!("{domain}/{name}")).or_else(|| self.placed.get(domain)) {
            return list.take(count);
        }
        match self.mesh.urls.as_slice() {
            [] => vec![Vec::new(); count],
            [_] => vec![vec![REUSE_CONNECTION.to_string()]; count],
            _ => self.mesh.take(count),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDERS: Option<(&str, &str)> = Some(("sales", "orders"));

    #[test]
    fn endpoints_name_the_mesh_nodes_round_robin() {
        assert_eq!(Nodes::default().locations(ORDERS, 2), vec![Vec::<String>::new(); 2]);
        let one = Nodes::new(vec!["grpc+tls://a:1".into()], true).unwrap();
        assert_eq!(one.locations(ORDERS, 1), vec![vec![REUSE_CONNECTION.to_string()]]);
        let two = Nodes::new(vec!["grpc://a:1".into(), "grpc+tls://b:1".into()], false).unwrap();
        let first: Vec<String> = two.locations(ORDERS, 3).into_iter().flatten().collect();
        assert_eq!(first, ["grpc://a:1", "grpc+tls://b:1", "grpc://a:1"]);
        assert_eq!(
            two.locations(ORDERS, 1),
            vec![vec!["grpc+tls://b:1".to_string()]],
            "the next read starts further on"
        );
        assert_eq!(two.locations(None, 2), vec![Vec::<String>::new(); 2], "statements are redeemed where asked");
        assert!(Nodes::new(vec!["grpc://a:1".into()], true).unwrap_err().contains("serves TLS"));
        assert!(Nodes::new(vec!["http://a:1".into()], false).is_err());
    }

    #[test]
    fn a_product_is_read_at_its_own_nodes_else_at_its_domains_else_at_the_meshes() {
        let yaml = "products:\n  sales/orders: [grpc+tls://s1:1, grpc+tls://s2:1]\n  sales: [grpc+tls://d:1]\n  logistics/shipments: [grpc+tls://l:1]\n";
        let nodes = Nodes::new(vec!["grpc+tls://m1:1".into(), "grpc+tls://m2:1".into()], true)
            .unwrap()
            .with_yaml(yaml, true)
            .unwrap();
        let at = |p, n| nodes.locations(p, n).into_iter().flatten().collect::<Vec<_>>();
        assert_eq!(at(ORDERS, 3), ["grpc+tls://s1:1", "grpc+tls://s2:1", "grpc+tls://s1:1"]);
        assert_eq!(at(Some(("sales", "daily_revenue")), 2), ["grpc+tls://d:1", "grpc+tls://d:1"], "the domain's list");
        assert_eq!(at(Some(("logistics", "shipments")), 1), ["grpc+tls://l:1"], "one placed node is named, not reused");
        assert_eq!(at(Some(("customers", "profiles")), 2), ["grpc+tls://m1:1", "grpc+tls://m2:1"], "the mesh's list");
    }

    #[test]
    fn a_nodes_file_with_a_wrong_entry_is_refused_naming_it() {
        let refused = |yaml: &str, tls| Nodes::default().with_yaml(yaml, tls).unwrap_err();
        assert!(
            refused("products:\n  sales/orders: [grpc://a:1]\n", true)
                .contains("node of `sales/orders` `grpc://a:1` is plain gRPC")
        );
        assert!(
            refused("products:\n  ../etc: [grpc://a:1]\n", false)
                .contains("`../etc` is not a `domain` or a `domain/product`")
        );
        assert!(refused("products:\n  a/b/c: [grpc://a:1]\n", false).contains("not a `domain`"));
        assert!(refused("products:\n  sales: []\n", false).contains("lists no node"));
        assert!(refused("nodes:\n  sales: [grpc://a:1]\n", false).contains("unknown field `nodes`"));
        assert!(Nodes::default().with_yaml("products: {}\n", true).is_ok());
    }
}
