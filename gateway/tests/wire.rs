//! What goes on the wire: message sizes and column types for files written by Arrow-native tools.

mod common;

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryViewArray, Int64Array, RecordBatch, StringViewArray};
use arrow::datatypes::{DataType, Field, Schema};
use common::{Fixture, rows};
use datafusion::parquet::arrow::ArrowWriter;

/// A product `lab/<name>` over `file` with the given format and contract columns.
fn product(mesh: &Path, name: &str, file: &str, format: &str, columns: &[(&str, &str)]) {
    common::write(
        &mesh.join(format!("lab/{name}/product.odps.yaml")),
        &format!(
            "apiVersion: v1.0.0\nkind: DataProduct\nid: {name}\nstatus: active\noutputPorts:\n  - name: v1\n    version: 1.0.0\n    contractId: {name}-v1\n"
        ),
    );
    let props: String = columns.iter().map(|(c, t)| format!("      - name: {c}\n        logicalType: {t}\n")).collect();
    common::write(
        &mesh.join(format!("lab/{name}/v1.odcs.yaml")),
        &format!(
            "apiVersion: v3.1.0\nkind: DataContract\nid: {name}-v1\nversion: 1.0.0\nstatus: active\nschema:\n  - name: t\n    properties:\n{props}customProperties:\n  - property: meshgate.binding\n    value: {{adapter: files, location: {file}, format: {format}}}\n"
        ),
    );
}

/// Batches of `rows` rows with an integer, a view-typed string and a view-typed binary column,
/// as Arrow-native writers (e.g. `tpchgen-cli`) produce them.
fn view_batches(batches: usize, rows: usize) -> Vec<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("comment", DataType::Utf8View, false),
        Field::new("blob", DataType::BinaryView, true),
    ]));
    (0..batches)
        .map(|b| {
            let base = (b * rows) as i64;
            let ids = Int64Array::from_iter_values(base..base + rows as i64);
            let text: Vec<String> = (0..rows).map(|i| format!("comment text for row {:08}", base + i as i64)).collect();
            let comments = StringViewArray::from_iter_values(text.iter());
            let blobs = BinaryViewArray::from_iter_values(text.iter().map(|t| t.as_bytes()));
            let cols: Vec<ArrayRef> = vec![Arc::new(ids), Arc::new(comments), Arc::new(blobs)];
            RecordBatch::try_new(Arc::clone(&schema), cols).unwrap()
        })
        .collect()
}

fn write_ipc(path: &Path, batches: &[RecordBatch]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = arrow::ipc::writer::FileWriter::try_new(file, &batches[0].schema()).unwrap();
    for b in batches {
        w.write(b).unwrap();
    }
    w.finish().unwrap();
}

fn write_parquet(path: &Path, batches: &[RecordBatch]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    // ArrowWriter embeds the Arrow schema (view types included) in the file's metadata.
    let mut w = ArrowWriter::try_new(file, batches[0].schema(), None).unwrap();
    for b in batches {
        w.write(b).unwrap();
    }
    w.close().unwrap();
}

const COLUMNS: &[(&str, &str)] = &[("id", "integer"), ("comment", "string")];

#[tokio::test]
async fn files_with_view_types_are_served_with_classic_types() {
    let mesh = tempfile::tempdir().unwrap();
    let batches = view_batches(3, 1000);
    write_ipc(&mesh.path().join("lab/ipc/data.arrow"), &batches);
    write_parquet(&mesh.path().join("lab/pq/data.parquet"), &batches);
    product(mesh.path(), "ipc", "data.arrow", "arrow", COLUMNS);
    product(mesh.path(), "pq", "data.parquet", "parquet", COLUMNS);
    let config = meshgate::GatewayConfig::for_mesh(mesh.path());
    let mut f = Fixture::start(mesh, config, Default::default()).await;
    for name in ["ipc", "pq"] {
        let info = f.info(&["lab", name]).await.unwrap();
        let announced = Schema::try_from(info.clone()).unwrap();
        assert_eq!(announced.field_with_name("comment").unwrap().data_type(), &DataType::Utf8, "{name}");
        let got = f.read(&info).await.unwrap();
        assert_eq!(rows(&got), 3000, "{name}");
        for b in &got {
            assert_eq!(b.schema().field_with_name("comment").unwrap().data_type(), &DataType::Utf8, "{name} streamed");
        }
        let filtered = f
            .query(&format!(r#"{{"product": "lab/{name}", "filter": "comment = 'comment text for row 00002500'"}}"#))
            .await
            .unwrap();
        assert_eq!(rows(&f.read(&filtered).await.unwrap()), 1, "{name}: filters compare classic strings");
    }
    f.stop().await;
}

#[tokio::test]
async fn view_types_are_served_as_stored_when_configured() {
    let mesh = tempfile::tempdir().unwrap();
    write_ipc(&mesh.path().join("lab/ipc/data.arrow"), &view_batches(1, 100));
    product(mesh.path(), "ipc", "data.arrow", "arrow", COLUMNS);
    let mut config = meshgate::GatewayConfig::for_mesh(mesh.path());
    config.view_types = true;
    let mut f = Fixture::start(mesh, config, Default::default()).await;
    let info = f.info(&["lab", "ipc"]).await.unwrap();
    let announced = Schema::try_from(info.clone()).unwrap();
    assert_eq!(announced.field_with_name("comment").unwrap().data_type(), &DataType::Utf8View);
    let got = f.read(&info).await.unwrap();
    assert_eq!(got[0].schema().field_with_name("comment").unwrap().data_type(), &DataType::Utf8View);
    f.stop().await;
}

/// The defect this pins: batches of an IPC file share one read buffer, and counting that
/// buffer once per column cut each 65,536-row batch into hundreds of tiny messages.
#[tokio::test]
async fn an_ipc_product_streams_one_message_per_batch() {
    let mesh = tempfile::tempdir().unwrap();
    // Four batches of 65,536 rows, each 1.5 MiB of row data: under the 2 MiB message limit.
    let batches: Vec<RecordBatch> = view_batches(4, 65_536)
        .into_iter()
        .map(|b| b.project(&[0]).unwrap())
        .map(|b| {
            let cols: Vec<ArrayRef> = (0..3).map(|_| Arc::clone(b.column(0))).collect();
            let schema =
                Schema::new(["a", "b", "c"].iter().map(|n| Field::new(*n, DataType::Int64, false)).collect::<Vec<_>>());
            RecordBatch::try_new(Arc::new(schema), cols).unwrap()
        })
        .collect();
    write_ipc(&mesh.path().join("lab/wide/data.arrow"), &batches);
    product(mesh.path(), "wide", "data.arrow", "arrow", &[("a", "integer"), ("b", "integer"), ("c", "integer")]);
    let config = meshgate::GatewayConfig::for_mesh(mesh.path());
    let mut f = Fixture::start(mesh, config, Default::default()).await;
    let info = f.info(&["lab", "wide"]).await.unwrap();
    let got = f.read(&info).await.unwrap();
    assert_eq!(rows(&got), 4 * 65_536);
    let batch_size = meshgate::config::DEFAULT_BATCH_SIZE;
    assert_eq!(
        got.len(),
        (4 * 65_536usize).div_ceil(batch_size),
        "one message per batch of the configured size: {:?}",
        got.iter().map(|b| b.num_rows()).collect::<Vec<_>>()
    );

    // A batch larger than the message limit is cut by its bytes, not by shared buffers.
    f.stop().await;
    let mesh = tempfile::tempdir().unwrap();
    write_ipc(&mesh.path().join("lab/wide/data.arrow"), &batches);
    product(mesh.path(), "wide", "data.arrow", "arrow", &[("a", "integer"), ("b", "integer"), ("c", "integer")]);
    let mut config = meshgate::GatewayConfig::for_mesh(mesh.path());
    config.batch_size = 65_536;
    config.max_message_size = 512 << 10;
    let mut f = Fixture::start(mesh, config, Default::default()).await;
    let info = f.info(&["lab", "wide"]).await.unwrap();
    let got = f.read(&info).await.unwrap();
    assert_eq!(rows(&got), 4 * 65_536);
    // 1.5 MiB per batch over 512 KiB: three (or, counting validity bitmaps, four) messages each.
    let sizes: Vec<usize> = got.iter().map(|b| b.num_rows()).collect();
    assert!((12..=16).contains(&got.len()), "{sizes:?}");
    f.stop().await;
}
