//! Table and index definitions, their validation, and stable column ids.
//!
//! A definition is what a `CREATE TABLE` / `CREATE INDEX` says. Definitions replicate as
//! catalog documents (see `catalog.rs`), so they are serializable and validated both when a
//! user writes them and when a peer sends them. Names are case-insensitive, as in SQLite:
//! they are stored lower-cased.

use serde::{Deserialize, Serialize};

use crate::types::{ColumnType, Value};

/// Longest table, column or index name, in bytes.
pub const NAME_BYTES_MAX: usize = 128;
/// Most columns in one table.
pub const COLUMNS_MAX: usize = 256;
/// Most columns in a primary key or an index.
pub const KEY_COLUMNS_MAX: usize = 16;
/// Most `CHECK` constraints, and separately most foreign keys, in one table.
pub const CONSTRAINTS_MAX: usize = 64;
/// Longest `CHECK` expression, in bytes of SQL.
pub const CHECK_SQL_BYTES_MAX: usize = 4096;
/// The referential actions a foreign key may name (stored and shown, never carried out).
const REFERENTIAL_ACTIONS: &[&str] = &["CASCADE", "SET NULL", "SET DEFAULT", "RESTRICT", "NO ACTION"];

/// A column of a table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColumnDef {
    /// Column name, lower-cased.
    pub name: String,
    /// Column type.
    pub ty: ColumnType,
    /// Whether NULL is refused. Primary-key columns are always NOT NULL.
    pub not_null: bool,
    /// Value used when an insert does not name the column.
    pub default: Option<Value>,
    /// The column's id when it is not derived from its name and type: set on a column
    /// renamed by `ALTER TABLE`, which keeps the id it was created with (docs/design.md
    /// § ALTER TABLE). Left out when absent, so a definition without it encodes as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_id: Option<String>,
    /// Added by `ALTER TABLE ... ADD COLUMN`: rows written before have no value for it, so
    /// it reads as its default there, and a record leaves it out at its end while the
    /// row's document holds no value for it (`materialize_row`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub added: bool,
    /// Dropped by `ALTER TABLE ... DROP COLUMN`: the column keeps its place (records are
    /// positional) and its values, but SQL no longer reaches it by name, `*` or an
    /// `INSERT` without a column list; new rows hold NULL in it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dropped: bool,
}

impl ColumnDef {
    /// A nullable column without default.
    pub fn new(name: &str, ty: ColumnType) -> ColumnDef {
        ColumnDef {
            name: name.to_ascii_lowercase(),
            ty,
            not_null: false,
            default: None,
            stored_id: None,
            added: false,
            dropped: false,
        }
    }

    /// Marks the column NOT NULL.
    pub fn not_null(mut self) -> ColumnDef {
        self.not_null = true;
        self
    }

    /// Gives the column a default.
    pub fn default(mut self, value: impl Into<Value>) -> ColumnDef {
        self.default = Some(value.into());
        self
    }

    /// The column's stable id: the map key of its value in every row document.
    ///
    /// It is derived from the name and type, so two nodes that create the same column
    /// independently agree on it, and a column of another type under the same name (a
    /// conflicting definition) never reads a value of the wrong type. A renamed column keeps
    /// the id it had ([`ColumnDef::stored_id`]).
    pub fn id(&self) -> String {
        self.stored_id.clone().unwrap_or_else(|| column_id(&self.name, self.ty))
    }

    /// What the column reads as in a row whose document holds no value for it: its
    /// default, else 0 for a COUNTER and NULL otherwise.
    pub fn absent_value(&self) -> Value {
        match (&self.default, self.ty) {
            (Some(default), _) => default.clone(),
            (None, ColumnType::Counter) => Value::Integer(0),
            (None, _) => Value::Null,
        }
    }
}

/// The id of the `n`-th column named `name` of type `ty` added to one incarnation of a
/// table (`n` ≥ 1). The first is [`column_id`], so two nodes that add the same column
/// independently agree on it; a later one (the first was renamed away and the name added
/// again) gets a new id, so the first column's values never show in it.
pub fn column_id_nth(name: &str, ty: ColumnType, n: u32) -> String {
    column_hash(name, ty, (n > 1).then_some(n))
}

/// Whether `id` has the shape of a column id: 12 lower-case hex digits.
pub fn is_column_id(id: &str) -> bool {
    id.len() == 12 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Computes a column id; see [`ColumnDef::id`].
pub fn column_id(name: &str, ty: ColumnType) -> String {
    column_hash(name, ty, None)
}

/// A column id: the name and type, and for a later column of that name the count.
fn column_hash(name: &str, ty: ColumnType, nth: Option<u32>) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"edgestore.column.v1\0");
    hasher.update(name.as_bytes());
    hasher.update(&[0]);
    hasher.update(ty.sql_name().as_bytes());
    if let Some(n) = nth {
        hasher.update(&[0]);
        hasher.update(&n.to_le_bytes());
    }
    hasher.finalize().to_hex()[..12].to_string()
}

/// A `CHECK` constraint: a SQL expression over the row's columns that a local `INSERT`
/// or `UPDATE` must not make false (NULL passes, as in SQLite). It is kept as SQL text
/// because only the SQL layer can bind and evaluate it; `schema` never parses SQL.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckDef {
    /// The constraint's name (`CONSTRAINT name CHECK ...`), lower-cased.
    pub name: Option<String>,
    /// The expression, as the SQL parser prints it.
    pub expr_sql: String,
}

/// A foreign key: stored and shown, not enforced (a parent row deleted concurrently on
/// another node cannot be refused after the fact, so a local check would promise what
/// the merged state does not keep).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForeignKeyDef {
    /// The constraint's name, lower-cased.
    pub name: Option<String>,
    /// The referencing columns of this table, lower-cased.
    pub columns: Vec<String>,
    /// The referenced table (it need not exist, as in SQLite), lower-cased.
    pub foreign_table: String,
    /// The referenced columns; empty means the referenced table's primary key.
    pub referred_columns: Vec<String>,
    /// `ON DELETE` action as written (`CASCADE`, `SET NULL`, ...); not carried out.
    pub on_delete: Option<String>,
    /// `ON UPDATE` action as written; not carried out.
    pub on_update: Option<String>,
}

/// What `CREATE TABLE` defines.
///
/// Encoded as packed CBOR (fields by position): new fields go at the end, default when
/// absent (definitions written before them still decode) and are left out when empty (a
/// definition without them encodes byte for byte as before, so digests and the
/// identical-DDL merge are unchanged).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableSchema {
    /// Table name, lower-cased.
    pub name: String,
    /// Columns in definition order.
    pub columns: Vec<ColumnDef>,
    /// Names of the primary-key columns, in key order.
    pub primary_key: Vec<String>,
    /// `CHECK` constraints, column and table level alike, in definition order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckDef>,
    /// Foreign keys, column and table level alike, in definition order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub foreign_keys: Vec<ForeignKeyDef>,
    /// A table declared without a primary key: its first two columns are the hidden
    /// [`ROWID_COLUMN`] and [`ORIGIN_COLUMN`], its key `(rowid, _origin)`, both assigned
    /// by the writer (see docs/design.md § Tables without a primary key).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rowid: bool,
    /// An append-only table: rows are immutable values in a grow-only set, stored in
    /// blocks instead of documents (docs/design.md § Append-only tables and retention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append: Option<AppendOptions>,
}

/// The options of an append-only table, from `CREATE TABLE ... WITH (append_only = true,
/// ...)`. Part of the definition, so every node splits rows into the same buckets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendOptions {
    /// The `TIMESTAMP` or `INTEGER` column rows are bucketed and ranged by; `None`: every
    /// row lies in bucket 0.
    pub time_column: Option<String>,
    /// Width of a bucket in the time column's unit (ms for a `TIMESTAMP`), ≥ 1.
    pub bucket: i64,
    /// How long rows are kept, a whole number of buckets; `None`: forever. Enforced by
    /// each node in whole buckets (`replica/retention.rs`).
    pub retention: Option<i64>,
    /// A disk budget for the table's blocks, ≥ 1 MiB; the oldest buckets go first, the
    /// newest always stays (`replica/retention.rs`).
    pub max_bytes: Option<u64>,
}

/// The bucket width of an append-only table that names none: one hour of a `TIMESTAMP`.
pub const APPEND_BUCKET_DEFAULT: i64 = 3_600_000;
/// The smallest `max_bytes` an append-only table accepts.
pub const APPEND_MAX_BYTES_MIN: u64 = 1 << 20;

/// First character of a column name that SQL name resolution never matches: a dropped
/// column's, in [`TableSchema::sql_names`].
pub const UNREACHABLE_NAME_MARK: char = '\0';

/// The hidden INTEGER identity column of a table without a primary key.
pub const ROWID_COLUMN: &str = "rowid";
/// The hidden column holding the node that inserted a row of a table without a primary key.
pub const ORIGIN_COLUMN: &str = "_origin";
/// How many hidden columns lead a table without a primary key.
pub const ROWID_HIDDEN_COLUMNS: usize = 2;

/// What `CREATE INDEX` defines. Encoded like [`TableSchema`]: fields by position, new
/// ones appended and left out when empty.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IndexSchema {
    /// Index name, lower-cased.
    pub name: String,
    /// Indexed table.
    pub table: String,
    /// Indexed columns, in key order.
    pub columns: Vec<String>,
    /// `CREATE UNIQUE INDEX` or a `UNIQUE` constraint: local writes may not give two rows
    /// one non-NULL value tuple (docs/design.md § Unique indexes).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unique: bool,
    /// The ids of the indexed columns, when one of them differs from the id its name
    /// derives (a column renamed by `ALTER TABLE`); empty otherwise, so a plain index
    /// encodes as before. The catalog resolves an index's columns by id, so an index
    /// follows renames (`catalog::resolve_index`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub column_ids: Vec<String>,
}

/// A definition that cannot be accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// A name is empty, too long, or not an identifier.
    #[error("invalid name {0:?}: names are 1 to {NAME_BYTES_MAX} bytes of letters, digits and '_', not starting with a digit")]
    InvalidName(String),
    /// The table has no columns or too many.
    #[error("table {table} must have 1 to {COLUMNS_MAX} columns")]
    ColumnCount {
        /// The table.
        table: String,
    },
    /// Two columns share a name.
    #[error("column {column} is defined twice in table {table}")]
    DuplicateColumn {
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
    /// A `CHECK` constraint or foreign key is malformed, or there are too many.
    #[error("bad constraint in table {table}: {reason}")]
    BadConstraint {
        /// The table.
        table: String,
        /// What is wrong.
        reason: String,
    },
    /// The primary key or index is empty, too long, or names an unknown column.
    #[error("bad key for {object}: {reason}")]
    BadKey {
        /// The table or index.
        object: String,
        /// What is wrong.
        reason: String,
    },
    /// A default does not fit its column.
    #[error("default of column {column} is {value}, which does not fit type {ty}")]
    BadDefault {
        /// The column.
        column: String,
        /// The default.
        value: String,
        /// The column type.
        ty: ColumnType,
    },
}

/// Checks that `name` is a valid identifier and returns it lower-cased.
pub fn normalize_name(name: &str) -> Result<String, SchemaError> {
    let valid = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if !valid {
        return Err(SchemaError::InvalidName(name.to_string()));
    }
    Ok(name.to_ascii_lowercase())
}

impl TableSchema {
    /// Starts a definition; add columns with [`TableSchema::column`].
    pub fn new(name: &str) -> TableSchema {
        TableSchema {
            name: name.to_ascii_lowercase(),
            columns: Vec::new(),
            primary_key: Vec::new(),
            checks: Vec::new(),
            foreign_keys: Vec::new(),
            rowid: false,
            append: None,
        }
    }

    /// Starts a definition of a table without a primary key: the hidden identity columns
    /// come first, then add columns with [`TableSchema::column`].
    pub fn without_key(name: &str) -> TableSchema {
        let mut schema = TableSchema::new(name)
            .column(ColumnDef::new(ROWID_COLUMN, ColumnType::Integer).not_null())
            .column(ColumnDef::new(ORIGIN_COLUMN, ColumnType::Blob).not_null())
            .primary_key(&[ROWID_COLUMN, ORIGIN_COLUMN]);
        schema.rowid = true;
        schema
    }

    /// How many leading columns are hidden: the identity of a table without a key.
    pub fn hidden_columns(&self) -> usize {
        if self.rowid {
            ROWID_HIDDEN_COLUMNS
        } else {
            0
        }
    }

    /// The columns a user sees (`*`, `INSERT` without a column list, `.schema`): not a
    /// key-less table's hidden identity, not a dropped column.
    pub fn visible_columns(&self) -> impl Iterator<Item = &ColumnDef> + '_ {
        self.visible_positions().map(|i| &self.columns[i])
    }

    /// Positions of [`TableSchema::visible_columns`].
    pub fn visible_positions(&self) -> impl Iterator<Item = usize> + '_ {
        (self.hidden_columns()..self.columns.len()).filter(|&i| !self.columns[i].dropped)
    }

    /// The names SQL reaches the columns by, in position order: a dropped column's name
    /// starts with [`UNREACHABLE_NAME_MARK`], which name resolution never matches (a quoted
    /// identifier could spell it), so nothing names it, and a column of its old name can
    /// be added again.
    pub fn sql_names(&self) -> Vec<String> {
        let unreachable = |c: &ColumnDef| format!("{UNREACHABLE_NAME_MARK}dropped {}", c.id());
        self.columns.iter().map(|c| if c.dropped { unreachable(c) } else { c.name.clone() }).collect()
    }

    /// Adds a column.
    pub fn column(mut self, column: ColumnDef) -> TableSchema {
        self.columns.push(column);
        self
    }

    /// Sets the primary key.
    pub fn primary_key(mut self, columns: &[&str]) -> TableSchema {
        self.primary_key = columns.iter().map(|c| c.to_ascii_lowercase()).collect();
        self
    }

    /// Position of a column by name; a dropped column has none.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| !c.dropped && c.name.eq_ignore_ascii_case(name))
    }

    /// How many leading columns were defined by `CREATE TABLE`: every record holds at
    /// least these; the columns after them were added by `ALTER TABLE`.
    pub fn base_columns(&self) -> usize {
        self.columns.iter().take_while(|c| !c.added).count()
    }

    /// Whether a record of `len` values is one of this table's: it holds every
    /// `CREATE TABLE` column and may leave out added columns at its end.
    pub fn record_len_fits(&self, len: usize) -> bool {
        (self.base_columns()..=self.columns.len()).contains(&len)
    }

    /// Completes a row read from a record: added columns the record leaves out read as
    /// their [`ColumnDef::absent_value`], which is what materializing the document gives.
    pub fn pad(&self, row: &mut Vec<Value>) {
        debug_assert!(self.record_len_fits(row.len()), "a record of {} values in {}", row.len(), self.name);
        row.extend(self.columns[row.len().min(self.columns.len())..].iter().map(ColumnDef::absent_value));
    }

    /// Whether every record and implicit document made under `old` stays valid under this
    /// definition as it is: the same columns (by id, type and default) in the same places
    /// with the same key and append-only options, constraints aside from names, and only
    /// added columns after them.
    /// A rename or an added column keeps this; anything else (a concurrent definition
    /// winning, concurrent adds ordered before a known one) rebuilds the table's rows.
    pub fn extends(&self, old: &TableSchema) -> bool {
        let same_column = |(a, b): (&ColumnDef, &ColumnDef)| {
            a.id() == b.id() && a.ty == b.ty && a.default == b.default && a.added == b.added
        };
        self.columns.len() >= old.columns.len()
            && self.columns.iter().zip(&old.columns).all(same_column)
            && self.columns[old.columns.len()..].iter().all(|c| c.added)
            && self.primary_key_indexes() == old.primary_key_indexes()
            && self.rowid == old.rowid
            && self.append == old.append
            && self.checks == old.checks
            && self.foreign_keys == old.foreign_keys
    }

    /// Whether an `ALTER TABLE` added, renamed or dropped a column.
    pub fn altered(&self) -> bool {
        self.columns.iter().any(|c| c.added || c.dropped || c.stored_id.is_some())
    }

    /// Positions of the primary-key columns.
    pub fn primary_key_indexes(&self) -> Vec<usize> {
        self.primary_key.iter().map(|name| self.column_index(name).expect("validated: key columns exist")).collect()
    }

    /// Validates and normalizes the definition: names, key, defaults. Primary-key columns
    /// become NOT NULL.
    pub fn validate(mut self) -> Result<TableSchema, SchemaError> {
        self.name = normalize_name(&self.name)?;
        if self.columns.is_empty() || self.columns.len() > COLUMNS_MAX {
            return Err(SchemaError::ColumnCount { table: self.name });
        }
        for i in 0..self.columns.len() {
            let name = normalize_name(&self.columns[i].name)?;
            if !self.columns[i].dropped && self.columns[..i].iter().any(|c| !c.dropped && c.name == name) {
                return Err(SchemaError::DuplicateColumn { table: self.name, column: name });
            }
            self.columns[i].name = name;
            self.validate_default(i)?;
        }
        self.validate_ids()?;
        if self.append.is_some() {
            return self.validate_append();
        }
        self.primary_key = validate_key(&self.name, &self.primary_key, &self.columns)?;
        for i in self.primary_key_indexes() {
            if self.columns[i].ty == ColumnType::Counter {
                return Err(SchemaError::BadKey {
                    object: self.name,
                    reason: "a COUNTER column cannot be part of the primary key".into(),
                });
            }
            self.columns[i].not_null = true;
        }
        self.validate_rowid()?;
        self.validate_checks()?;
        self.validate_foreign_keys()?;
        Ok(self)
    }

    /// An append-only table: rows are identified by the envelope that carried them, so a
    /// declared key is a deduplication key (its columns become `NOT NULL`), no hidden
    /// identity, no COUNTER (rows are never updated), and a `NOT NULL` time column of a
    /// type that orders as time.
    fn validate_append(mut self) -> Result<TableSchema, SchemaError> {
        let options = self.append.clone().expect("called for append-only tables");
        if !self.primary_key.is_empty() {
            self.primary_key = validate_key(&self.name, &self.primary_key, &self.columns)?;
            for i in self.primary_key_indexes() {
                self.columns[i].not_null = true;
            }
        }
        let bad = |reason: String| SchemaError::BadKey { object: self.name.clone(), reason };
        if self.rowid {
            return Err(bad("an append-only table has no hidden row identity".into()));
        }
        if let Some(c) = self.columns.iter().find(|c| c.ty == ColumnType::Counter) {
            return Err(bad(format!(
                "column {}: an append-only table's rows are never updated, so no COUNTER",
                c.name
            )));
        }
        if options.bucket < 1 {
            return Err(bad("an append-only table's bucket is at least 1".into()));
        }
        if options.retention.is_some_and(|r| r < options.bucket || r % options.bucket != 0) {
            return Err(bad("retention is a whole number (at least 1) of buckets".into()));
        }
        if options.max_bytes.is_some_and(|b| b < APPEND_MAX_BYTES_MIN) {
            return Err(bad(format!("max_bytes is at least {APPEND_MAX_BYTES_MIN}")));
        }
        match &options.time_column {
            Some(name) => {
                let name = normalize_name(name)?;
                let Some(i) = self.column_index(&name) else {
                    return Err(bad(format!("time_column {name} is not a column")));
                };
                let column = &mut self.columns[i];
                if !matches!(column.ty, ColumnType::Timestamp | ColumnType::Integer) {
                    return Err(bad(format!("time_column {name} is {}, not TIMESTAMP or INTEGER", column.ty)));
                }
                column.not_null = true;
                self.append.as_mut().expect("checked").time_column = Some(name);
            }
            None if options.retention.is_some() || options.max_bytes.is_some() => {
                return Err(bad("retention and max_bytes need a time_column".into()));
            }
            None => {}
        }
        self.validate_checks()?;
        self.validate_foreign_keys()?;
        Ok(self)
    }

    /// The position of an append-only table's time column.
    pub fn time_column_index(&self) -> Option<usize> {
        self.column_index(self.append.as_ref()?.time_column.as_deref()?)
    }

    /// A table without a key has exactly the identity that [`TableSchema::without_key`]
    /// gives it, and no visible column takes its names.
    fn validate_rowid(&self) -> Result<(), SchemaError> {
        let hidden = [(ROWID_COLUMN, ColumnType::Integer), (ORIGIN_COLUMN, ColumnType::Blob)];
        if !self.rowid {
            return Ok(());
        }
        let bad = |reason: &str| SchemaError::BadKey { object: self.name.clone(), reason: reason.to_string() };
        let shaped = self.columns.len() > ROWID_HIDDEN_COLUMNS
            && self
                .columns
                .iter()
                .zip(hidden)
                .all(|(c, (name, ty))| c.name == name && c.ty == ty && c.default.is_none())
            && self.primary_key == [ROWID_COLUMN, ORIGIN_COLUMN];
        if !shaped {
            return Err(bad("a table without a primary key starts with rowid INTEGER, _origin BLOB, its key"));
        }
        Ok(())
    }

    /// Stored ids are well formed, ids are distinct, and added columns follow every
    /// `CREATE TABLE` column (records are positional over this order).
    fn validate_ids(&self) -> Result<(), SchemaError> {
        let bad = |reason: String| SchemaError::BadKey { object: self.name.clone(), reason };
        if let Some(c) = self.columns.iter().find(|c| c.stored_id.as_deref().is_some_and(|id| !is_column_id(id))) {
            return Err(bad(format!("column {} has a malformed id", c.name)));
        }
        let ids: std::collections::BTreeSet<String> = self.columns.iter().map(ColumnDef::id).collect();
        if ids.len() != self.columns.len() {
            return Err(bad("two columns share an id".into()));
        }
        if self.columns[self.base_columns()..].iter().any(|c| !c.added) {
            return Err(bad("a column added by ALTER TABLE precedes one of CREATE TABLE".into()));
        }
        Ok(())
    }

    fn bad_constraint(&self, reason: String) -> SchemaError {
        SchemaError::BadConstraint { table: self.name.clone(), reason }
    }

    /// Names and sizes only: whether the SQL binds is the SQL layer's question.
    fn validate_checks(&mut self) -> Result<(), SchemaError> {
        if self.checks.len() > CONSTRAINTS_MAX {
            return Err(self.bad_constraint(format!("more than {CONSTRAINTS_MAX} CHECK constraints")));
        }
        for i in 0..self.checks.len() {
            let len = self.checks[i].expr_sql.trim().len();
            if len == 0 || len > CHECK_SQL_BYTES_MAX {
                return Err(self.bad_constraint(format!("a CHECK expression is 1 to {CHECK_SQL_BYTES_MAX} bytes")));
            }
            self.checks[i].name = self.checks[i].name.as_deref().map(normalize_name).transpose()?;
        }
        Ok(())
    }

    fn validate_foreign_keys(&mut self) -> Result<(), SchemaError> {
        if self.foreign_keys.len() > CONSTRAINTS_MAX {
            return Err(self.bad_constraint(format!("more than {CONSTRAINTS_MAX} foreign keys")));
        }
        let mut keys = std::mem::take(&mut self.foreign_keys);
        for fk in &mut keys {
            self.validate_foreign_key(fk)?;
        }
        self.foreign_keys = keys;
        Ok(())
    }

    fn validate_foreign_key(&self, fk: &mut ForeignKeyDef) -> Result<(), SchemaError> {
        fk.name = fk.name.as_deref().map(normalize_name).transpose()?;
        fk.columns = validate_key(&self.name, &fk.columns, &self.columns)?;
        fk.foreign_table = normalize_name(&fk.foreign_table)?;
        fk.referred_columns = fk.referred_columns.iter().map(|c| normalize_name(c)).collect::<Result<_, _>>()?;
        if !fk.referred_columns.is_empty() && fk.referred_columns.len() != fk.columns.len() {
            return Err(self.bad_constraint(format!(
                "foreign key ({}) names {} referenced columns",
                fk.columns.join(", "),
                fk.referred_columns.len()
            )));
        }
        for action in fk.on_delete.iter().chain(&fk.on_update) {
            if !REFERENTIAL_ACTIONS.contains(&action.as_str()) {
                return Err(self.bad_constraint(format!("unknown referential action {action}")));
            }
        }
        Ok(())
    }

    fn validate_default(&mut self, i: usize) -> Result<(), SchemaError> {
        let column = &mut self.columns[i];
        let Some(default) = column.default.take() else { return Ok(()) };
        let shown = default.to_string();
        match default.coerce(column.ty) {
            Some(value) if !(value.is_null() && column.not_null) => {
                column.default = Some(value);
                Ok(())
            }
            _ => Err(SchemaError::BadDefault { column: column.name.clone(), value: shown, ty: column.ty }),
        }
    }
}

impl IndexSchema {
    /// Defines an index.
    pub fn new(name: &str, table: &str, columns: &[&str]) -> IndexSchema {
        IndexSchema {
            name: name.to_ascii_lowercase(),
            table: table.to_ascii_lowercase(),
            columns: columns.iter().map(|c| c.to_ascii_lowercase()).collect(),
            unique: false,
            column_ids: Vec::new(),
        }
    }

    /// Makes the index unique.
    pub fn unique(mut self) -> IndexSchema {
        self.unique = true;
        self
    }

    /// Validates the index against the definition of its table. A unique index may not
    /// cover a `COUNTER` column: merged increments add up, so no value of it is ever held.
    pub fn validate(mut self, table: &TableSchema) -> Result<IndexSchema, SchemaError> {
        self.name = normalize_name(&self.name)?;
        self.table = normalize_name(&self.table)?;
        self.columns = validate_key(&self.name, &self.columns, &table.columns)?;
        let counter = self
            .columns
            .iter()
            .find(|c| table.column_index(c).is_some_and(|i| table.columns[i].ty == ColumnType::Counter));
        if let (true, Some(counter)) = (self.unique, counter) {
            return Err(SchemaError::BadKey {
                object: self.name.clone(),
                reason: format!("a unique index cannot cover the COUNTER column {counter}"),
            });
        }
        // On a table an ALTER has touched, a name no longer says which column it was
        // created on (a column renamed away, one added under the old name), so the ids
        // are stored; on any other table they follow from the names, and a plain index
        // encodes as before.
        self.column_ids = match table.altered() {
            true => {
                self.columns.iter().map(|c| table.columns[table.column_index(c).expect("validated")].id()).collect()
            }
            false => Vec::new(),
        };
        Ok(self)
    }

    /// The ids of the indexed columns in `table`, by [`IndexSchema::column_id_at`]: what
    /// the index is bound to (`None` for a column not found).
    pub fn bound_ids(&self, table: &TableSchema) -> Vec<Option<String>> {
        (0..self.columns.len()).map(|i| self.column_id_at(i, table)).collect()
    }

    /// The id of the `i`-th indexed column: stored, or, for an index made on a table no
    /// `ALTER` had touched, the id of the `CREATE TABLE` column of that name (ids never
    /// change, so a column renamed since is still found by the id its old name derives;
    /// an added column never is: it may have taken a renamed column's old name).
    pub fn column_id_at(&self, i: usize, table: &TableSchema) -> Option<String> {
        if let Some(id) = self.column_ids.get(i) {
            return Some(id.clone());
        }
        let name = &self.columns[i];
        table.columns.iter().find(|c| !c.added && c.id() == column_id(name, c.ty)).map(ColumnDef::id)
    }
}

fn validate_key(object: &str, key: &[String], columns: &[ColumnDef]) -> Result<Vec<String>, SchemaError> {
    let bad = |reason: String| SchemaError::BadKey { object: object.to_string(), reason };
    if key.is_empty() || key.len() > KEY_COLUMNS_MAX {
        return Err(bad(format!("a key has 1 to {KEY_COLUMNS_MAX} columns")));
    }
    let mut normalized: Vec<String> = Vec::with_capacity(key.len());
    for name in key {
        let name = name.to_ascii_lowercase();
        if !columns.iter().any(|c| !c.dropped && c.name == name) {
            return Err(bad(format!("no column named {name}")));
        }
        if normalized.contains(&name) {
            return Err(bad(format!("column {name} appears twice")));
        }
        normalized.push(name);
    }
    Ok(normalized)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sensors() -> TableSchema {
        TableSchema::new("Sensors")
            .column(ColumnDef::new("id", ColumnType::Integer))
            .column(ColumnDef::new("name", ColumnType::Text).default("?"))
            .primary_key(&["ID"])
    }

    #[test]
    fn validation_normalizes_names_and_key_columns() {
        let schema = sensors().validate().unwrap();
        assert_eq!(schema.name, "sensors");
        assert_eq!(schema.primary_key, vec!["id"]);
        assert!(schema.columns[0].not_null);
    }

    #[test]
    fn validation_rejects_bad_definitions() {
        let dup = sensors().column(ColumnDef::new("NAME", ColumnType::Text));
        assert!(matches!(dup.validate(), Err(SchemaError::DuplicateColumn { .. })));
        let no_key = sensors().primary_key(&[]);
        assert!(matches!(no_key.validate(), Err(SchemaError::BadKey { .. })));
        let bad_default = sensors().column(ColumnDef::new("n", ColumnType::Integer).default("x"));
        assert!(matches!(bad_default.validate(), Err(SchemaError::BadDefault { .. })));
        assert!(normalize_name("1abc").is_err());
        assert!(normalize_name("a-b").is_err());
    }

    #[test]
    fn a_key_less_definition_must_have_exactly_the_hidden_identity() {
        let good = TableSchema::without_key("Log").column(ColumnDef::new("msg", ColumnType::Text));
        let schema = good.clone().validate().unwrap();
        assert_eq!(schema.hidden_columns(), 2);
        assert_eq!(schema.visible_columns().count(), 1);
        assert_eq!(schema.primary_key, [ROWID_COLUMN, ORIGIN_COLUMN]);
        // Only the identity: no visible column.
        assert!(matches!(TableSchema::without_key("log").validate(), Err(SchemaError::BadKey { .. })));
        // A peer's definition that claims a rowid but is keyed or typed otherwise.
        let mut keyed = good.clone().primary_key(&["msg"]);
        keyed.rowid = true;
        assert!(matches!(keyed.validate(), Err(SchemaError::BadKey { .. })));
        let mut retyped = good.clone();
        retyped.columns[1].ty = ColumnType::Text;
        assert!(matches!(retyped.validate(), Err(SchemaError::BadKey { .. })));
        let mut defaulted = good.clone();
        defaulted.columns[0].default = Some(Value::Integer(1));
        assert!(defaulted.validate().is_err());
        // A visible column cannot take the identity's names.
        let clash = good.column(ColumnDef::new("ROWID", ColumnType::Integer));
        assert!(matches!(clash.validate(), Err(SchemaError::DuplicateColumn { .. })));
        // Without the flag, the names are ordinary.
        let plain = TableSchema::new("t").column(ColumnDef::new("rowid", ColumnType::Text)).primary_key(&["rowid"]);
        assert_eq!(plain.validate().unwrap().hidden_columns(), 0);
    }

    #[test]
    fn column_ids_depend_on_name_and_type_only() {
        let a = ColumnDef::new("t", ColumnType::Integer);
        assert_eq!(a.id(), ColumnDef::new("T", ColumnType::Integer).not_null().id());
        assert_ne!(a.id(), ColumnDef::new("t", ColumnType::Text).id());
    }
}
