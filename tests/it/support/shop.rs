//! The `testdata/shop` pipeline: its raw input files parsed and counted by hand (independently
//! of any engine), copies of it with extra models or checks, and its S3 variant.

use std::collections::BTreeMap;
use std::path::Path;

use super::{append_toml, edit_file, files_under, pipeline_copy, sluice, snapshot, testdata};

/// One row of the shop's raw `orders` CSVs, parsed by hand (independently of any engine).
#[derive(Debug, Clone)]
pub struct RawOrder {
    pub dt: String,
    pub customer_id: i64,
    pub product: String,
    pub quantity: i64,
    pub status: String,
}

/// Every raw order under `<pipeline>/data/orders/dt=*/orders.csv`.
pub fn raw_orders(pipeline: &Path) -> Vec<RawOrder> {
    let base = pipeline.join("data/orders");
    let mut out = Vec::new();
    for f in files_under(&base) {
        let dt = f
            .split('/')
            .next()
            .unwrap()
            .trim_start_matches("dt=")
            .to_string();
        let text = std::fs::read_to_string(base.join(&f)).unwrap();
        for line in text.lines().skip(1) {
            let c: Vec<&str> = line.split(',').collect();
            out.push(RawOrder {
                dt: dt.clone(),
                customer_id: c[1].parse().unwrap(),
                product: c[2].to_string(),
                quantity: c[3].parse().unwrap(),
                status: c[5].to_string(),
            });
        }
    }
    out
}

/// Raw orders per product and per day (`dt`) of `testdata/shop`, counted from the CSV text.
pub fn raw_counts() -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let (mut by_product, mut by_day) = (BTreeMap::new(), BTreeMap::new());
    for o in raw_orders(&testdata("shop")) {
        *by_product.entry(o.product).or_insert(0) += 1;
        *by_day.entry(o.dt).or_insert(0) += 1;
    }
    (by_product, by_day)
}

/// Raw customers of a shop pipeline: the non-blank lines of `<pipeline>/data/customers.jsonl`.
pub fn raw_customers(pipeline: &Path) -> u64 {
    std::fs::read_to_string(pipeline.join("data/customers.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count() as u64
}

/// `--table o=<testdata/shop/data/orders/>`'s value: the shop's raw orders as table `o`.
pub fn orders_arg() -> String {
    format!("o={}/", testdata("shop").join("data/orders").display())
}

/// A copy of the shop pipeline with extra models (`(name, sql)`, written to
/// `queries/<name>.sql`) and `extra_toml` appended to its `sluice.toml`.
pub fn shop_with(models: &[(&str, &str)], extra_toml: &str) -> tempfile::TempDir {
    let dir = pipeline_copy("shop");
    for (name, sql) in models {
        std::fs::write(dir.path().join(format!("queries/{name}.sql")), sql).unwrap();
    }
    append_toml(dir.path(), extra_toml);
    dir
}

/// A copy of the shop pipeline that has run once, and a snapshot of its `out/` folder.
pub fn ran_shop() -> (tempfile::TempDir, BTreeMap<String, Vec<u8>>) {
    let dir = pipeline_copy("shop");
    sluice(dir.path(), &["run", "."]).expect(0);
    let before = snapshot(&dir.path().join("out"));
    (dir, before)
}

/// The shop pipeline (a copy of `testdata/shop`) with its sources read from
/// `s3://lake/raw/` and its outputs written to `s3://lake/out/`. The data is not uploaded.
pub fn shop_pipeline_on_s3() -> tempfile::TempDir {
    let dir = pipeline_copy("shop");
    edit_file(&dir.path().join("sluice.toml"), |toml| {
        toml.replace(
            "location = \"data/orders/\"",
            "location = \"s3://lake/raw/orders/\"",
        )
        .replace(
            "location = \"data/customers.jsonl\"",
            "location = \"s3://lake/raw/customers.jsonl\"",
        )
        .replace("location = \"out/", "location = \"s3://lake/out/")
    });
    dir
}
