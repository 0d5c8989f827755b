//! CSV columns by name: each file's header, read and matched to the table's columns.
//!
//! DataFusion's CSV reader applies a table's schema by position (`has_header` only skips the
//! first line), so a file whose header lists the columns in another order would be read with
//! its values in the wrong columns. Each file's header is read here (its first record, from
//! the first bytes of the file, decompressed) and matched to the table's columns by name. A
//! file in the table's order is read as before; one in another order is read by sluice's own
//! scan, which decodes it in its own order and takes its columns by name
//! ([`crate::quarantine::HeaderLayout`]). A header that lacks a column of the table, or has
//! one the table does not, is refused with `schema_evolution = "fail"`; with `"union"` the
//! missing column reads as NULL and the other is ignored.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use futures::StreamExt;
use object_store::{ObjectMeta, ObjectStore};

use super::CatalogError;
use crate::config::{CsvOptions, SchemaEvolution, SourceConfig};
use crate::quarantine::HeaderLayout;

/// How many files' headers are read at once.
const CONCURRENT_READS: usize = 16;

/// The first bytes read of a file for its header; more (16 times as many each time) when the
/// header is longer.
const FIRST_READ: u64 = 64 << 10;

/// The layouts of the files of `spec` whose header is not the table's columns (`table`) in
/// order, by object path; an error naming the file and the columns when a header lacks a
/// column or has another and the source's `schema_evolution` is `fail`. `shown` gives a
/// file's name for messages. Empty files have no header, and are skipped.
pub(super) async fn header_layouts(
    spec: &SourceConfig,
    store: &Arc<dyn ObjectStore>,
    files: &[ObjectMeta],
    table: &Schema,
    shown: &(dyn Fn(&ObjectMeta) -> String + Sync),
) -> Result<HashMap<object_store::path::Path, Arc<HeaderLayout>>, CatalogError> {
    let compression = super::compression_type(spec.compression);
    type Header = Result<Option<Vec<String>>, String>;
    let headers: Vec<(ObjectMeta, Header)> =
        futures::stream::iter(files.iter().filter(|f| f.size > 0).cloned())
            .map(|file| async move {
                let header = read_header(store.as_ref(), &file, compression, &spec.csv).await;
                (file, header)
            })
            .buffered(CONCURRENT_READS)
            .collect()
            .await;
    let names: Vec<&str> = table.fields().iter().map(|f| f.name().as_str()).collect();
    let mut layouts = HashMap::new();
    for (file, header) in headers {
        let header = header.map_err(|message| CatalogError::Read {
            source_name: spec.name.clone(),
            location: shown(&file),
            message,
            transient: false,
        })?;
        let Some(header) = header else {
            continue;
        };
        let Some((layout, differences)) = match_header(&names, header) else {
            continue;
        };
        if !differences.is_empty() && spec.schema_evolution == SchemaEvolution::Fail {
            return Err(CatalogError::HeaderMismatch {
                source_name: spec.name.clone(),
                file: shown(&file),
                against: if spec.schema.is_some() {
                    "the declared schema"
                } else {
                    "the source's columns"
                },
                differences: differences.join(", "),
            });
        }
        layouts.insert(file.location, Arc::new(layout));
    }
    Ok(layouts)
}

/// Matches a file's `header` to the table's column `names`: exactly, or else ignoring case,
/// spaces around and a byte order mark, when that finds one column only. `None` when the header is the names in order; else the
/// layout and the differences (`x missing`, `y not in the schema`), empty when the columns
/// are the same in another order.
fn match_header(names: &[&str], header: Vec<String>) -> Option<(HeaderLayout, Vec<String>)> {
    if header.len() == names.len() && header.iter().zip(names).all(|(h, n)| h == n) {
        return None;
    }
    let mut taken = vec![false; header.len()];
    let mut positions: Vec<Option<usize>> = names
        .iter()
        .map(|n| {
            let j = header
                .iter()
                .enumerate()
                .position(|(j, h)| !taken[j] && h == n)?;
            taken[j] = true;
            Some(j)
        })
        .collect();
    for (i, n) in names.iter().enumerate() {
        if positions[i].is_some() {
            continue;
        }
        let mut candidates = header
            .iter()
            .enumerate()
            .filter(|(j, h)| !taken[*j] && loose(h).eq_ignore_ascii_case(loose(n)));
        if let (Some((j, _)), None) = (candidates.next(), candidates.next()) {
            taken[j] = true;
            positions[i] = Some(j);
        }
    }
    let mut differences: Vec<String> = names
        .iter()
        .zip(&positions)
        .filter(|(_, p)| p.is_none())
        .map(|(n, _)| format!("{n} missing"))
        .collect();
    differences.extend(
        header
            .iter()
            .zip(&taken)
            .filter(|(_, t)| !**t)
            .map(|(h, _)| format!("{h} not in the schema")),
    );
    Some((HeaderLayout { header, positions }, differences))
}

/// A column name as it is matched when no name is the same: without surrounding spaces or a
/// byte order mark (which csv-core drops only when it reads it in one piece).
fn loose(name: &str) -> &str {
    name.trim_start_matches('\u{feff}').trim()
}

/// The first record of a CSV file (its header), decompressed; `None` for a file without
/// one (only blank lines). Reads the first 64 KiB, and more only for a longer header.
pub(crate) async fn read_header(
    store: &dyn ObjectStore,
    file: &ObjectMeta,
    compression: FileCompressionType,
    options: &CsvOptions,
) -> Result<Option<Vec<String>>, String> {
    let mut want = FIRST_READ;
    loop {
        let whole = want >= file.size;
        let bytes =
            object_store::ObjectStoreExt::get_range(store, &file.location, 0..want.min(file.size))
                .await
                .map_err(|e| e.to_string())?;
        let stream = futures::stream::once(async move { Ok(bytes) }).boxed();
        let mut decoded = crate::quarantine::decompress(compression, stream);
        let mut parser = FirstRecord::new(options);
        let mut cut_short = false;
        while let Some(chunk) = decoded.next().await {
            match chunk {
                Ok(chunk) => {
                    if let Some(record) = parser.push(&chunk)? {
                        return Ok(Some(record));
                    }
                }
                // A compressed stream read only in part ends in an error: read more.
                Err(_) if !whole => {
                    cut_short = true;
                    break;
                }
                Err(e) => {
                    return Err(format!(
                        "cannot read the file's header: {}",
                        crate::describe::describe_datafusion(&e)
                    ));
                }
            }
        }
        if whole && !cut_short {
            return parser.finish();
        }
        if want >= crate::quarantine::MAX_RECORD_BYTES as u64 {
            return Err(format!(
                "the header is longer than {} MiB (an unbalanced quote?)",
                crate::quarantine::MAX_RECORD_BYTES >> 20
            ));
        }
        want = want.saturating_mul(16);
    }
}

/// The first record of a CSV stream, parsed as it arrives.
struct FirstRecord {
    reader: csv_core::Reader,
    fields: Vec<u8>,
    ends: Vec<usize>,
    nfields: usize,
    nends: usize,
}

impl FirstRecord {
    fn new(options: &CsvOptions) -> FirstRecord {
        FirstRecord {
            reader: csv_core::ReaderBuilder::new()
                .delimiter(options.delimiter)
                .quote(options.quote)
                .escape(options.escape)
                .build(),
            fields: vec![0; 4096],
            ends: vec![0; 64],
            nfields: 0,
            nends: 0,
        }
    }

    /// Feeds `input`; the record once it is complete.
    fn push(&mut self, mut input: &[u8]) -> Result<Option<Vec<String>>, String> {
        loop {
            let (result, nin, nout, nend) = self.reader.read_record(
                input,
                &mut self.fields[self.nfields..],
                &mut self.ends[self.nends..],
            );
            input = &input[nin..];
            self.nfields += nout;
            self.nends += nend;
            match result {
                csv_core::ReadRecordResult::InputEmpty => return Ok(None),
                csv_core::ReadRecordResult::OutputFull => {
                    let n = self.fields.len();
                    self.fields.resize(n * 2, 0);
                }
                csv_core::ReadRecordResult::OutputEndsFull => {
                    let n = self.ends.len();
                    self.ends.resize(n * 2, 0);
                }
                csv_core::ReadRecordResult::Record => return Ok(Some(self.record())),
                csv_core::ReadRecordResult::End => return Ok(None),
            }
        }
    }

    /// The end of the file: its one record if it has no line end, else none.
    fn finish(mut self) -> Result<Option<Vec<String>>, String> {
        self.push(&[])
    }

    fn record(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(self.nends);
        let mut start = 0;
        for &end in &self.ends[..self.nends] {
            out.push(String::from_utf8_lossy(&self.fields[start..end]).into_owned());
            start = end;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(text: &[u8], pieces: usize) -> Option<Vec<String>> {
        let mut p = FirstRecord::new(&CsvOptions::default());
        for chunk in text.chunks(pieces.max(1)) {
            if let Some(r) = p.push(chunk).unwrap() {
                return Some(r);
            }
        }
        p.finish().unwrap()
    }

    #[test]
    fn the_first_record_is_the_header_however_the_bytes_arrive() {
        let text = b"id,\"first, name\",\"ci\"\"ty\"\r\n1,2,3\n";
        let want = Some(vec![
            "id".to_string(),
            "first, name".to_string(),
            "ci\"ty".to_string(),
        ]);
        for pieces in [1, 2, 3, 7, 1000] {
            assert_eq!(first(text, pieces), want, "pieces of {pieces}");
        }
        // csv-core drops a byte order mark read in one piece (as DataFusion's reader does).
        assert_eq!(first(b"\xef\xbb\xbfid\n", 1000), Some(vec!["id".into()]));
        assert_eq!(
            first(b"\n\nid,name", 1),
            Some(vec!["id".into(), "name".into()])
        );
        assert_eq!(first(b"", 1), None);
        assert_eq!(first(b"\n\n", 1), None);
        let long = format!("{}\n", vec!["column"; 5000].join(","));
        assert_eq!(first(long.as_bytes(), 100).map(|r| r.len()), Some(5000));
    }

    #[test]
    fn headers_match_by_name_then_ignoring_case() {
        let names = ["id", "first_name", "city"];
        let h = |s: &str| s.split(',').map(String::from).collect::<Vec<_>>();
        assert!(match_header(&names, h("id,first_name,city")).is_none());
        let (l, d) = match_header(&names, h("id,city,first_name")).unwrap();
        assert_eq!(l.positions, vec![Some(0), Some(2), Some(1)]);
        assert!(d.is_empty());
        let (l, d) = match_header(&names, h("\u{feff}ID, City ,first_name")).unwrap();
        assert_eq!(l.positions, vec![Some(0), Some(2), Some(1)]);
        assert!(d.is_empty());
        let (l, d) = match_header(&names, h("id,email,city")).unwrap();
        assert_eq!(l.positions, vec![Some(0), None, Some(2)]);
        assert_eq!(d, vec!["first_name missing", "email not in the schema"]);
        // Two columns that differ only by case: neither is taken for a third spelling.
        let (l, _) = match_header(&["Id"], h("id,ID")).unwrap();
        assert_eq!(l.positions, vec![None]);
    }
}
