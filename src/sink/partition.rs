//! Hive-style partitioning of output rows: which `key=value/` folder each row belongs to.

use std::collections::HashMap;

use datafusion::arrow::array::{Array, ArrayRef, StringArray, UInt32Array};
use datafusion::arrow::compute::{cast, take_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};

use crate::table::hive::partition_path;

/// One partition's share of a batch: its folder, and its rows without the
/// partition columns (Hive partition columns live in the path, not in the files).
pub(crate) struct PartitionSlice {
    /// The relative folder (`""` for an unpartitioned output).
    pub path: String,
    /// The rows.
    pub batch: RecordBatch,
}

/// Splits batches by the values of the partition columns.
pub(crate) struct Partitioner {
    cols: Vec<String>,
    col_idx: Vec<usize>,
    data_idx: Vec<usize>,
    converter: Option<RowConverter>,
}

impl Partitioner {
    /// A partitioner for `schema` by `cols`; `Err(name)` names a column the schema lacks.
    pub(crate) fn new(schema: &SchemaRef, cols: &[String]) -> Result<Partitioner, String> {
        let mut col_idx = Vec::with_capacity(cols.len());
        for c in cols {
            col_idx.push(schema.index_of(c).map_err(|_| c.clone())?);
        }
        let data_idx = (0..schema.fields().len())
            .filter(|i| !col_idx.contains(i))
            .collect();
        let converter = if cols.is_empty() {
            None
        } else {
            let fields = col_idx
                .iter()
                .map(|&i| SortField::new(schema.field(i).data_type().clone()))
                .collect();
            Some(RowConverter::new(fields).map_err(|e| e.to_string())?)
        };
        Ok(Partitioner {
            cols: cols.to_vec(),
            col_idx,
            data_idx,
            converter,
        })
    }

    /// The schema of the files: the input schema without the partition columns.
    pub(crate) fn file_schema(&self, schema: &SchemaRef) -> SchemaRef {
        std::sync::Arc::new(
            schema
                .project(&self.data_idx)
                .unwrap_or_else(|_| schema.as_ref().clone()),
        )
    }

    /// Splits one batch into per-partition slices, in order of first appearance. Rows are
    /// grouped by their encoded key (arrow's row format), with no allocation per row.
    pub(crate) fn split(&self, batch: &RecordBatch) -> Result<Vec<PartitionSlice>, ArrowError> {
        let data = batch.project(&self.data_idx)?;
        let Some(converter) = &self.converter else {
            return Ok(vec![PartitionSlice {
                path: String::new(),
                batch: data,
            }]);
        };
        let key_cols: Vec<ArrayRef> = self
            .col_idx
            .iter()
            .map(|&i| std::sync::Arc::clone(batch.column(i)))
            .collect();
        let rows = converter.convert_columns(&key_cols)?;
        // Each row's group: a batch of a partitioned output usually spans a handful of
        // partitions, so the previous row's group is tried first, then the few groups seen
        // by comparing bytes; a hash map only past `FEW` groups.
        const FEW: usize = 16;
        let mut order: Vec<&[u8]> = Vec::new();
        let mut members: Vec<Vec<u32>> = Vec::new();
        let mut index: HashMap<&[u8], usize> = HashMap::new();
        let mut last = 0;
        for i in 0..batch.num_rows() {
            let key = rows.row(i).data();
            let found = if order.get(last).is_some_and(|k| *k == key) {
                Some(last)
            } else if order.len() <= FEW {
                order.iter().position(|k| *k == key)
            } else {
                index.get(key).copied()
            };
            let group = found.unwrap_or_else(|| {
                order.push(key);
                members.push(Vec::new());
                if order.len() == FEW + 1 {
                    index.extend(order.iter().enumerate().map(|(g, k)| (*k, g)));
                } else if order.len() > FEW {
                    index.insert(key, order.len() - 1);
                }
                order.len() - 1
            });
            members[group].push(i as u32);
            last = group;
        }
        // Only the first row of each group is formatted: one small cast per partition, not
        // a cast of whole columns per batch.
        let mut out = Vec::with_capacity(order.len());
        for idx in members {
            let first = idx[0] as usize;
            let values = key_cols
                .iter()
                .map(|c| {
                    if c.is_null(first) {
                        return Ok(None);
                    }
                    let one = cast(&c.slice(first, 1), &DataType::Utf8)?;
                    Ok(one
                        .as_any()
                        .downcast_ref::<StringArray>()
                        .map(|s| s.value(0).to_string()))
                })
                .collect::<Result<Vec<Option<String>>, ArrowError>>()?;
            let slice = if idx.len() == batch.num_rows() {
                data.clone()
            } else {
                take_record_batch(&data, &UInt32Array::from(idx))?
            };
            out.push(PartitionSlice {
                path: partition_path(&self.cols, &values),
                batch: slice,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::hive::NULL_PARTITION;
    use datafusion::arrow::array::{Int32Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    #[test]
    fn split_groups_rows_and_drops_partition_columns() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("v", DataType::Int32, false),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(vec![
                    Some("a"),
                    Some("b"),
                    Some("a"),
                    None,
                ])),
                Arc::new(Int32Array::from(vec![1, 2, 3, 4])),
            ],
        )
        .unwrap();
        let p = Partitioner::new(&schema, &["k".to_string()]).unwrap();
        let slices = p.split(&batch).unwrap();
        let summary: Vec<(String, usize)> = slices
            .iter()
            .map(|s| (s.path.clone(), s.batch.num_rows()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("k=a".to_string(), 2),
                ("k=b".to_string(), 1),
                (format!("k={NULL_PARTITION}"), 1)
            ]
        );
        assert_eq!(slices[0].batch.num_columns(), 1);
        let v = slices[0]
            .batch
            .column(0)
            .as_any()
            .downcast_ref::<Int32Array>()
            .unwrap();
        assert_eq!(v.values(), &[1, 3]);
        assert!(Partitioner::new(&schema, &["nope".to_string()]).is_err());
    }

    /// Rows go to their key's slice, in their order, and slices come in the order their
    /// keys first appear, whether a batch spans one key, a few, or more than are looked up
    /// by comparison (seeded draws, runs of equal keys among them).
    #[test]
    fn split_matches_a_grouping_of_the_rows_for_any_number_of_keys() {
        use rand::{Rng, SeedableRng};
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int32, true),
            Field::new("v", DataType::Int32, false),
        ]));
        let p = Partitioner::new(&schema, &["k".to_string()]).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(99);
        for keys in [1, 2, 5, 16, 17, 18, 40, 300] {
            let n = rng.random_range(1..3000);
            let mut k: Vec<Option<i32>> = Vec::with_capacity(n);
            while k.len() < n {
                let key = (!rng.random_bool(0.02)).then(|| rng.random_range(0..keys));
                let run = rng.random_range(1..4);
                k.extend(std::iter::repeat_n(key, run.min(n - k.len())));
            }
            let v: Vec<i32> = (0..n as i32).collect();
            let batch = RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(Int32Array::from(k.clone())),
                    Arc::new(Int32Array::from(v)),
                ],
            )
            .unwrap();
            let mut want: Vec<(Option<i32>, Vec<i32>)> = Vec::new();
            for (i, key) in k.iter().enumerate() {
                match want.iter_mut().find(|(w, _)| w == key) {
                    Some((_, rows)) => rows.push(i as i32),
                    None => want.push((*key, vec![i as i32])),
                }
            }
            let got: Vec<(String, Vec<i32>)> = p
                .split(&batch)
                .unwrap()
                .into_iter()
                .map(|s| {
                    let v = s
                        .batch
                        .column(0)
                        .as_any()
                        .downcast_ref::<Int32Array>()
                        .unwrap();
                    (s.path, v.values().to_vec())
                })
                .collect();
            let want: Vec<(String, Vec<i32>)> = want
                .into_iter()
                .map(|(key, rows)| {
                    let value = key.map_or(NULL_PARTITION.to_string(), |k| k.to_string());
                    (format!("k={value}"), rows)
                })
                .collect();
            assert_eq!(got, want, "{keys} keys");
        }
    }
}
