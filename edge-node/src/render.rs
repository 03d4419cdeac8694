//! How the shell prints results: aligned tables (the default), CSV, JSON lines and one
//! `column = value` per line, as `.mode` selects.

use edgestore::Value;

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

/// A value as the shell shows it in tables: `NULL` for null, text without quotes.
pub fn cell(value: &Value) -> String {
    value.to_string()
}

/// Renders a result in `mode`.
pub fn render(mode: Mode, columns: &[String], rows: &[Vec<Value>]) -> String {
    match mode {
        Mode::Table => table(columns, rows),
        Mode::Csv => csv(columns, rows),
        Mode::Json => json(columns, rows),
        Mode::Line => line(columns, rows),
    }
}

fn table(columns: &[String], rows: &[Vec<Value>]) -> String {
    let cells: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(cell).collect()).collect();
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| cells.iter().map(|r| r[i].chars().count()).chain([columns[i].chars().count()]).max().unwrap_or(0))
        .collect();
    let rule: String = widths.iter().map(|w| format!("+{}", "-".repeat(w + 2))).collect::<String>() + "+\n";
    let line = |values: &[String], numeric: &[bool]| -> String {
        let parts: Vec<String> = values
            .iter()
            .zip(&widths)
            .zip(numeric)
            .map(|((v, w), right)| if *right { format!(" {v:>w$} ") } else { format!(" {v:<w$} ") })
            .collect();
        format!("|{}|\n", parts.join("|"))
    };
    let mut out = rule.clone();
    out += &line(columns, &vec![false; columns.len()]);
    out += &rule;
    for (row, values) in cells.iter().zip(rows) {
        let numeric: Vec<bool> = values.iter().map(|v| matches!(v, Value::Integer(_) | Value::Real(_))).collect();
        out += &line(row, &numeric);
    }
    if !rows.is_empty() {
        out += &rule;
    }
    out
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn csv(columns: &[String], rows: &[Vec<Value>]) -> String {
    let mut out = columns.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(",") + "\n";
    for row in rows {
        let fields: Vec<String> =
            row.iter().map(|v| if v.is_null() { String::new() } else { csv_field(&cell(v)) }).collect();
        out += &(fields.join(",") + "\n");
    }
    out
}

/// A value as JSON: numbers and booleans as such, blobs as hex strings, NULL as null, a
/// real that is not finite as the API writes it (`{"real": "Infinity"}`).
pub fn json_value(value: &Value) -> serde_json::Value {
    match value {
        Value::Null => serde_json::Value::Null,
        Value::Integer(v) | Value::Timestamp(v) => (*v).into(),
        Value::Real(v) => serde_json::Number::from_f64(*v).map_or_else(|| crate::json::to_json(value), Into::into),
        Value::Boolean(v) => (*v).into(),
        Value::Text(v) => v.clone().into(),
        Value::Blob(_) => cell(value).into(),
    }
}

/// One JSON object per row, keys in column order (as `sqlite3 -json`); a name that occurs
/// twice (`SELECT a.id, b.id`) stays twice rather than one value hiding the other.
fn json(columns: &[String], rows: &[Vec<Value>]) -> String {
    let mut out = String::new();
    for row in rows {
        let fields: Vec<String> = columns
            .iter()
            .zip(row)
            .map(|(column, value)| format!("{}:{}", serde_json::Value::from(column.as_str()), json_value(value)))
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
        assert_eq!(render(Mode::Table, &columns, &rows), expected);
    }

    #[test]
    fn csv_json_and_line_modes() {
        let (columns, rows) = sample();
        assert_eq!(render(Mode::Csv, &columns, &rows), "id,name\n1,pump\n22,\n");
        assert_eq!(render(Mode::Json, &columns, &rows), "{\"id\":1,\"name\":\"pump\"}\n{\"id\":22,\"name\":null}\n");
        assert_eq!(render(Mode::Line, &columns, &rows), "  id = 1\nname = pump\n\n  id = 22\nname = NULL\n");
        assert_eq!(csv_field("a,\"b\""), "\"a,\"\"b\"\"\"");
        let infinite = render(Mode::Json, &["r".to_string()], &[vec![Value::Real(f64::NEG_INFINITY)]]);
        assert_eq!(infinite, "{\"r\":{\"real\":\"-Infinity\"}}\n", "the API's form of a non-finite real");
    }
}
