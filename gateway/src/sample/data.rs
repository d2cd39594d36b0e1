//! Deterministic sample data.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Date32Array, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Error, Result};

/// Products of the sample with generated data.
pub(crate) const PRODUCTS: &[&str] =
    &["sales/orders", "sales/daily_revenue", "customers/profiles", "logistics/shipments", "logistics/warehouses"];

const REGIONS: &[(&str, &str, &[&str])] = &[
    ("EMEA", "EUR", &["DE", "FR", "NL", "ES", "IT", "GB", "SE", "PL"]),
    ("AMER", "USD", &["US", "CA"]),
    ("APAC", "USD", &["JP", "AU", "SG", "IN", "KR"]),
    ("LATAM", "BRL", &["BR", "MX", "AR", "CL", "CO"]),
];
const FIRST: &[&str] = &[
    "Ana", "Ben", "Chloe", "Diego", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kofi", "Lena", "Mateo", "Nora",
    "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tara", "Umar", "Vera", "Wei", "Yara", "Zoe",
];
const LAST: &[&str] = &[
    "Almeida", "Becker", "Chen", "Dubois", "Evans", "Fischer", "Garcia", "Hansen", "Ito", "Jensen", "Kowalski",
    "Larsen", "Moreau", "Nakamura", "Okafor", "Patel", "Rossi", "Silva", "Tanaka", "Varga", "Weber", "Yilmaz",
];
const CITIES: &[(&str, &str, &str)] = &[
    ("Hamburg", "DE", "EMEA"),
    ("Lyon", "FR", "EMEA"),
    ("Rotterdam", "NL", "EMEA"),
    ("Madrid", "ES", "EMEA"),
    ("Milan", "IT", "EMEA"),
    ("Manchester", "GB", "EMEA"),
    ("Gothenburg", "SE", "EMEA"),
    ("Poznan", "PL", "EMEA"),
    ("Memphis", "US", "AMER"),
    ("Reno", "US", "AMER"),
    ("Columbus", "US", "AMER"),
    ("Toronto", "CA", "AMER"),
    ("Dallas", "US", "AMER"),
    ("Calgary", "CA", "AMER"),
    ("Osaka", "JP", "APAC"),
    ("Sydney", "AU", "APAC"),
    ("Singapore", "SG", "APAC"),
    ("Pune", "IN", "APAC"),
    ("Busan", "KR", "APAC"),
    ("Sao Paulo", "BR", "LATAM"),
    ("Monterrey", "MX", "LATAM"),
    ("Rosario", "AR", "LATAM"),
    ("Santiago", "CL", "LATAM"),
    ("Medellin", "CO", "LATAM"),
];
/// 2023-01-01 as days since the Unix epoch.
const DAY0: i32 = 19_358;

/// The whole generated sample, in memory.
#[derive(Debug)]
pub struct Sample {
    profiles: RecordBatch,
    orders: BTreeMap<&'static str, Vec<RecordBatch>>,
    daily_revenue: RecordBatch,
    shipments: Vec<RecordBatch>,
    warehouses: RecordBatch,
}

fn col<A: arrow::array::Array + 'static>(a: A) -> ArrayRef {
    Arc::new(a)
}

fn batch(cols: Vec<(&str, ArrayRef)>) -> RecordBatch {
    RecordBatch::try_from_iter(cols).expect("sample columns have equal lengths")
}

fn pick<'a, T>(rng: &mut ChaCha8Rng, xs: &'a [T]) -> &'a T {
    &xs[rng.random_range(0..xs.len())]
}

/// Generates the sample at `scale` (1.0 = 200,000 orders, 50,000 customers).
pub fn generate(scale: f64) -> Sample {
    let n = |base: f64| ((base * scale) as usize).max(1);
    let mut rng = ChaCha8Rng::seed_from_u64(0x6d65_7368);
    let customers = n(50_000.0);

    // customers/profiles
    let mut c_region = Vec::with_capacity(customers);
    let (mut ids, mut names, mut emails, mut births, mut countries, mut regions, mut segments, mut signups) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for id in 1..=customers as i64 {
        let r = rng.random_range(0..REGIONS.len());
        let (region, _, cs) = REGIONS[r];
        let (f, l) = (*pick(&mut rng, FIRST), *pick(&mut rng, LAST));
        ids.push(id);
        names.push(format!("{f} {l}"));
        emails.push(format!("{}.{}{}@example.com", f.to_lowercase(), l.to_lowercase(), id));
        births.push(-7300 + rng.random_range(0..20_000));
        countries.push(*pick(&mut rng, cs));
        regions.push(region);
        segments.push(*pick(&mut rng, &["consumer", "consumer", "consumer", "smb", "enterprise"]));
        signups.push(DAY0 - 1460 + rng.random_range(0..1460));
        c_region.push(r);
    }
    let profiles = batch(vec![
        ("customer_id", col(Int64Array::from(ids))),
        ("full_name", col(StringArray::from(names))),
        ("email", col(StringArray::from(emails))),
        ("birth_date", col(Date32Array::from(births))),
        ("country", col(StringArray::from(countries))),
        ("region", col(StringArray::from(regions))),
        ("segment", col(StringArray::from(segments))),
        ("signup_date", col(Date32Array::from(signups))),
    ]);

    // logistics/warehouses
    let warehouses = batch(vec![
        ("warehouse_id", col(StringArray::from((1..=CITIES.len()).map(|i| format!("WH{i:02}")).collect::<Vec<_>>()))),
        ("city", col(StringArray::from(CITIES.iter().map(|c| c.0).collect::<Vec<_>>()))),
        ("country", col(StringArray::from(CITIES.iter().map(|c| c.1).collect::<Vec<_>>()))),
        ("region", col(StringArray::from(CITIES.iter().map(|c| c.2).collect::<Vec<_>>()))),
        (
            "capacity_pallets",
            col(Int64Array::from((0..CITIES.len()).map(|i| 2_000 + (i as i64 * 7_919) % 18_000).collect::<Vec<_>>())),
        ),
        (
            "opened_on",
            col(Date32Array::from((0..CITIES.len()).map(|i| 10_957 + (i as i32 * 211) % 4_000).collect::<Vec<_>>())),
        ),
    ]);

    // sales/orders, then what derives from them.
    // (order_id, customer_id, day, status, channel, amount) per region.
    type Order<'a> = (i64, i64, i32, &'a str, &'a str, f64);
    let mut per_region: Vec<Vec<Order>> = vec![vec![]; REGIONS.len()];
    let mut revenue: BTreeMap<(i32, &str), (i64, f64)> = BTreeMap::new();
    let mut ship: Vec<(i64, String, &str, i32, i64, f64, &str)> = vec![];
    for order_id in 1..=n(200_000.0) as i64 {
        let customer = rng.random_range(0..customers);
        let r = c_region[customer];
        let day = DAY0 + rng.random_range(0..730);
        let status = *pick(
            &mut rng,
            &["placed", "shipped", "delivered", "delivered", "delivered", "delivered", "returned", "cancelled"],
        );
        let channel = *pick(&mut rng, &["web", "web", "store", "partner"]);
        let amount = ((5.0 + rng.random::<f64>().powi(3) * 2_000.0) * 100.0).round() / 100.0;
        per_region[r].push((order_id, customer as i64 + 1, day, status, channel, amount));
        if status != "cancelled" {
            let e = revenue.entry((day, REGIONS[r].0)).or_default();
            e.0 += 1;
            e.1 += amount;
        }
        if matches!(status, "shipped" | "delivered" | "returned") {
            let wh = loop {
                let i = rng.random_range(0..CITIES.len());
                if CITIES[i].2 == REGIONS[r].0 {
                    break i;
                }
            };
            let ship_status = match status {
                "shipped" => "in_transit",
                other => other,
            };
            let weight = (rng.random_range(5..40_000) as f64) / 100.0 + 0.01;
            ship.push((
                order_id,
                format!("WH{:02}", wh + 1),
                *pick(&mut rng, &["DHL", "UPS", "FedEx", "PostNL", "Correios", "Yamato"]),
                day + rng.random_range(0..3),
                rng.random_range(1..10),
                weight,
                ship_status,
            ));
        }
    }
    let mut orders = BTreeMap::new();
    for (r, rows) in per_region.into_iter().enumerate() {
        let currency = REGIONS[r].1;
        let half = rows.len().div_ceil(2);
        let parts = rows
            .chunks(half.max(1))
            .map(|c| {
                batch(vec![
                    ("order_id", col(Int64Array::from(c.iter().map(|o| o.0).collect::<Vec<_>>()))),
                    ("customer_id", col(Int64Array::from(c.iter().map(|o| o.1).collect::<Vec<_>>()))),
                    ("order_date", col(Date32Array::from(c.iter().map(|o| o.2).collect::<Vec<_>>()))),
                    ("status", col(StringArray::from(c.iter().map(|o| o.3).collect::<Vec<_>>()))),
                    ("channel", col(StringArray::from(c.iter().map(|o| o.4).collect::<Vec<_>>()))),
                    ("amount", col(Float64Array::from(c.iter().map(|o| o.5).collect::<Vec<_>>()))),
                    ("currency", col(StringArray::from(vec![currency; c.len()]))),
                ])
            })
            .collect();
        orders.insert(REGIONS[r].0, parts);
    }
    let daily_revenue = batch(vec![
        ("day", col(Date32Array::from(revenue.keys().map(|k| k.0).collect::<Vec<_>>()))),
        ("region", col(StringArray::from(revenue.keys().map(|k| k.1).collect::<Vec<_>>()))),
        ("orders", col(Int64Array::from(revenue.values().map(|v| v.0).collect::<Vec<_>>()))),
        (
            "revenue",
            col(Float64Array::from(revenue.values().map(|v| (v.1 * 100.0).round() / 100.0).collect::<Vec<_>>())),
        ),
    ]);
    let third = ship.len().div_ceil(3).max(1);
    let shipments = ship
        .chunks(third)
        .enumerate()
        .map(|(k, c)| {
            let days = Date32Array::from(c.iter().map(|s| s.3).collect::<Vec<_>>());
            let ship_date = cast(&days, &DataType::Utf8).expect("dates format as text");
            batch(vec![
                (
                    "shipment_id",
                    col(Int64Array::from((0..c.len()).map(|i| (k * third + i + 1) as i64).collect::<Vec<_>>())),
                ),
                ("order_id", col(Int64Array::from(c.iter().map(|s| s.0).collect::<Vec<_>>()))),
                ("warehouse_id", col(StringArray::from(c.iter().map(|s| s.1.as_str()).collect::<Vec<_>>()))),
                ("carrier", col(StringArray::from(c.iter().map(|s| s.2).collect::<Vec<_>>()))),
                ("ship_date", ship_date),
                ("transit_days", col(Int64Array::from(c.iter().map(|s| s.4).collect::<Vec<_>>()))),
                ("weight_kg", col(Float64Array::from(c.iter().map(|s| s.5).collect::<Vec<_>>()))),
                ("status", col(StringArray::from(c.iter().map(|s| s.6).collect::<Vec<_>>()))),
            ])
        })
        .collect();
    Sample { profiles, orders, daily_revenue, shipments, warehouses }
}

fn create(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.display().to_string(), source })?;
    }
    File::create(path).map_err(|source| Error::Io { path: path.display().to_string(), source })
}

fn encode<E: std::fmt::Display>(e: E) -> Error {
    Error::Encode(e.to_string())
}

impl Sample {
    /// Writes one product's data files into `dir`.
    pub fn write_product(&self, product: &str, dir: &Path) -> Result<()> {
        match product {
            "sales/orders" => {
                let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
                for (region, parts) in &self.orders {
                    for (k, b) in parts.iter().enumerate() {
                        let f = create(&dir.join(format!("region={region}")).join(format!("part-{k}.parquet")))?;
                        let mut w = ArrowWriter::try_new(f, b.schema(), Some(props.clone())).map_err(encode)?;
                        w.write(b).map_err(encode)?;
                        w.close().map_err(encode)?;
                    }
                }
            }
            "sales/daily_revenue" => {
                let f = create(&dir.join("daily_revenue.arrow"))?;
                let mut w = arrow::ipc::writer::FileWriter::try_new(f, &self.daily_revenue.schema()).map_err(encode)?;
                w.write(&self.daily_revenue).map_err(encode)?;
                w.finish().map_err(encode)?;
            }
            "customers/profiles" => write_csv(&dir.join("profiles.csv"), &self.profiles)?,
            "logistics/warehouses" => write_csv(&dir.join("warehouses.csv"), &self.warehouses)?,
            "logistics/shipments" => {
                for (k, b) in self.shipments.iter().enumerate() {
                    let f = create(&dir.join(format!("shipments-{k:03}.json")))?;
                    let mut w = arrow::json::LineDelimitedWriter::new(f);
                    w.write(b).map_err(encode)?;
                    w.finish().map_err(encode)?;
                }
            }
            other => return Err(Error::Encode(format!("no sample product `{other}`"))),
        }
        Ok(())
    }
}

fn write_csv(path: &Path, b: &RecordBatch) -> Result<()> {
    let f = create(path)?;
    let mut w = arrow::csv::WriterBuilder::new().with_header(true).build(f);
    w.write(b).map_err(encode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_consistent() {
        let a = generate(0.01);
        let b = generate(0.01);
        assert_eq!(a.profiles, b.profiles);
        assert_eq!(a.shipments, b.shipments);
        let orders: usize = a.orders.values().flatten().map(RecordBatch::num_rows).sum();
        assert_eq!(orders, 2_000);
        assert_eq!(a.profiles.num_rows(), 500);
    }
}
