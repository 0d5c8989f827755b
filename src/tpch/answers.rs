//! Answer checking for the 22 TPC-H queries run by `sluice bench tpch`.
//!
//! Two levels of checking exist:
//!
//! * At scale factor 1 every value of every query is compared with the
//!   official answer set that ships with the `tpchgen` crate
//!   (`tpchgen::q_and_a::answers_sf1`, produced by the TPC's own `dbgen`
//!   and `qgen` with the validation substitution parameters).
//! * At any other scale factor only the row count is checked, and only for
//!   the queries whose row count does not depend on the scale factor (see
//!   [`expected_rows`]).
//!
//! The queries themselves live in `queries/tpch/q1.sql` … `q22.sql` and use
//! the same validation substitution parameters as the official answers.

use std::fmt;

use datafusion::arrow::array::Array;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

/// What [`check_answer`] verified about a query's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerCheck {
    /// Only the number of rows was checked, because at this scale factor no
    /// official values exist but the row count is known (see
    /// [`expected_rows`]).
    RowCount,
    /// Every value was compared with the official scale-factor-1 answer.
    Values,
    /// Nothing could be checked: the row count of this query depends on the
    /// scale factor and no official answer exists for it.
    NotChecked,
}

impl fmt::Display for AnswerCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AnswerCheck::RowCount => "row count",
            AnswerCheck::Values => "values",
            AnswerCheck::NotChecked => "not checked",
        })
    }
}

/// The number of rows TPC-H query `query` (1 to 22) returns at scale factor
/// `scale`, when that number is known; `None` when it is not known (unknown
/// query, invalid scale factor, a count that grows or shrinks with the data,
/// or a scale factor too small for the count to be certain).
///
/// At scale factor 1 the count is that of the official answer. At other
/// scale factors a count is given only for queries whose result has a fixed
/// number of groups, or whose `LIMIT` is always reached, and only from the
/// scale factor up where that holds (see [`scale_independent_rows`]).
pub fn expected_rows(query: u8, scale: f64) -> Option<usize> {
    if !(1..=22).contains(&query) || !scale.is_finite() || scale <= 0.0 {
        return None;
    }
    if is_scale_one(scale) {
        return official_answer(query)
            .and_then(|text| parse_answer(text).ok())
            .map(|answer| answer.rows.len());
    }
    match scale_independent_rows(query) {
        Some((rows, min_scale)) if scale >= min_scale => Some(rows),
        _ => None,
    }
}

/// For the queries whose row count does not depend on the scale factor: that
/// count, and the smallest scale factor from which it is claimed.
///
/// `tpchgen` data is deterministic, so a count observed at a scale factor
/// holds there for good. The counts below were observed with the queries of
/// `queries/tpch/` at SF 0.001, 0.002, 0.005, 0.01, 0.012, 0.015, 0.02,
/// 0.025, 0.03, 0.04, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1 and 2.
/// Each minimum is at least the smallest scale factor from which every
/// observation agreed, and several times the largest scale factor at which
/// one did not: below it a category (a nation, a year) may be left without
/// qualifying rows, or a `LIMIT` may not be reached. Above it the rows per
/// group grow in proportion to the scale factor, so the count cannot drop.
fn scale_independent_rows(query: u8) -> Option<(usize, f64)> {
    match query {
        // Q1 groups by (l_returnflag, l_linestatus). Line items shipped before
        // 1995-06-17 are 'F', later ones 'O'; only items received by then can
        // be returned ('R' or 'A'), the rest are 'N'. So the groups are exactly
        // A/F, N/F, N/O and R/F (4 rows at every observed scale factor).
        1 => Some((4, 0.01)),
        // Q2: `LIMIT 100` on the parts' cheapest European suppliers. The
        // candidates grow with the scale factor: 44 at SF 0.1, 80 at SF 0.2,
        // and the limit is reached from SF 0.3 on (the official SF 1 answer
        // has exactly 100). Claimed from SF 1 for a safe margin.
        2 => Some((100, 1.0)),
        // Q3: `LIMIT 10` over about 11,600 qualifying orders per unit of scale
        // factor (8 rows at SF 0.001, 10 from SF 0.002 on).
        3 => Some((10, 0.01)),
        // Q4 groups by o_orderpriority, which takes exactly five values
        // (1-URGENT … 5-LOW), each common in every quarter.
        4 => Some((5, 0.01)),
        // Q5 groups by nation within the region ASIA, which has exactly five
        // nations (CHINA, INDIA, INDONESIA, JAPAN, VIETNAM); 0 or 1 rows at
        // SF 0.001 and 0.002, 5 from SF 0.005 on.
        5 => Some((5, 0.01)),
        // Q6 is a single aggregate without GROUP BY: always one row.
        6 => Some((1, 0.01)),
        // Q7 groups by (supplier nation, customer nation, year) for the two
        // nation pairs FRANCE/GERMANY and GERMANY/FRANCE and the two ship
        // years 1995 and 1996: 2 × 2 = 4 rows. Only 2 rows at SF 0.005, so
        // claimed from SF 0.05.
        7 => Some((4, 0.05)),
        // Q8 groups by order year over orders dated 1995-01-01 to 1996-12-31:
        // the two years 1995 and 1996.
        8 => Some((2, 0.01)),
        // Q9 groups by (nation, order year): all 25 nations and the seven
        // order years 1992 to 1998 (orders span 1992-01-01 to 1998-08-02),
        // 25 × 7 = 175 rows. Only 173 at SF 0.01 and 174 at SF 0.012, so
        // claimed from SF 0.05.
        9 => Some((175, 0.05)),
        // Q10: `LIMIT 20` over about 38,000 customers with returned items per
        // unit of scale factor (20 rows even at SF 0.001).
        10 => Some((20, 0.01)),
        // Q11 keeps the parts whose stock value exceeds FRACTION of the German
        // total. The query file fixes FRACTION at its SF 1 value (0.0001)
        // instead of 0.0001 / SF, so the count varies with the scale factor
        // (2,541 at SF 0.1, 1,048 at SF 1, 10 at SF 2): unknown.
        11 => None,
        // Q12 groups by l_shipmode restricted to MAIL and SHIP: two rows.
        12 => Some((2, 0.01)),
        // Q13 groups by the number of orders per customer; how many distinct
        // counts occur depends on the data (37 at SF 0.1, 42 at SF 1): unknown.
        13 => None,
        // Q14 is a single aggregate without GROUP BY: always one row.
        14 => Some((1, 0.01)),
        // Q15 returns the supplier(s) with the highest revenue in one quarter.
        // That is one row unless two suppliers' revenues, sums of hundreds of
        // prices with cents, tie exactly, which does not happen in practice
        // (one row at every observed scale factor).
        15 => Some((1, 0.01)),
        // Q16 groups by (brand, type, size) over the parts found; the number of
        // combinations present grows with the data (18,314 at SF 1): unknown.
        16 => None,
        // Q17 is a single aggregate without GROUP BY: always one row.
        17 => Some((1, 0.01)),
        // Q18: `LIMIT 100` on the orders with more than 300 units. Such orders
        // are a fixed small fraction of all orders, so their number grows in
        // proportion to the scale factor: 5 at SF 0.1, 57 at SF 1 (the official
        // answer), and the limit is reached at SF 2. Claimed from SF 5, where
        // about 285 orders qualify.
        18 => Some((100, 5.0)),
        // Q19 is a single aggregate without GROUP BY: always one row.
        19 => Some((1, 0.01)),
        // Q20 lists the Canadian suppliers that qualify; their number grows
        // with the scale factor (186 at SF 1): unknown.
        20 => None,
        // Q21: `LIMIT 100` on the Saudi suppliers that kept orders waiting;
        // their number grows with the scale factor (47 at SF 0.1, 91 at SF 0.2)
        // and the limit is reached from SF 0.3 on (the official SF 1 answer
        // has exactly 100). Claimed from SF 1 for a safe margin.
        21 => Some((100, 1.0)),
        // Q22 groups by the seven country codes 13, 31, 23, 29, 30, 18 and
        // 17 (nations 3, 21, 13, 19, 20, 8 and 7), each with many customers
        // that have no orders: seven rows.
        22 => Some((7, 0.01)),
        _ => None,
    }
}

/// Checks the result `batches` of TPC-H query `query` (1 to 22) run at scale
/// factor `scale`, and says what was checked.
///
/// At scale factor 1 every value is compared with the official answer: text
/// is compared after trimming, dates as `YYYY-MM-DD`, integers exactly, and
/// decimals and floats numerically within the rounding of the official
/// answers (which print two decimals). Rows whose `ORDER BY` key is equal may
/// come in any order. At other scale factors only the row count is compared,
/// where [`expected_rows`] knows it.
///
/// The error names the query, and the row and column (both counted from 1)
/// and both values when a value differs.
pub fn check_answer(query: u8, scale: f64, batches: &[RecordBatch]) -> Result<AnswerCheck, String> {
    if !(1..=22).contains(&query) {
        return Err(format!("Q{query}: there is no such TPC-H query (1 to 22)"));
    }
    if !scale.is_finite() || scale <= 0.0 {
        return Err(format!("Q{query}: invalid scale factor {scale}"));
    }
    let actual_rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if !is_scale_one(scale) {
        return match expected_rows(query, scale) {
            Some(expected) if expected == actual_rows => Ok(AnswerCheck::RowCount),
            Some(expected) => Err(format!(
                "Q{query}: expected {expected} rows at scale factor {scale}, got {actual_rows}"
            )),
            None => Ok(AnswerCheck::NotChecked),
        };
    }
    let text = official_answer(query)
        .ok_or_else(|| format!("Q{query}: no official scale factor 1 answer is available"))?;
    let mut expected = parse_answer(text)
        .map_err(|e| format!("Q{query}: cannot read the official answer: {e}"))?;
    apply_corrections(query, &mut expected);
    compare_with_answer(query, &expected, batches)?;
    Ok(AnswerCheck::Values)
}

/// An order-insensitive digest of a query's result: equal for two runs that returned the
/// same rows in any order, whatever the scale factor, so answers without an official
/// reference (a cluster's against a local run's, at SF 10) can still be compared value by
/// value. Floats are rounded to 9 significant digits, as a sum's last bits depend on the
/// order it was added in; everything else is compared as displayed. Stable within one
/// build of sluice (the hash is Rust's), which is what comparing two runs needs.
pub fn result_digest(batches: &[RecordBatch]) -> Result<String, String> {
    use std::hash::{Hash, Hasher};
    let options = FormatOptions::default();
    let mut rows: Vec<String> = Vec::new();
    for batch in batches {
        let start = rows.len();
        rows.resize(start + batch.num_rows(), String::new());
        for (column, field) in batch.columns().iter().zip(batch.schema().fields()) {
            let formatter = ArrayFormatter::try_new(column.as_ref(), &options)
                .map_err(|e| format!("cannot display column '{}': {e}", field.name()))?;
            for (index, row) in rows[start..].iter_mut().enumerate() {
                let text = formatter.value(index).to_string();
                let cell = match text.parse::<f64>() {
                    Ok(v) if column.data_type().is_floating() => format!("{v:.8e}"),
                    _ if column.is_null(index) => "\\N".to_string(),
                    _ => text,
                };
                row.push_str(&cell);
                row.push('\u{1f}');
            }
        }
    }
    rows.sort_unstable();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    rows.hash(&mut hasher);
    Ok(format!("{:016x}", hasher.finish()))
}

/// Whether `scale` is scale factor 1, the only one with official answers.
fn is_scale_one(scale: f64) -> bool {
    (scale - 1.0).abs() < 1e-9
}

/// The official SF 1 answer text of `query`, as shipped by `tpchgen`.
fn official_answer(query: u8) -> Option<&'static str> {
    tpchgen::q_and_a::answers_sf1::answer(i32::from(query))
}

/// Known errors in the official answer values, as (query, row, column, value
/// in the answer file, correct value), rows and columns counted from 0.
///
/// Q17: the answer file (like the TPC's own `q17.out`) prints `348406.02`,
/// but the exact result with the validation parameters is 2438842.38 / 7 =
/// 348406.054…, i.e. `348406.05`; the difference (0.24 in the underlying sum)
/// is smaller than any single line item's price, so no row set gives 348406.02
/// and it is a rounding artefact of the reference run. Other TPC-H
/// implementations check Q17 against 348406.05 as well.
const CORRECTIONS: &[(u8, usize, usize, &str, &str)] = &[(17, 0, 0, "348406.02", "348406.05")];

/// Replaces the known errors of [`CORRECTIONS`] in `answer`, where the answer
/// still holds the erroneous value.
fn apply_corrections(query: u8, answer: &mut ParsedAnswer) {
    for &(q, row, column, wrong, right) in CORRECTIONS {
        if q != query {
            continue;
        }
        if let Some(cell) = answer.rows.get_mut(row).and_then(|r| r.get_mut(column))
            && cell == wrong
        {
            *cell = right.to_string();
        }
    }
}

/// Integer columns that the answer file prints with their last digits
/// dropped, as (query, column from 0, number of digits dropped).
///
/// Q11: `tpchgen`'s answer file prints `ps_partkey` divided by 100 (the TPC's
/// `q11.out` starts with key 129760, the file with 1297; 5182 is printed as
/// 51). The rows are still fully identified by the `value` column, which is
/// printed correctly and has no ties. The full key is accepted as well, in
/// case a later `tpchgen` prints it.
const DIGITS_DROPPED: &[(u8, usize, u32)] = &[(11, 0, 2)];

/// For each query, the positions (from 0) of the output columns its
/// `ORDER BY` sorts on, in sort order. Rows whose values in these columns are
/// equal may legitimately come in any order. An empty list means the whole
/// result is unordered (the single-row aggregates).
///
/// None of the `LIMIT` queries has a tie at its cut-off at SF 1 (Q2 and Q21
/// sort on a unique key; Q3, Q10 and Q18 have no equal keys in their
/// answers), so which rows are kept is determined.
fn order_key_columns(query: u8) -> &'static [usize] {
    match query {
        1 => &[0, 1],
        2 => &[0, 2, 1, 3],
        3 => &[1, 2],
        4 => &[0],
        5 => &[1],
        7 => &[0, 1, 2],
        8 => &[0],
        9 => &[0, 1],
        10 => &[2],
        11 => &[1],
        12 => &[0],
        13 => &[1, 0],
        15 => &[0],
        16 => &[3, 0, 1, 2],
        18 => &[4, 3],
        20 => &[0],
        21 => &[1, 0],
        22 => &[0],
        _ => &[],
    }
}

/// An official answer: column names and rows of trimmed cell texts.
#[derive(Debug, Clone, PartialEq)]
struct ParsedAnswer {
    /// Column names from the header line (some are truncated in the official
    /// files, e.g. `o_orderdat`, so they are only used in messages).
    columns: Vec<String>,
    /// One entry per row, one trimmed cell text per column.
    rows: Vec<Vec<String>>,
}

/// Parses an answer in the official TBL-like layout: blank lines are
/// ignored, the first line is the header, every line is `|`-separated and
/// padded with spaces, and every row has as many cells as the header.
fn parse_answer(text: &str) -> Result<ParsedAnswer, String> {
    let mut lines = text.lines().filter(|line| !line.trim().is_empty());
    let header = lines
        .next()
        .ok_or_else(|| "the answer is empty (no header line)".to_string())?;
    let columns: Vec<String> = header.split('|').map(|c| c.trim().to_string()).collect();
    let mut rows = Vec::new();
    for (index, line) in lines.enumerate() {
        let row: Vec<String> = line.split('|').map(|c| c.trim().to_string()).collect();
        if row.len() != columns.len() {
            return Err(format!(
                "answer row {} has {} cells but the header has {} columns",
                index + 1,
                row.len(),
                columns.len()
            ));
        }
        rows.push(row);
    }
    Ok(ParsedAnswer { columns, rows })
}

/// One value of a query result, in a form comparable with answer text.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    /// SQL NULL.
    Null,
    /// Any integer type, compared exactly.
    Int(i128),
    /// Decimals and floats, compared within [`numbers_match`]'s tolerance.
    Num(f64),
    /// Everything else as displayed by Arrow (text, dates as YYYY-MM-DD).
    Text(String),
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cell::Null => f.write_str("NULL"),
            Cell::Int(v) => write!(f, "{v}"),
            Cell::Num(v) => write!(f, "{v}"),
            Cell::Text(v) => write!(f, "{v:?}"),
        }
    }
}

/// Converts every value of `batches` into rows of [`Cell`]s.
fn result_cells(batches: &[RecordBatch]) -> Result<Vec<Vec<Cell>>, String> {
    let mut rows: Vec<Vec<Cell>> = Vec::new();
    let options = FormatOptions::default();
    for batch in batches {
        let start = rows.len();
        rows.extend((0..batch.num_rows()).map(|_| Vec::with_capacity(batch.num_columns())));
        for (column, field) in batch.columns().iter().zip(batch.schema().fields()) {
            let formatter = ArrayFormatter::try_new(column.as_ref(), &options)
                .map_err(|e| format!("cannot display column '{}': {e}", field.name()))?;
            for index in 0..batch.num_rows() {
                let cell = if column.is_null(index) {
                    Cell::Null
                } else {
                    let text = formatter.value(index).to_string();
                    to_cell(column.data_type(), text)
                };
                rows[start + index].push(cell);
            }
        }
    }
    Ok(rows)
}

/// Classifies the displayed `text` of a value of type `data_type`.
fn to_cell(data_type: &DataType, text: String) -> Cell {
    if data_type.is_integer()
        && let Ok(value) = text.parse::<i128>()
    {
        return Cell::Int(value);
    }
    let numeric = data_type.is_floating()
        || matches!(
            data_type,
            DataType::Decimal32(..)
                | DataType::Decimal64(..)
                | DataType::Decimal128(..)
                | DataType::Decimal256(..)
        );
    if numeric && let Ok(value) = text.parse::<f64>() {
        return Cell::Num(value);
    }
    Cell::Text(text)
}

/// Whether a numeric result matches a number printed in an answer file. The
/// answers are rounded to two decimals, so a correct result may differ by up
/// to half a cent; a tiny relative slack covers the binary representation of
/// large sums (around 1e11 in Q1).
fn numbers_match(actual: f64, expected: f64) -> bool {
    actual.is_finite() && (actual - expected).abs() <= 0.005 + 1e-9 + expected.abs() * 1e-14
}

/// Whether a result cell matches the (trimmed) answer text `expected`.
fn cell_matches(actual: &Cell, expected: &str) -> bool {
    match actual {
        Cell::Null => expected.is_empty() || expected.eq_ignore_ascii_case("null"),
        Cell::Int(value) => match expected.parse::<i128>() {
            Ok(e) => *value == e,
            // An integer result against a decimal answer (e.g. "323.00").
            Err(_) => expected
                .parse::<f64>()
                .is_ok_and(|e| numbers_match(*value as f64, e)),
        },
        Cell::Num(value) => expected
            .parse::<f64>()
            .is_ok_and(|e| numbers_match(*value, e)),
        Cell::Text(value) => value.trim() == expected,
    }
}

/// Whether result cell `actual` in column `column` of query `query` matches
/// the answer text `expected`, allowing for [`DIGITS_DROPPED`].
fn answer_cell_matches(query: u8, column: usize, actual: &Cell, expected: &str) -> bool {
    if cell_matches(actual, expected) {
        return true;
    }
    let dropped = DIGITS_DROPPED
        .iter()
        .find(|&&(q, c, _)| q == query && c == column)
        .map(|&(_, _, digits)| digits);
    match (dropped, actual) {
        (Some(digits), Cell::Int(value)) => {
            let divisor = 10_i128.pow(digits);
            expected.parse::<i128>() == Ok(value.div_euclid(divisor))
        }
        _ => false,
    }
}

/// The first column (from 0) where `actual` differs from `expected` in
/// query `query`'s result.
fn first_difference(query: u8, actual: &[Cell], expected: &[String]) -> Option<usize> {
    actual
        .iter()
        .zip(expected)
        .enumerate()
        .position(|(column, (a, e))| !answer_cell_matches(query, column, a, e))
}

/// Compares a result with a parsed official answer; see [`check_answer`].
fn compare_with_answer(
    query: u8,
    expected: &ParsedAnswer,
    batches: &[RecordBatch],
) -> Result<(), String> {
    let column_names: Vec<String> = match batches.first() {
        Some(batch) => batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect(),
        None => expected.columns.clone(),
    };
    let actual = result_cells(batches).map_err(|e| format!("Q{query}: {e}"))?;
    if actual.len() != expected.rows.len() {
        return Err(format!(
            "Q{query}: expected {} rows (official scale factor 1 answer), got {}",
            expected.rows.len(),
            actual.len()
        ));
    }
    if let Some(first) = batches.first()
        && first.num_columns() != expected.columns.len()
    {
        return Err(format!(
            "Q{query}: expected {} columns ({}), got {} ({})",
            expected.columns.len(),
            expected.columns.join(", "),
            first.num_columns(),
            column_names.join(", ")
        ));
    }
    let describe = |row: usize, column: usize| {
        let name = column_names
            .get(column)
            .or_else(|| expected.columns.get(column))
            .map_or("?", String::as_str);
        let got = actual
            .get(row)
            .and_then(|r| r.get(column))
            .map_or_else(|| "nothing".to_string(), Cell::to_string);
        let want = expected
            .rows
            .get(row)
            .and_then(|r| r.get(column))
            .map_or("nothing", String::as_str);
        format!(
            "Q{query} row {} column {} ({name}): got {got}, expected {want:?}",
            row + 1,
            column + 1
        )
    };

    // Split the expected rows into runs with equal ORDER BY key; inside a run
    // the result rows may come in any order.
    let keys = order_key_columns(query);
    let key_of = |row: &[String]| -> Vec<String> {
        keys.iter().filter_map(|&k| row.get(k).cloned()).collect()
    };
    let mut start = 0;
    while start < expected.rows.len() {
        let key = key_of(&expected.rows[start]);
        let mut end = start + 1;
        while end < expected.rows.len() && key_of(&expected.rows[end]) == key {
            end += 1;
        }
        if end - start == 1 {
            if let Some(column) = first_difference(query, &actual[start], &expected.rows[start]) {
                return Err(describe(start, column));
            }
        } else {
            let mut used = vec![false; end - start];
            for (row, actual_row) in actual.iter().enumerate().take(end).skip(start) {
                let found = (start..end).find(|&candidate| {
                    !used[candidate - start]
                        && first_difference(query, actual_row, &expected.rows[candidate]).is_none()
                });
                if let Some(candidate) = found {
                    used[candidate - start] = true;
                } else {
                    let column =
                        first_difference(query, actual_row, &expected.rows[row]).unwrap_or(0);
                    return Err(format!(
                        "{} (no unmatched expected row among rows {} to {}, which tie on the \
                         ORDER BY key, matches this row)",
                        describe(row, column),
                        start + 1,
                        end
                    ));
                }
            }
        }
        start = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{
        ArrayRef, Date32Array, Decimal128Array, Float64Array, Int32Array, Int64Array,
        StringViewArray,
    };
    use datafusion::arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    /// Builds a batch from named columns.
    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        let fields: Vec<Field> = columns
            .iter()
            .map(|(name, array)| Field::new(*name, array.data_type().clone(), true))
            .collect();
        let arrays = columns.into_iter().map(|(_, array)| array).collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).expect("valid test batch")
    }

    fn decimals(values: &[i128]) -> ArrayRef {
        Arc::new(
            Decimal128Array::from(values.to_vec())
                .with_precision_and_scale(15, 2)
                .expect("valid decimal type"),
        )
    }

    fn strings(values: &[&str]) -> ArrayRef {
        Arc::new(StringViewArray::from(values.to_vec()))
    }

    /// The official Q3 answer as a batch, with the column types of the query;
    /// `revenue_cents_row_4` replaces the fourth revenue (38453794 is right).
    fn q3_batch(revenue_cents_row_4: i128, rows: usize) -> RecordBatch {
        let orderkeys = [
            2456423, 3459808, 492164, 1188320, 2435712, 4878020, 5521732, 2628192, 993600, 2300070,
        ];
        let revenue = [
            40618101,
            40583870,
            39032406,
            revenue_cents_row_4,
            37867306,
            37837680,
            37515392,
            37313331,
            37140746,
            36737115,
        ];
        let dates = [
            "1995-03-05",
            "1995-03-04",
            "1995-02-19",
            "1995-03-09",
            "1995-02-26",
            "1995-03-12",
            "1995-03-13",
            "1995-02-22",
            "1995-03-05",
            "1995-03-13",
        ];
        let days: Vec<i32> = dates.iter().map(|d| days_since_epoch(d)).collect();
        batch(vec![
            (
                "l_orderkey",
                Arc::new(Int64Array::from(orderkeys[..rows].to_vec())) as ArrayRef,
            ),
            ("revenue", decimals(&revenue[..rows])),
            (
                "o_orderdate",
                Arc::new(Date32Array::from(days[..rows].to_vec())),
            ),
            ("o_shippriority", Arc::new(Int32Array::from(vec![0; rows]))),
        ])
    }

    /// Days since 1970-01-01 of a `YYYY-MM-DD` date (proleptic Gregorian).
    fn days_since_epoch(date: &str) -> i32 {
        let parts: Vec<i64> = date
            .split('-')
            .map(|p| p.parse().expect("number"))
            .collect();
        let (y, m, d) = (parts[0], parts[1], parts[2]);
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        i32::try_from(era * 146_097 + doe - 719_468).expect("date in range")
    }

    #[test]
    fn parses_the_official_layout() {
        let text = "\nname   |value  \nA      |   1.50\n B     |2      \n";
        let parsed = parse_answer(text).expect("parses");
        assert_eq!(parsed.columns, vec!["name", "value"]);
        assert_eq!(parsed.rows, vec![vec!["A", "1.50"], vec!["B", "2"]]);
    }

    #[test]
    fn parser_rejects_ragged_rows_and_empty_text() {
        let err = parse_answer("a|b\n1|2|3\n").expect_err("ragged row");
        assert!(err.contains("row 1"), "{err}");
        assert!(parse_answer("  \n").is_err());
    }

    #[test]
    fn every_official_answer_parses_with_the_expected_row_count() {
        let counts = [
            4, 100, 10, 5, 5, 1, 4, 2, 175, 20, 1048, 2, 42, 1, 1, 18314, 1, 57, 1, 186, 100, 7,
        ];
        for (query, count) in (1u8..=22).zip(counts) {
            assert_eq!(expected_rows(query, 1.0), Some(count), "Q{query}");
        }
    }

    #[test]
    fn scale_independent_counts_agree_with_sf1() {
        for query in 1u8..=22 {
            if let Some(count) = expected_rows(query, 0.5) {
                assert_eq!(expected_rows(query, 1.0), Some(count), "Q{query}");
            }
        }
        assert_eq!(expected_rows(2, 10.0), Some(100));
        assert_eq!(expected_rows(18, 2.0), None);
        assert_eq!(expected_rows(18, 10.0), Some(100));
        assert_eq!(expected_rows(1, 0.1), Some(4));
        assert_eq!(expected_rows(2, 0.1), None);
        assert_eq!(expected_rows(11, 10.0), None);
        assert_eq!(expected_rows(0, 1.0), None);
        assert_eq!(expected_rows(23, 1.0), None);
        assert_eq!(expected_rows(6, 0.001), None);
        assert_eq!(expected_rows(6, f64::NAN), None);
        assert_eq!(expected_rows(6, -1.0), None);
    }

    #[test]
    fn correct_q3_result_passes_value_check() {
        let result = q3_batch(38453794, 10);
        assert_eq!(check_answer(3, 1.0, &[result]), Ok(AnswerCheck::Values));
    }

    #[test]
    fn result_split_over_batches_passes() {
        let result = q3_batch(38453794, 10);
        let (a, b) = (result.slice(0, 4), result.slice(4, 6));
        assert_eq!(check_answer(3, 1.0, &[a, b]), Ok(AnswerCheck::Values));
    }

    #[test]
    fn wrong_value_names_query_row_and_column() {
        let result = q3_batch(38453894, 10);
        let err = check_answer(3, 1.0, &[result]).expect_err("wrong revenue");
        assert!(err.starts_with("Q3 row 4 column 2 (revenue)"), "{err}");
        assert!(
            err.contains("384538.94") && err.contains("384537.94"),
            "{err}"
        );
    }

    #[test]
    fn half_cent_rounding_is_tolerated() {
        // 377250.83 in the answer; 377250.834 rounds to it.
        let cells = vec![Cell::Num(377_250.834)];
        assert!(first_difference(3, &cells, &["377250.83".to_string()]).is_none());
        let cells = vec![Cell::Num(377_250.84)];
        assert!(first_difference(3, &cells, &["377250.83".to_string()]).is_some());
    }

    #[test]
    fn wrong_row_count_names_query() {
        let result = q3_batch(38453794, 9);
        let err = check_answer(3, 1.0, &[result]).expect_err("short result");
        assert!(
            err.starts_with("Q3:") && err.contains("10 rows") && err.contains("got 9"),
            "{err}"
        );
    }

    #[test]
    fn wrong_column_count_fails() {
        let result = q3_batch(38453794, 10);
        let narrower = result.project(&[0, 1, 2]).expect("projection");
        let err = check_answer(3, 1.0, &[narrower]).expect_err("missing column");
        assert!(err.contains("4 columns"), "{err}");
    }

    #[test]
    fn wrong_text_and_date_values_fail() {
        let result = batch(vec![
            (
                "n_name",
                strings(&["INDONESIA", "VIETNAM", "CHINA", "INDIA", "JAPAN"]),
            ),
            (
                "revenue",
                decimals(&[5550204117, 5529508700, 5372449426, 5203551200, 4541017570]),
            ),
        ]);
        assert_eq!(
            check_answer(5, 1.0, std::slice::from_ref(&result)),
            Ok(AnswerCheck::Values)
        );
        let wrong = batch(vec![
            (
                "n_name",
                strings(&["INDONESIA", "VIETNAM", "CHINA", "JAPAN", "INDIA"]),
            ),
            (
                "revenue",
                decimals(&[5550204117, 5529508700, 5372449426, 5203551200, 4541017570]),
            ),
        ]);
        let err = check_answer(5, 1.0, &[wrong]).expect_err("swapped names");
        assert!(err.starts_with("Q5 row 4 column 1 (n_name)"), "{err}");

        let mut q3 = q3_batch(38453794, 10);
        let mut columns = q3.columns().to_vec();
        let mut days: Vec<i32> = columns[2]
            .as_any()
            .downcast_ref::<Date32Array>()
            .expect("dates")
            .values()
            .to_vec();
        days[9] += 1;
        columns[2] = Arc::new(Date32Array::from(days));
        q3 = RecordBatch::try_new(q3.schema(), columns).expect("batch");
        let err = check_answer(3, 1.0, &[q3]).expect_err("wrong date");
        assert!(err.starts_with("Q3 row 10 column 3 (o_orderdate)"), "{err}");
        assert!(err.contains("1995-03-14"), "{err}");
    }

    #[test]
    fn float_and_integer_results_compare_numerically() {
        // Q8 with an integer year and a float share.
        let result = batch(vec![
            (
                "o_year",
                Arc::new(Int64Array::from(vec![1995, 1996])) as ArrayRef,
            ),
            (
                "mkt_share",
                Arc::new(Float64Array::from(vec![0.0344, 0.0415])),
            ),
        ]);
        assert_eq!(check_answer(8, 1.0, &[result]), Ok(AnswerCheck::Values));
        let result = batch(vec![
            (
                "o_year",
                Arc::new(Float64Array::from(vec![1995.0, 1996.0])) as ArrayRef,
            ),
            (
                "mkt_share",
                Arc::new(Float64Array::from(vec![0.0344, 0.0515])),
            ),
        ]);
        let err = check_answer(8, 1.0, &[result]).expect_err("wrong share");
        assert!(err.starts_with("Q8 row 2 column 2 (mkt_share)"), "{err}");
    }

    #[test]
    fn ties_on_the_order_key_may_come_in_any_order() {
        // A made-up answer whose second and third rows tie on `value`.
        let answer = parse_answer("key|value\n1|9.00\n2|5.00\n3|5.00\n4|1.00\n").expect("parses");
        let make = |keys: Vec<i64>, values: Vec<i128>| {
            batch(vec![
                ("ps_partkey", Arc::new(Int64Array::from(keys)) as ArrayRef),
                ("value", decimals(&values)),
            ])
        };
        // Q11 orders by value only.
        let swapped = make(vec![1, 3, 2, 4], vec![900, 500, 500, 100]);
        assert_eq!(compare_with_answer(11, &answer, &[swapped]), Ok(()));
        let wrong = make(vec![1, 3, 3, 4], vec![900, 500, 500, 100]);
        let err = compare_with_answer(11, &answer, &[wrong]).expect_err("duplicate row");
        assert!(err.starts_with("Q11 row 3 column 1 (ps_partkey)"), "{err}");
        // Outside a tie the order matters.
        let misordered = make(vec![4, 2, 3, 1], vec![100, 500, 500, 900]);
        let err = compare_with_answer(11, &answer, &[misordered]).expect_err("misordered");
        assert!(err.starts_with("Q11 row 1 column 1"), "{err}");
    }

    #[test]
    fn known_answer_errata_are_handled() {
        // Q17: the file's 348406.02 is corrected to the exact 348406.05.
        let q17 = |v: f64| {
            batch(vec![(
                "avg_yearly",
                Arc::new(Float64Array::from(vec![v])) as ArrayRef,
            )])
        };
        assert_eq!(
            check_answer(17, 1.0, &[q17(348_406.054_285_714_3)]),
            Ok(AnswerCheck::Values)
        );
        let err = check_answer(17, 1.0, &[q17(348_406.02)]).expect_err("erratum value");
        assert!(err.starts_with("Q17 row 1 column 1 (avg_yearly)"), "{err}");
        // Q11: ps_partkey is printed without its last two digits.
        assert!(answer_cell_matches(11, 0, &Cell::Int(129_760), "1297"));
        assert!(answer_cell_matches(11, 0, &Cell::Int(1297), "1297"));
        assert!(answer_cell_matches(11, 0, &Cell::Int(5182), "51"));
        assert!(!answer_cell_matches(11, 0, &Cell::Int(129_860), "1297"));
        assert!(!answer_cell_matches(11, 1, &Cell::Int(129_760), "1297"));
        assert!(!answer_cell_matches(3, 0, &Cell::Int(129_760), "1297"));
    }

    #[test]
    fn nulls_match_only_empty_or_null_text() {
        assert!(cell_matches(&Cell::Null, ""));
        assert!(cell_matches(&Cell::Null, "NULL"));
        assert!(!cell_matches(&Cell::Null, "0"));
    }

    #[test]
    fn other_scale_factors_check_row_counts_only() {
        let q6 = |cents: i128| batch(vec![("revenue", decimals(&[cents]))]);
        assert_eq!(check_answer(6, 0.1, &[q6(1)]), Ok(AnswerCheck::RowCount));
        let two = batch(vec![("revenue", decimals(&[1, 2]))]);
        let err = check_answer(6, 0.1, &[two]).expect_err("two rows");
        assert!(
            err.starts_with("Q6:") && err.contains("expected 1 rows"),
            "{err}"
        );
        assert_eq!(check_answer(13, 0.1, &[q6(1)]), Ok(AnswerCheck::NotChecked));
        assert!(check_answer(0, 1.0, &[]).is_err());
        assert!(check_answer(23, 0.1, &[]).is_err());
        assert!(check_answer(1, 0.0, &[]).is_err());
    }
}
