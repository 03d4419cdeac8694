//! `printf(format, ...)` (alias `format`), rendered as SQLite 3.50's `sqlite3_str_vappendf`
//! renders it for the SQL function: the flags `-+ #!0,`, a width and a precision (digits or
//! `*`, taken from the arguments), the length modifiers `l`/`ll` (ignored), and the
//! conversions `d i u x X o p r c s z q Q w f e E g G %` and `n` (writes nothing; `p` is
//! upper-case hex, `r` an ordinal: `1st`). An unknown conversion ends the output there, as
//! in SQLite. Missing arguments are 0, 0.0 or NULL.
//!
//! Numbers are formatted from their decimal digits as SQLite's `sqlite3FpDecode` produces
//! them: at most 16 significant digits (26 with `!`), rounded half up at the precision.
//! The format is read as bytes up to its first NUL, as C reads it; widths and precisions
//! count bytes unless `!` is given (then characters). The output is bounded by the
//! statement's memory budget before it is built.

use super::func::text_len;
use super::limits::check_result_bytes;
use super::realfmt::{real, Spec, FP_PRECISION_LIMIT};
use super::value;
use super::SqlError;
use crate::types::Value;

/// `printf(format, args...)`: NULL when the format is NULL.
pub(crate) fn printf(args: &[Value]) -> Result<Value, SqlError> {
    let Some(format) = args.first().and_then(value::to_text) else { return Ok(Value::Null) };
    let format = format.as_bytes();
    let format = &format[..format.iter().position(|b| *b == 0).unwrap_or(format.len())];
    let mut out = Output::default();
    let mut args = Args { values: &args[1..], used: 0 };
    render(format, &mut args, &mut out)?;
    if !out.appended {
        return Ok(Value::Null);
    }
    Ok(Value::Text(String::from_utf8_lossy(&out.bytes).into_owned()))
}

/// The rendered bytes, grown only after the statement's budget allows it.
#[derive(Default)]
struct Output {
    bytes: Vec<u8>,
    /// Whether anything was appended, even nothing: SQLite's result is NULL when no
    /// append happened at all (`printf('')`, `printf('%y')`), and text otherwise.
    appended: bool,
}

impl Output {
    fn reserve(&mut self, more: usize) -> Result<(), SqlError> {
        self.appended = true;
        check_result_bytes(self.bytes.len().saturating_add(more))?;
        self.bytes.reserve(more);
        Ok(())
    }

    fn push(&mut self, bytes: &[u8]) -> Result<(), SqlError> {
        self.reserve(bytes.len())?;
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }

    fn pad(&mut self, count: usize, byte: u8) -> Result<(), SqlError> {
        self.reserve(count)?;
        self.bytes.resize(self.bytes.len() + count, byte);
        Ok(())
    }
}

/// The arguments after the format, consumed in order.
struct Args<'a> {
    values: &'a [Value],
    used: usize,
}

impl Args<'_> {
    fn next(&mut self) -> Option<&Value> {
        let v = self.values.get(self.used);
        self.used += usize::from(v.is_some());
        v
    }

    /// `sqlite3_value_int64`: missing and NULL are 0, reals truncate (saturating), text
    /// reads its integer prefix.
    fn int(&mut self) -> i64 {
        self.next().map_or(0, value::int_value)
    }

    /// `sqlite3_value_double`: missing and NULL are 0.0.
    fn real(&mut self) -> f64 {
        self.next().and_then(value::to_num).map_or(0.0, value::num_f64)
    }

    /// `sqlite3_value_text`: missing and NULL are `None`.
    fn text(&mut self) -> Result<Option<Vec<u8>>, SqlError> {
        let Some(v) = self.next() else { return Ok(None) };
        check_result_bytes(text_len(v))?;
        // C reads the text up to its first NUL.
        Ok(value::to_text(v).map(|t| {
            let bytes = t.into_bytes();
            let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
            bytes[..end].to_vec()
        }))
    }
}

fn render(format: &[u8], args: &mut Args<'_>, out: &mut Output) -> Result<(), SqlError> {
    let mut i = 0;
    while i < format.len() {
        let start = i;
        while i < format.len() && format[i] != b'%' {
            i += 1;
        }
        if i > start {
            out.push(&format[start..i])?;
        }
        if i == format.len() {
            return Ok(());
        }
        i += 1;
        let Some(&first) = format.get(i) else {
            return out.push(b"%"); // A lone '%' at the end is written as is.
        };
        let (spec, conversion, next) = parse_spec(format, i, first, args);
        i = next + 1;
        let Some(conversion) = conversion else { return Ok(()) };
        if !convert(conversion, spec, args, out)? {
            return Ok(()); // An unknown conversion ends the output, as in SQLite.
        }
    }
    Ok(())
}

/// Reads the flags, width, precision and length modifiers starting at `format[i]`;
/// returns them, the conversion byte (`None` at the end of the format) and its position.
fn parse_spec(format: &[u8], mut i: usize, mut c: u8, args: &mut Args<'_>) -> (Spec, Option<u8>, usize) {
    let mut spec = Spec::default();
    let at = |i: usize| format.get(i).copied();
    loop {
        match c {
            b'-' => spec.left = true,
            b'+' => spec.sign = Some(b'+'),
            b' ' => spec.sign = Some(b' '),
            b'#' => spec.alternate = true,
            b'!' => spec.alt2 = true,
            b'0' => spec.zero = true,
            b',' => spec.thousands = true,
            b'l' => {
                i += 1;
                if at(i) == Some(b'l') {
                    i += 1;
                }
                return (spec, at(i), i);
            }
            b'1'..=b'9' => {
                let mut width: u64 = 0;
                while let Some(d @ b'0'..=b'9') = at(i) {
                    width = (width * 10 + u64::from(d - b'0')) & 0xffff_ffff;
                    i += 1;
                }
                spec.width = (width & 0x7fff_ffff) as usize;
                match at(i) {
                    Some(b'.') | Some(b'l') => i -= 1,
                    other => return (spec, other, i),
                }
            }
            b'*' => {
                // C's `(int)` of the 64-bit argument keeps its low 32 bits.
                let width = i64::from(args.int() as i32);
                if width < 0 {
                    spec.left = true;
                }
                spec.width = if width >= -i64::from(i32::MAX) { width.unsigned_abs() as usize } else { 0 };
                if !matches!(at(i + 1), Some(b'.') | Some(b'l')) {
                    i += 1;
                    return (spec, at(i), i);
                }
            }
            b'.' => {
                i += 1;
                let precision = if at(i) == Some(b'*') {
                    i += 1;
                    // A negative precision counts as its magnitude, as in SQLite.
                    let p = i64::from(args.int() as i32);
                    (p >= -i64::from(i32::MAX)).then_some(p.unsigned_abs() as usize)
                } else {
                    let mut p: u64 = 0;
                    while let Some(d @ b'0'..=b'9') = at(i) {
                        p = (p * 10 + u64::from(d - b'0')) & 0xffff_ffff;
                        i += 1;
                    }
                    Some((p & 0x7fff_ffff) as usize)
                };
                spec.precision = precision;
                if at(i) == Some(b'l') {
                    i -= 1;
                } else {
                    return (spec, at(i), i);
                }
            }
            _ => return (spec, Some(c), i),
        }
        i += 1;
        match at(i) {
            Some(next) => c = next,
            None => return (spec, None, i),
        }
    }
}

/// Renders one conversion; `false` for an unknown one.
fn convert(conversion: u8, spec: Spec, args: &mut Args<'_>, out: &mut Output) -> Result<bool, SqlError> {
    let field = match conversion {
        _ if let Some(radix) = Radix::of(conversion) => {
            // Digits, zero padding and separators: at most 4/3 of the larger of the two.
            let digits = spec.width.max(spec.precision.unwrap_or(0)).max(24);
            check_result_bytes(digits.saturating_add(digits / 3))?;
            integer(&spec, args.int(), radix)
        }
        b'f' | b'e' | b'E' | b'g' | b'G' => {
            let precision = spec.precision.unwrap_or(0).min(FP_PRECISION_LIMIT);
            check_result_bytes(spec.width.saturating_add(precision))?;
            real(&spec, args.real(), conversion)
        }
        b's' | b'z' => {
            let text = args.text()?.unwrap_or_default();
            let end = match spec.precision {
                Some(p) if spec.alt2 => char_prefix_len(&text, p),
                Some(p) => p.min(text.len()),
                None => text.len(),
            };
            text[..end].to_vec()
        }
        b'q' | b'Q' | b'w' => escape(&spec, conversion, args.text()?)?,
        b'c' => return character(spec, args, out).map(|()| true),
        b'%' => b"%".to_vec(),
        b'n' => return out.push(b"").map(|()| true), // Writes nothing, but writes.
        _ => return Ok(false),
    };
    let utf8_string = spec.alt2 && matches!(conversion, b's' | b'z' | b'q' | b'Q' | b'w');
    pad_field(&spec, &field, utf8_string, out)?;
    Ok(true)
}

/// Writes `field` padded with spaces to the width (counted in characters for `!` strings).
fn pad_field(spec: &Spec, field: &[u8], utf8: bool, out: &mut Output) -> Result<(), SqlError> {
    let mut width = spec.width;
    if utf8 && width > 0 {
        width += field.iter().filter(|b| (**b & 0xc0) == 0x80).count();
    }
    let pad = width.saturating_sub(field.len());
    if pad > 0 && !spec.left {
        out.pad(pad, b' ')?;
    }
    out.push(field)?;
    if pad > 0 && spec.left {
        out.pad(pad, b' ')?;
    }
    Ok(())
}

/// Bytes of the first `chars` UTF-8 characters of `text`.
fn char_prefix_len(text: &[u8], chars: usize) -> usize {
    let mut i = 0;
    for _ in 0..chars {
        if i >= text.len() {
            break;
        }
        i += 1;
        while i < text.len() && (text[i] & 0xc0) == 0x80 {
            i += 1;
        }
    }
    i
}

/// `%d %i %u %x %X %o`: digits, zero padding through the precision, thousands separators,
/// the sign, then the `#` prefix; as SQLite orders them.
/// An integer conversion, as SQLite's `fmtinfo` table describes it.
struct Radix {
    base: u64,
    signed: bool,
    /// Written before the number with `#` (and a value other than 0).
    prefix: &'static [u8],
    upper: bool,
    /// `%r`: `1st`, `2nd`, `11th`...
    ordinal: bool,
    /// `,` inserts thousands separators (`%d %i %u` only).
    thousands: bool,
}

impl Radix {
    fn of(conversion: u8) -> Option<Radix> {
        let radix =
            |base, signed, prefix, upper| Radix { base, signed, prefix, upper, ordinal: false, thousands: false };
        Some(match conversion {
            b'd' | b'i' => Radix { thousands: true, ..radix(10, true, b"", false) },
            b'u' => Radix { thousands: true, ..radix(10, false, b"", false) },
            b'x' => radix(16, false, b"0x", false),
            b'X' => radix(16, false, b"0X", true),
            // SQLite prints a "pointer" from the integer argument: upper-case hex.
            b'p' => radix(16, false, b"0x", true),
            b'o' => radix(8, false, b"0", false),
            b'r' => Radix { ordinal: true, ..radix(10, true, b"", false) },
            _ => return None,
        })
    }
}

fn integer(spec: &Spec, v: i64, radix: Radix) -> Vec<u8> {
    let Radix { base, signed, prefix, upper, ordinal, thousands } = radix;
    let (mut magnitude, sign) = if signed && v < 0 { (v.unsigned_abs(), Some(b'-')) } else { (v as u64, None) };
    let sign = if signed { sign.or(spec.sign) } else { None };
    let alternate = spec.alternate && magnitude != 0;
    let mut precision = spec.precision.unwrap_or(0);
    if spec.zero {
        precision = precision.max(spec.width.saturating_sub(usize::from(sign.is_some())));
    }
    let digits: &[u8; 16] = if upper { b"0123456789ABCDEF" } else { b"0123456789abcdef" };
    let mut field = Vec::new();
    if ordinal {
        // Written backwards like the digits; the precision counts it.
        let last = (magnitude % 10) as usize;
        let suffix = if last >= 4 || (magnitude / 10) % 10 == 1 { b"th" } else { &b"thstndrd"[last * 2..last * 2 + 2] };
        field.extend(suffix.iter().rev());
    }
    loop {
        field.push(digits[(magnitude % base) as usize]);
        magnitude /= base;
        if magnitude == 0 {
            break;
        }
    }
    field.resize(field.len().max(precision), b'0');
    field.reverse();
    if spec.thousands && thousands {
        field = with_thousands(&field);
    }
    let mut out = Vec::with_capacity(field.len() + 3);
    if alternate {
        out.extend_from_slice(prefix);
    }
    out.extend(sign);
    out.extend_from_slice(&field);
    // SQLite writes the sign after the prefix in its buffer, so the prefix comes first.
    out
}

fn with_thousands(digits: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(digits.len() + digits.len() / 3);
    for (i, d) in digits.iter().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(b',');
        }
        out.push(*d);
    }
    out
}

/// `%q` (quotes doubled), `%Q` (also enclosed in quotes; NULL is `NULL`), `%w` (double
/// quotes doubled). With `#`, `%q`/`%Q` also escape backslashes and control characters
/// as `unistr()` reads them. The precision counts input bytes (characters with `!`).
fn escape(spec: &Spec, conversion: u8, text: Option<Vec<u8>>) -> Result<Vec<u8>, SqlError> {
    let quote = if conversion == b'w' { b'"' } else { b'\'' };
    let alternate = spec.alternate && conversion != b'w';
    let (text, enclose) = match text {
        Some(t) => (t, conversion == b'Q'),
        None if conversion == b'Q' => (b"NULL".to_vec(), false),
        None => (b"(NULL)".to_vec(), false),
    };
    let end = match spec.precision {
        Some(p) if spec.alt2 => char_prefix_len(&text, p),
        Some(p) => p.min(text.len()),
        None => text.len(),
    };
    let text = &text[..end];
    let control = text.iter().any(|b| *b <= 0x1f);
    let unistr = alternate && (control || conversion == b'q');
    check_result_bytes(text.len().saturating_mul(6).saturating_add(12))?;
    let mut out = Vec::with_capacity(text.len() + 3);
    let unistr_enclosed = enclose && unistr;
    if unistr_enclosed {
        out.extend_from_slice(b"unistr('");
    } else if enclose {
        out.push(b'\'');
    }
    for &b in text {
        if unistr && b == b'\\' {
            out.extend_from_slice(b"\\\\");
        } else if unistr && b <= 0x1f {
            out.extend_from_slice(format!("\\u00{b:02x}").as_bytes());
        } else {
            out.push(b);
            if b == quote {
                out.push(b);
            }
        }
    }
    if unistr_enclosed {
        out.extend_from_slice(b"')");
    } else if enclose {
        out.push(b'\'');
    }
    Ok(out)
}

/// `%c`: the first character of the argument's text, repeated `precision` times.
fn character(spec: Spec, args: &mut Args<'_>, out: &mut Output) -> Result<(), SqlError> {
    let text = args.text()?;
    let first: Vec<u8> = match &text {
        Some(t) if !t.is_empty() => t[..char_prefix_len(t, 1)].to_vec(),
        _ => vec![0],
    };
    let mut width = spec.width;
    let repeats = spec.precision.unwrap_or(1).max(1);
    check_result_bytes(first.len().saturating_mul(repeats).saturating_add(width))?;
    if repeats > 1 {
        width = width.saturating_sub(repeats - 1);
        if width > 1 && !spec.left {
            out.pad(width - 1, b' ')?;
            width = 0;
        }
        for _ in 1..repeats {
            out.push(&first)?;
        }
    }
    // SQLite counts the character's width in characters.
    pad_field(&Spec { width, ..spec }, &first, true, out)
}
