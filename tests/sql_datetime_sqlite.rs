//! Differential test of the date functions: every function × many time values × many
//! modifiers (and seeded random chains of modifiers) evaluated by edgestore's SQL engine
//! and by SQLite (rusqlite, bundled SQLite 3.50); the results must be identical: the same
//! type, the same text, reals bit for bit.
//!
//! SQLite's `'now'` is its clock, which the test cannot set; edgestore's is the statement
//! time. So `'now'` is compared separately: edgestore's `f('now', mods...)` with a fixed
//! `now_ms` against SQLite's `f('<that julian day>', mods...)`, which date.c treats alike
//! except for the three modifiers that ask whether the value was a raw number
//! (`unixepoch`, `julianday`, `auto`), left out there.
//!
//! The seed of the random chains is printed; `EDGESTORE_SEED=<n>` replays a run.

use edgestore::sql;
use edgestore::{NodeId, Replica, Value};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod common;
use common::sqlite::{compare, same, sqlite_value, Outcome};

const SEED_DEFAULT: u64 = 0x6461_7465_2e63;
/// Expressions per `SELECT`: fewer statements, same coverage.
const EXPRESSIONS_PER_STATEMENT: usize = 100;
/// Random chains of two to four modifiers, per function.
const CHAINS_PER_FUNCTION: usize = 1500;
/// Calls with random text arguments (near misses of every form), after the generated ones.
const RANDOM_CALLS: usize = 30_000;
/// The statement time of the `'now'` cases: 2023-11-14 06:00:00 UTC, a julian day with an
/// exact binary fraction (2460262.75), so that SQLite reads its text back to the same ms.
const NOW_MS: i64 = 1_699_941_600_000;
const NOW_JD_TEXT: &str = "'2460262.75'";

const TIME_VALUES: &[&str] = &[
    "'2024-02-29'",
    "'2023-02-29'",
    "'2023-02-31'",
    "'2024-01-31'",
    "'2024-03-31'",
    "'2000-01-01 00:00:00'",
    "'1970-01-01'",
    "'2024-03-10 12:34:56.789'",
    "'2024-03-10 12:34:56.7891234'",
    "'2024-03-10 23:59:59.9999'",
    "'2024-03-10T12:34:56Z'",
    "'2024-03-10t12:34:56'",
    "'2024-03-10 12:34:56+05:30'",
    "'2024-03-10 12:34-14:00'",
    "'2024-03-10 12:34:56 +01:00 '",
    "'2024-12-31 23:59:59.999-02:00'",
    "'2024-01-01 12:00 z'",
    "'2024-01-01  12:00'",
    "'2024-01-01T'",
    "'2024-01-01 '",
    "'2024-01-01 24:00'",
    "'2024-01-01 23:60'",
    "'2024-01-01 12:00:60'",
    "'2024-01-01 12:00:00.'",
    "'2024-01-01 12:00+15:00'",
    "'0000-01-01'",
    "'9999-12-31 23:59:59.999'",
    "'-0044-03-15 12:00'",
    "'-4713-11-24 12:00'",
    "'-4713-11-24 11:59'",
    "'12:30'",
    "'12:30:45.5'",
    "'24:00:00'",
    "'7:30'",
    "'2024-13-01'",
    "'2024-00-10'",
    "'2024-1-1'",
    "' 2024-01-01'",
    "'20240101'",
    "'abc'",
    "''",
    "0",
    "1",
    "-1",
    "2440587.5",
    "2460000.25",
    "5373484.4",
    "5373484.5",
    "1700000000",
    "1700000000.5",
    "1700000000.1234",
    "253402300799",
    "253402300800",
    "-210866760000",
    "-210866760001",
    "86400",
    "1e10",
    "'2460000.5'",
    "' 2460000.5 '",
    "'1700000000'",
    "'1e3'",
    "'5.'",
    "'.5'",
    "'1e'",
    "NULL",
    "x'323032342d30312d3031'",
];

const MODIFIERS: &[&str] = &[
    "'+1 day'",
    "'-1 day'",
    "'+1.5 days'",
    "'+36 hours'",
    "'-90 minutes'",
    "'+3600 seconds'",
    "'+0.5 seconds'",
    "'-0.0001 seconds'",
    "'+86399.9995 seconds'",
    "'+7.5e2 minutes'",
    "'+1 second'",
    "'+1 minute'",
    "'+1 hour'",
    "'+1 month'",
    "'-1 month'",
    "'+13 months'",
    "'-25 months'",
    "'+1.5 months'",
    "'+1 year'",
    "'-1 years'",
    "'+0.25 years'",
    "'+10000 years'",
    "'+1000000 days'",
    "'-5373485 days'",
    "'+5373484 days'",
    "'1e300 days'",
    "'+176545 months'",
    "'+176546 months'",
    "' +1 day'",
    "'+1 DAY'",
    "'+1 Days'",
    "'+1 dayss'",
    "'+1day'",
    "'+1 days '",
    "'+ 1 day'",
    "'1 day'",
    "'+1 fortnight'",
    "'+01:30'",
    "'-01:30'",
    "'+01:30:15.5'",
    "'12:00'",
    "'-23:59:59.999'",
    "'+1:30'",
    "'+24:00'",
    "'+0001-02-03'",
    "'-0001-02-03'",
    "'+0000-00-01 12:00'",
    "'+0000-11-30 01:02:03'",
    "'+0000-11-30 1:02'",
    "'+00001-01-01'",
    "'-0000-12-00'",
    "'+0000-00-31'",
    "'0001-01-01'",
    "'start of day'",
    "'start of month'",
    "'start of year'",
    "'start of week'",
    "'START OF MONTH'",
    "'start of  day'",
    "'weekday 0'",
    "'weekday 3'",
    "'weekday 6'",
    "'weekday 7'",
    "'weekday 1.5'",
    "'weekday -1'",
    "'weekday  2'",
    "'WEEKDAY 4'",
    "'unixepoch'",
    "'UNIXEPOCH'",
    "'julianday'",
    "'auto'",
    "'subsec'",
    "'subsecond'",
    "'ceiling'",
    "'floor'",
    "'bogus'",
    "''",
    "NULL",
    "5",
    "1.5",
];

/// The modifiers random chains draw from: valid ones mostly, so that chains give values.
const CHAIN_MODIFIERS: &[&str] = &[
    "'+1 day'",
    "'-1 day'",
    "'+1.5 days'",
    "'+36 hours'",
    "'-90 minutes'",
    "'+0.5 seconds'",
    "'+86399.9995 seconds'",
    "'+1 month'",
    "'-1 month'",
    "'+13 months'",
    "'+1.5 months'",
    "'+1 year'",
    "'-1 years'",
    "'+0.25 years'",
    "'+01:30'",
    "'-23:59:59.999'",
    "'+0001-02-03'",
    "'-0001-02-03'",
    "'+0000-11-30 01:02:03'",
    "'start of day'",
    "'start of month'",
    "'start of year'",
    "'weekday 0'",
    "'weekday 3'",
    "'unixepoch'",
    "'auto'",
    "'julianday'",
    "'subsec'",
    "'ceiling'",
    "'floor'",
];

/// Modifiers that depend on whether the value was a raw number: not comparable for 'now'.
const RAW_NUMBER_MODIFIERS: &[&str] = &["'unixepoch'", "'UNIXEPOCH'", "'julianday'", "'auto'"];

/// Every conversion at once, and the odd formats.
const FORMATS: &[&str] = &[
    "'%Y|%m|%d|%H|%M|%S|%f|%j|%J|%s|%u|%w|%U|%V|%W|%G|%g|%I|%l|%p|%P|%k|%e|%F|%R|%T|%%'",
    "'%Y-%m-%dT%H:%M:%fZ'",
    "'%J'",
    "'%s'",
];
const ODD_FORMATS: &[&str] = &["'%q'", "'abc'", "'%'", "''", "'100%%'", "NULL", "'%Y%'", "'é%Yé'"];

/// The function calls over `value` and `modifiers`, one per function.
fn calls(value: &str, modifiers: &[&str]) -> Vec<String> {
    let args: String = std::iter::once(value).chain(modifiers.iter().copied()).collect::<Vec<_>>().join(", ");
    let mut all: Vec<String> =
        ["date", "time", "datetime", "julianday", "unixepoch"].iter().map(|f| format!("{f}({args})")).collect();
    all.extend(FORMATS.iter().map(|fmt| format!("strftime({fmt}, {args})")));
    all
}

/// The expressions compared: functions × values × (no modifier, each modifier), random
/// modifier chains, odd formats, `timediff` over pairs of values.
fn expressions(rng: &mut ChaCha8Rng) -> Vec<String> {
    let mut all = Vec::new();
    for value in TIME_VALUES {
        all.extend(calls(value, &[]));
        for m in MODIFIERS {
            all.extend(calls(value, &[m]));
        }
        for fmt in ODD_FORMATS {
            all.push(format!("strftime({fmt}, {value})"));
        }
        for other in TIME_VALUES {
            all.push(format!("timediff({value}, {other})"));
        }
    }
    for _ in 0..CHAINS_PER_FUNCTION {
        let value = TIME_VALUES[rng.random_range(0..TIME_VALUES.len())];
        let n = rng.random_range(2..=4);
        let chain: Vec<&str> = (0..n).map(|_| CHAIN_MODIFIERS[rng.random_range(0..CHAIN_MODIFIERS.len())]).collect();
        all.extend(calls(value, &chain));
    }
    all.push("strftime()".into());
    all
}

/// The `'now'` pairs: (edgestore expression, the SQLite expression that means the same).
fn now_expressions() -> Vec<(String, String)> {
    let mods = MODIFIERS.iter().copied().filter(|m| !RAW_NUMBER_MODIFIERS.contains(m));
    let mut all = Vec::new();
    for m in std::iter::once(None).chain(mods.map(Some)) {
        let ours = calls("'now'", m.as_slice());
        let theirs = calls(NOW_JD_TEXT, m.as_slice());
        all.extend(ours.into_iter().zip(theirs));
    }
    for f in ["date", "time", "datetime", "julianday", "unixepoch"] {
        all.push((format!("{f}()"), format!("{f}({NOW_JD_TEXT})")));
    }
    all.push(("current_timestamp".into(), format!("datetime({NOW_JD_TEXT})")));
    all.push(("current_date".into(), format!("date({NOW_JD_TEXT})")));
    all.push(("current_time".into(), format!("time({NOW_JD_TEXT})")));
    all.push(("datetime('subsec')".into(), format!("datetime({NOW_JD_TEXT}, 'subsec')")));
    all
}

/// Pieces that random time values and modifiers are made of: near misses of every form.
const FRAGMENTS: &[&str] = &[
    "2024",
    "1970",
    "0000",
    "9999",
    "-",
    "02",
    "29",
    "31",
    "13",
    "00",
    " ",
    "  ",
    "T",
    ":",
    "12",
    "24",
    "59",
    "60",
    ".",
    "5",
    "999",
    "Z",
    "+",
    "05:30",
    "-14:00",
    "1",
    "0",
    "7",
    "e",
    "3",
    " days",
    " day",
    " months",
    " years",
    " hours",
    " minutes",
    " seconds",
    "start of ",
    "month",
    "year",
    "day",
    "weekday ",
    "unixepoch",
    "auto",
    "julianday",
    "floor",
    "ceiling",
    "subsec",
    "2460000",
    "1700000000",
    "\t",
];

/// Random texts: half the time one of the `known` SQL text literals (unquoted), else 1 to
/// `pieces_max` fragments.
fn random_text(rng: &mut ChaCha8Rng, known: &[&str], pieces_max: usize) -> String {
    let literal = known[rng.random_range(0..known.len())];
    if rng.random_bool(0.5) && literal.starts_with('\'') {
        return literal.trim_matches('\'').to_string();
    }
    let n = rng.random_range(1..=pieces_max);
    (0..n).map(|_| FRAGMENTS[rng.random_range(0..FRAGMENTS.len())]).collect()
}

/// Random (time value, three modifiers, format) calls, bound as parameters, through one
/// prepared statement in each engine. 'now' and its spelling 'subsec' as a time value are
/// left out: SQLite's clock is not the statement time.
fn compare_random(replica: &mut Replica, conn: &rusqlite::Connection, rng: &mut ChaCha8Rng, count: usize) -> Outcome {
    let select =
        "SELECT date(?1, ?2, ?3, ?4), time(?1, ?2, ?3, ?4), datetime(?1, ?2, ?3, ?4), julianday(?1, ?2, ?3, ?4), \
                  unixepoch(?1, ?2, ?3, ?4), strftime(?5, ?1, ?2, ?3, ?4)";
    let ours = sql::prepare(select).expect("prepare");
    let mut theirs = conn.prepare(select).expect("sqlite prepare");
    let formats = ["%Y-%m-%d %H:%M:%f", "%J %s", "%j %U %V %W %G %g %u %w", "%I %l %p %P %k %e %R %T"];
    let mut outcome = Outcome::default();
    while outcome.compared < count {
        let value = random_text(rng, TIME_VALUES, 6);
        if ["now", "subsec", "subsecond"].iter().any(|n| value.eq_ignore_ascii_case(n)) {
            continue;
        }
        let mut texts = vec![value];
        texts.extend((0..3).map(|_| random_text(rng, CHAIN_MODIFIERS, 4)));
        texts.push(formats[rng.random_range(0..formats.len())].to_string());
        let mut params: Vec<Value> = texts.iter().map(|t| Value::from(t.as_str())).collect();
        // Now and then a blob of any bytes (NUL and invalid UTF-8 too): C reads it as text
        // up to its first NUL.
        if rng.random_bool(0.05) {
            let slot = rng.random_range(0..params.len());
            let len = rng.random_range(0..24);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if rng.random_bool(0.5) {
                bytes.splice(0..0, texts[slot].bytes());
            }
            params[slot] = Value::Blob(bytes);
        }
        let sqlite_params: Vec<rusqlite::types::Value> = params
            .iter()
            .map(|p| match p {
                Value::Blob(b) => rusqlite::types::Value::Blob(b.clone()),
                Value::Text(t) => rusqlite::types::Value::Text(t.clone()),
                other => panic!("parameter {other:?}"),
            })
            .collect();
        let a = ours.execute(replica, &params, NOW_MS).and_then(|r| r.collect_rows());
        let a = a.unwrap_or_else(|e| panic!("edgestore: {e}\n{params:?}")).remove(0);
        let b: Vec<Value> = theirs
            .query_row(rusqlite::params_from_iter(sqlite_params.iter()), |row| {
                (0..6).map(|i| row.get_ref(i).map(sqlite_value)).collect()
            })
            .unwrap_or_else(|e| panic!("sqlite: {e}\n{params:?}"));
        for (i, (a, b)) in a.iter().zip(&b).enumerate() {
            outcome.compared += 1;
            outcome.values += usize::from(!b.is_null());
            if !same(a, b) {
                outcome.mismatches.push(format!("function {i} of {params:?}: edgestore {a:?}, sqlite {b:?}"));
            }
        }
    }
    outcome
}

#[test]
fn date_functions_match_sqlite() {
    let seed = std::env::var("EDGESTORE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(SEED_DEFAULT);
    println!("seed {seed} (EDGESTORE_SEED={seed} replays it)");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replica = Replica::open(dir.path().join("dt.redb"), NodeId::from_public_key(b"datetime")).expect("open");
    let conn = rusqlite::Connection::open_in_memory().expect("sqlite");
    let same_text: Vec<(String, String)> = expressions(&mut rng).into_iter().map(|e| (e.clone(), e)).collect();
    let plain = compare(&mut replica, &conn, &same_text, EXPRESSIONS_PER_STATEMENT, NOW_MS);
    let now = compare(&mut replica, &conn, &now_expressions(), EXPRESSIONS_PER_STATEMENT, NOW_MS);
    let random = compare_random(&mut replica, &conn, &mut rng, RANDOM_CALLS);
    let total = plain.compared + now.compared + random.compared;
    let (generated, values) = (plain.compared + now.compared, plain.values + now.values);
    let mut mismatches = plain.mismatches;
    mismatches.extend(now.mismatches);
    mismatches.extend(random.mismatches);
    println!(
        "{total} expressions compared with SQLite ({} with 'now', {} of random text, {} of those not NULL); {} are not NULL; {} differ",
        now.compared,
        random.compared,
        random.values,
        values + random.values,
        mismatches.len()
    );
    assert!(total > 20_000, "the generated set shrank: {total}");
    // Many inputs are bad on purpose (NULL in both), but most chains must give values, or
    // the comparison says little.
    assert!(values * 3 > generated, "only {values} of {generated} generated results are not NULL");
    // Random text is mostly no time value (NULL in both): it is there to find disagreement
    // and panics on near misses, but some of it must still be valid.
    assert!(random.values * 50 > random.compared, "only {} random results are not NULL", random.values);
    assert!(
        mismatches.is_empty(),
        "{} of {total} differ:\n{}",
        mismatches.len(),
        mismatches[..mismatches.len().min(40)].join("\n")
    );
}
