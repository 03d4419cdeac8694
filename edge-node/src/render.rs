//! How the shell prints results: aligned tables (the default; comfy-table), CSV (the csv
//! crate), JSON lines (values as the API writes them, `json.rs`) and one `column = value`
//! per line, as `.mode` selects.

use comfy_table::{Cell, CellAlignment, ContentLineStyle, LineStyle, Table, TableStyle};
use edgestore::Value;

use crate::json::to_json;

/// ASCII boxes: a rule above and below the header and at the bottom, none between rows.
const TABLE_STYLE: TableStyle = TableStyle::new()
    .top_border(LineStyle::new('+', '-', '+', '+'))
    .header_lines(ContentLineStyle::new('|', '|', '|'))
    .header_separator(LineStyle::new('+', '-', '+', '+'))
    .content_lines(ContentLineStyle::new('|', '|', '|'))
    .bottom_border(LineStyle::new('+', '-', '+', '+'));

/// Output format of query results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Boxed, aligned columns.
    Table,
    /// RFC 4180 CSV with a header row.
    Csv,
    /// One JSON object per row.
    Json,
    /// One `column = value` per line, rows separated by a blank line.
    Line,
}

impl Mode {
    /// Parses a `.mode` argument.
    pub fn parse(name: &str) -> Option<Mode> {
        match name {
            "table" => Some(Mode::Table),
            "csv" => Some(Mode::Csv),
            "json" => Some(Mode::Json),
            "line" => Some(Mode::Line),
            _ => None,
        }
    }
}

/// A value as the shell shows it in tables, CSV and line mode: `NULL` for null, text
/// without quotes, a TIMESTAMP as its UTC time with milliseconds (JSON mode keeps the
/// API's `{"timestamp_ms": n}`).
pub fn cell(value: &Value) -> String {
    match value {
        Value::Timestamp(ms) => crate::history::utc(*ms),
        other => other.to_string(),
    }
}

/// Renders a result in `mode`.
pub fn render(mode: Mode, columns: &[String], rows: &[Vec<Value>]) -> Result<String, csv::Error> {
    Ok(match mode {
        Mode::Table => table(columns, rows),
        Mode::Csv => csv(columns, rows)?,
        Mode::Json => json(columns, rows),
        Mode::Line => line(columns, rows),
    })
}

/// Columns as wide as their widest cell (in terminal columns), numbers right-aligned.
fn table(columns: &[String], rows: &[Vec<Value>]) -> String {
    let mut table = Table::new();
    // With no rows the rule under the header is the bottom border: one rule, not two.
    let style = if rows.is_empty() { TABLE_STYLE.header_separator(LineStyle::none()) } else { TABLE_STYLE };
    table.load_style(style).set_header(columns);
    for row in rows {
        table.add_row(row.iter().map(|value| {
            let alignment = match value {
                Value::Integer(_) | Value::Real(_) => CellAlignment::Right,
                _ => CellAlignment::Left,
            };
            Cell::new(cell(value)).set_alignment(alignment)
        }));
    }
    format!("{table}\n")
}

/// RFC 4180 CSV with a header row; NULL is an empty field.
fn csv(columns: &[String], rows: &[Vec<Value>]) -> Result<String, csv::Error> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(columns)?;
    for row in rows {
        writer.write_record(row.iter().map(|v| if v.is_null() { String::new() } else { cell(v) }))?;
    }
    let bytes = writer.into_inner().map_err(|e| csv::Error::from(e.into_error()))?;
    // Every field was a Rust string, and the quoting the writer adds is ASCII.
    Ok(String::from_utf8(bytes).expect("CSV of UTF-8 fields is UTF-8"))
}

/// One JSON object per row, keys in column order (as `sqlite3 -json`); a name that occurs
/// twice (`SELECT a.id, b.id`) stays twice rather than one value hiding the other.
fn json(columns: &[String], rows: &[Vec<Value>]) -> String {
    let mut out = String::new();
    for row in rows {
        let fields: Vec<String> = columns
            .iter()
            .zip(row)
            .map(|(column, value)| format!("{}:{}", serde_json::Value::from(column.as_str()), to_json(value)))
            .collect();
        out += &format!("{{{}}}\n", fields.join(","));
    }
    out
}

fn line(columns: &[String], rows: &[Vec<Value>]) -> String {
    let width = columns.iter().map(|c| c.chars().count()).max().unwrap_or(0);
    let blocks: Vec<String> = rows
        .iter()
        .map(|row| columns.iter().zip(row).map(|(c, v)| format!("{c:>width$} = {}\n", cell(v))).collect())
        .collect();
    blocks.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Vec<String>, Vec<Vec<Value>>) {
        let columns = vec!["id".to_string(), "name".to_string()];
        let rows = vec![vec![Value::from(1), Value::from("pump")], vec![Value::from(22), Value::Null]];
        (columns, rows)
    }

    fn shown(mode: Mode, columns: &[String], rows: &[Vec<Value>]) -> String {
        render(mode, columns, rows).expect("renders")
    }

    #[test]
    fn tables_align_and_right_align_numbers() {
        let (columns, rows) = sample();
        let expected = "\
+----+------+
| id | name |
+----+------+
|  1 | pump |
| 22 | NULL |
+----+------+
";
        assert_eq!(shown(Mode::Table, &columns, &rows), expected);
        assert_eq!(
            shown(Mode::Table, &columns, &[]),
            "+----+------+\n| id | name |\n+----+------+\n",
            "no rows: one rule"
        );
        let wide = shown(Mode::Table, &["w".to_string()], &[vec![Value::from("日本")], vec![Value::from("abcd")]]);
        assert_eq!(wide, "+------+\n| w    |\n+------+\n| 日本 |\n| abcd |\n+------+\n", "widths in terminal columns");
    }

    #[test]
    fn timestamps_show_as_utc_times_except_in_json() {
        let columns = ["at".to_string()];
        let rows = [vec![Value::Timestamp(1_796_720_400_000)]];
        assert!(shown(Mode::Table, &columns, &rows).contains("| 2026-12-08 09:00:00.000 |"));
        assert_eq!(shown(Mode::Csv, &columns, &rows), "at\n2026-12-08 09:00:00.000\n");
        assert_eq!(shown(Mode::Line, &columns, &rows), "at = 2026-12-08 09:00:00.000\n");
        assert_eq!(shown(Mode::Json, &columns, &rows), "{\"at\":{\"timestamp_ms\":1796720400000}}\n");
    }

    #[test]
    fn csv_json_and_line_modes() {
        let (columns, rows) = sample();
        assert_eq!(shown(Mode::Csv, &columns, &rows), "id,name\n1,pump\n22,\n");
        assert_eq!(shown(Mode::Json, &columns, &rows), "{\"id\":1,\"name\":\"pump\"}\n{\"id\":22,\"name\":null}\n");
        assert_eq!(shown(Mode::Line, &columns, &rows), "  id = 1\nname = pump\n\n  id = 22\nname = NULL\n");
        let quoted = shown(Mode::Csv, &["a,b".to_string()], &[vec![Value::from("say \"hi\"\n")], vec![Value::Null]]);
        assert_eq!(
            quoted, "\"a,b\"\n\"say \"\"hi\"\"\n\"\n\"\"\n",
            "a lone empty field is quoted, so the row is not lost"
        );
    }

    #[test]
    fn json_mode_writes_values_as_the_api_does() {
        let columns = ["r", "b", "t"].map(String::from);
        let row = vec![Value::Real(f64::NEG_INFINITY), Value::Blob(vec![0, 0xab]), Value::Timestamp(1_700_000_000_000)];
        let expected =
            "{\"r\":{\"real\":\"-Infinity\"},\"b\":{\"blob\":\"00ab\"},\"t\":{\"timestamp_ms\":1700000000000}}\n";
        assert_eq!(shown(Mode::Json, &columns, &[row]), expected);
    }
}
