//! Test fixture: a gateway on 127.0.0.1:0 over a temporary mesh, and a real `FlightClient`.
#![allow(dead_code, unreachable_pub)]

pub mod secure;

use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow_flight::{FlightClient, FlightDescriptor, FlightInfo, Ticket};
use futures::TryStreamExt;
use meshgate::{Gateway, GatewayConfig};
use meshgate_adapters::memory::MemoryAdapter;
use tonic::transport::Channel;

pub struct Fixture {
    pub gateway: Option<Gateway>,
    pub client: FlightClient,
    pub mesh: tempfile::TempDir,
}

impl Fixture {
    /// The sample mesh at a small scale.
    pub async fn sample() -> Self {
        Self::sample_with(|_| {}).await
    }

    /// The sample mesh, with `tweak` applied to the configuration.
    pub async fn sample_with(tweak: impl FnOnce(&mut GatewayConfig)) -> Self {
        let mesh = tempfile::tempdir().unwrap();
        meshgate::sample::write(mesh.path(), 0.02).unwrap();
        let mut config = GatewayConfig::for_mesh(mesh.path());
        tweak(&mut config);
        Self::start(mesh, config, MemoryAdapter::default()).await
    }

    pub async fn start(mesh: tempfile::TempDir, config: GatewayConfig, memory: MemoryAdapter) -> Self {
        let gateway = Gateway::bind(config, memory).await.expect("gateway starts");
        let client = connect(&gateway).await;
        Self { gateway: Some(gateway), client, mesh }
    }

    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().unwrap()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mesh.path().join(rel)
    }

    pub async fn info(&mut self, path: &[&str]) -> Result<FlightInfo, tonic::Status> {
        let d = FlightDescriptor::new_path(path.iter().map(|s| s.to_string()).collect());
        self.client.get_flight_info(d).await.map_err(status)
    }

    pub async fn query(&mut self, json: &str) -> Result<FlightInfo, tonic::Status> {
        self.client.get_flight_info(FlightDescriptor::new_cmd(json.to_string())).await.map_err(status)
    }

    pub async fn read(&mut self, info: &FlightInfo) -> Result<Vec<RecordBatch>, tonic::Status> {
        let mut out = vec![];
        for e in &info.endpoint {
            out.extend(self.get(e.ticket.clone().unwrap()).await?);
        }
        Ok(out)
    }

    pub async fn get(&mut self, t: Ticket) -> Result<Vec<RecordBatch>, tonic::Status> {
        let stream = self.client.do_get(t).await.map_err(status)?;
        stream.try_collect().await.map_err(status)
    }

    pub async fn action(&mut self, name: &str, body: &str) -> Result<serde_json::Value, tonic::Status> {
        let mut results: Vec<bytes::Bytes> = self
            .client
            .do_action(arrow_flight::Action::new(name, body.to_string()))
            .await
            .map_err(status)?
            .try_collect()
            .await
            .map_err(status)?;
        assert_eq!(results.len(), 1);
        Ok(serde_json::from_slice(&results.remove(0)).unwrap())
    }

    pub async fn stop(mut self) {
        self.gateway.take().unwrap().shutdown().await.unwrap();
    }
}

pub async fn connect(gateway: &Gateway) -> FlightClient {
    let channel = Channel::from_shared(format!("http://{}", gateway.local_addr())).unwrap().connect().await.unwrap();
    FlightClient::new(channel)
}

pub fn status(e: arrow_flight::error::FlightError) -> tonic::Status {
    match e {
        arrow_flight::error::FlightError::Tonic(s) => *s,
        other => panic!("expected a gRPC status, got {other}"),
    }
}

pub fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

pub fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}
