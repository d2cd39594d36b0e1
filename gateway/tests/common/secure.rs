//! A gateway with authentication, governance and audit on, over the sample mesh, and clients
//! for its sample users.

use std::time::{SystemTime, UNIX_EPOCH};

use arrow::array::RecordBatch;
use arrow_flight::{FlightClient, FlightDescriptor};
use base64::Engine;
use futures::TryStreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use meshgate::{Gateway, GatewayConfig};
use serde_json::{Value, json};
use tonic::transport::Channel;

use super::status;

pub const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");

pub struct Secure {
    pub gateway: Option<Gateway>,
    pub dir: tempfile::TempDir,
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

impl Secure {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Like [`Secure::start`], with `tweak` applied to the mesh folder before the gateway starts.
    pub async fn start_with(tweak: impl FnOnce(&std::path::Path)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mesh = dir.path().join("mesh");
        meshgate::sample::write(&mesh, 0.02).unwrap();
        tweak(&mesh);
        let auth = meshgate::sample::write_dev_auth(&dir.path().join("auth")).unwrap();
        let jwks = jsonwebtoken::jwk::JwkSet {
            keys: vec![{
                let key = EncodingKey::from_ec_pem(&std::fs::read(format!("{KEYS}/ec.pk8.key")).unwrap()).unwrap();
                let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
                jwk.common.key_id = Some("k1".into());
                jwk
            }],
        };
        std::fs::write(dir.path().join("auth/idp-jwks.json"), serde_json::to_string(&jwks).unwrap()).unwrap();
        let extra = format!(
            "issuers:\n\
             - issuer: https://rsa.idp.test\n  audiences: [meshgate]\n  algorithms: [RS256]\n  pem_file: {KEYS}/rsa.pub.pem\n\
             - issuer: https://ed.idp.test\n  audiences: [meshgate]\n  algorithms: [EdDSA]\n  pem_file: {KEYS}/ed.pub.pem\n\
             - issuer: https://jwks.idp.test\n  audiences: [meshgate, other]\n  algorithms: [ES256]\n  jwks_file: idp-jwks.json\n  claims: {{roles: groups_of_user}}\n"
        );
        let mut text = std::fs::read_to_string(&auth).unwrap();
        text.push_str(&extra);
        std::fs::write(&auth, text).unwrap();
        let mut config = GatewayConfig::for_mesh(&mesh);
        config.insecure_no_auth = false;
        config.auth = Some(auth);
        config.audit_log = Some(dir.path().join("audit"));
        config.no_watch = true;
        let gateway = Gateway::bind(config, Default::default()).await.unwrap();
        Self { gateway: Some(gateway), dir }
    }

    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().unwrap()
    }

    pub async fn client(&self, token: Option<&str>) -> FlightClient {
        let channel =
            Channel::from_shared(format!("http://{}", self.gateway().local_addr())).unwrap().connect().await.unwrap();
        let mut c = FlightClient::new(channel);
        if let Some(t) = token {
            c.add_header("authorization", &format!("Bearer {t}")).unwrap();
        }
        c
    }

    /// A gateway token for a sample user, through Handshake with Basic credentials.
    pub async fn login(&self, user: &str) -> String {
        let mut c = self.client(None).await;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{user}-dev-password"));
        c.add_header("authorization", &format!("Basic {basic}")).unwrap();
        let payload = c.handshake(bytes::Bytes::new()).await.unwrap();
        String::from_utf8(payload.to_vec()).unwrap()
    }

    pub async fn audit_log(&self) -> String {
        self.gateway().audit().unwrap().flush().await;
        meshgate::audit::segments::read_all(&self.dir.path().join("audit")).unwrap()
    }

    /// Stops the gateway (flushing the audit log); returns the folder it used.
    pub async fn stop(mut self) -> tempfile::TempDir {
        self.gateway.take().unwrap().shutdown().await.unwrap();
        self.dir
    }
}

pub async fn read_all(c: &mut FlightClient, d: FlightDescriptor) -> Result<Vec<RecordBatch>, tonic::Status> {
    let info = c.get_flight_info(d).await.map_err(status)?;
    let mut out = vec![];
    for e in info.endpoint {
        let s = c.do_get(e.ticket.unwrap()).await.map_err(status)?;
        out.extend(s.try_collect::<Vec<_>>().await.map_err(status)?);
    }
    Ok(out)
}

pub fn path(d: &str, p: &str) -> FlightDescriptor {
    FlightDescriptor::new_path(vec![d.into(), p.into()])
}

pub fn query(q: Value) -> FlightDescriptor {
    FlightDescriptor::new_cmd(q.to_string())
}

pub fn sign(alg: Algorithm, key_file: &str, claims: Value, kid: Option<&str>) -> String {
    let bytes = std::fs::read(format!("{KEYS}/{key_file}")).unwrap();
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&bytes).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&bytes).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&bytes).unwrap(),
        _ => EncodingKey::from_secret(&bytes),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    encode(&header, &claims, &key).unwrap()
}

pub fn claims(iss: &str) -> Value {
    json!({"iss": iss, "aud": "meshgate", "sub": "mallory", "exp": now() + 600, "nbf": now() - 5, "roles": ["analyst"]})
}

pub fn with(mut c: Value, key: &str, v: Value) -> Value {
    if v.is_null() {
        c.as_object_mut().unwrap().remove(key);
    } else {
        c[key] = v;
    }
    c
}
