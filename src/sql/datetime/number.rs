//! SQLite's own number text conversions, as the date functions use them: `sqlite3AtoF`
//! (text to double, with its verdict on whether the whole text was a number), ported from
//! SQLite 3.50's `util.c`, and the `%f`/`%g` conversions of its printf (`realfmt.rs`).
//!
//! Why a port and not `str::parse` / `format!`: date.c decides what a time value or a
//! modifier is by `sqlite3AtoF`'s return value (`' 12 '` and `'5.'` are numbers, `'1e'`
//! is not), and its double-double arithmetic can differ from a correctly rounded parse in
//! the last bit, which moves a julian day by a millisecond. Likewise `%J` in `strftime`
//! prints 16 significant digits rounded half up from SQLite's own digit expansion, where
//! Rust rounds the exact binary value half to even.

use crate::sql::realfmt::{dekker_mul2, real_string, Spec};

/// SQLite's `sqlite3Isspace`: ASCII space, `\t`, `\n`, `\v`, `\f`, `\r`.
pub(super) fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// `sqlite3AtoF` on `z`: the value of its longest numeric prefix, and whether the whole
/// text (spaces around it allowed) is a number (`true` is SQLite's return value > 0).
pub(crate) fn atof(z: &[u8]) -> (f64, bool) {
    let end = z.len();
    let mut i = 0;
    while i < end && is_space(z[i]) {
        i += 1;
    }
    if i >= end {
        return (0.0, false);
    }
    let mut sign = 1;
    if z[i] == b'-' {
        sign = -1;
        i += 1;
    } else if z[i] == b'+' {
        i += 1;
    }
    const BIG: u64 = (u64::MAX - 9) / 10;
    let (mut s, mut d, mut n_digit, mut e_type) = (0u64, 0i32, 0, 1);
    let (mut esign, mut e, mut e_valid) = (1i32, 0i32, true);
    while i < end && z[i].is_ascii_digit() {
        s = s * 10 + u64::from(z[i] - b'0');
        i += 1;
        n_digit += 1;
        if s >= BIG {
            // Digits past the 19th only shift the decimal point.
            while i < end && z[i].is_ascii_digit() {
                i += 1;
                d += 1;
            }
        }
    }
    if i < end && z[i] == b'.' {
        i += 1;
        e_type += 1;
        while i < end && z[i].is_ascii_digit() {
            if s < BIG {
                s = s * 10 + u64::from(z[i] - b'0');
                d -= 1;
                n_digit += 1;
            }
            i += 1;
        }
    }
    if i < end && (z[i] == b'e' || z[i] == b'E') {
        i += 1;
        e_valid = false;
        e_type += 1;
        if i < end {
            if z[i] == b'-' {
                esign = -1;
                i += 1;
            } else if z[i] == b'+' {
                i += 1;
            }
            while i < end && z[i].is_ascii_digit() {
                e = if e < 10000 { e * 10 + i32::from(z[i] - b'0') } else { 10000 };
                i += 1;
                e_valid = true;
            }
        }
    }
    while i < end && is_space(z[i]) {
        i += 1;
    }
    let value = atof_value(sign, s, e * esign + d);
    (value, i == end && n_digit > 0 && e_valid && e_type > 0)
}

/// `sign * s * 10^e` by SQLite's double-double steps.
fn atof_value(sign: i32, mut s: u64, mut e: i32) -> f64 {
    if s == 0 {
        return if sign < 0 { -0.0 } else { 0.0 };
    }
    while e > 0 && s < (u64::MAX - 0x7ff) / 10 {
        s *= 10;
        e -= 1;
    }
    while e < 0 && s.is_multiple_of(10) {
        s /= 10;
        e += 1;
    }
    let mut rr = [s as f64, 0.0];
    if rr[0] <= 18_446_744_073_709_549_568.0 {
        let s2 = rr[0] as u64;
        rr[1] = if s >= s2 { (s - s2) as f64 } else { -((s2 - s) as f64) };
    }
    if e > 0 {
        while e >= 100 {
            e -= 100;
            dekker_mul2(&mut rr, 1.0e+100, -1.590_289_110_975_991_8e83);
        }
        while e >= 10 {
            e -= 10;
            dekker_mul2(&mut rr, 1.0e+10, 0.0);
        }
        while e >= 1 {
            e -= 1;
            dekker_mul2(&mut rr, 1.0e+01, 0.0);
        }
    } else {
        while e <= -100 {
            e += 100;
            dekker_mul2(&mut rr, 1.0e-100, -1.999_189_980_260_288_4e-117);
        }
        while e <= -10 {
            e += 10;
            dekker_mul2(&mut rr, 1.0e-10, -3.643_219_731_549_774e-27);
        }
        while e <= -1 {
            e += 1;
            dekker_mul2(&mut rr, 1.0e-01, -5.551_115_123_125_783e-18);
        }
    }
    let mut r = rr[0] + rr[1];
    if r.is_nan() {
        r = f64::INFINITY;
    }
    if sign < 0 {
        -r
    } else {
        r
    }
}

/// SQLite's `%.Nf` of a finite double.
pub(super) fn printf_fixed(r: f64, precision: i32) -> String {
    real_string(&Spec { precision: Some(precision.max(0) as usize), ..Spec::default() }, r, b'f')
}

/// SQLite's `%.Ng` of a finite double (`strftime('%J')` uses `%.16g`).
pub(super) fn printf_generic(r: f64, precision: i32) -> String {
    real_string(&Spec { precision: Some(precision.max(0) as usize), ..Spec::default() }, r, b'g')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atof_tells_whole_numbers_from_prefixes() {
        assert_eq!(atof(b" 12 "), (12.0, true));
        assert_eq!(atof(b"5."), (5.0, true));
        assert_eq!(atof(b".5"), (0.5, true));
        assert_eq!(atof(b"1e"), (1.0, false));
        assert_eq!(atof(b"12abc"), (12.0, false));
        assert_eq!(atof(b"-"), (0.0, false));
        assert_eq!(atof(b"2451544.5"), (2451544.5, true));
    }

    #[test]
    fn printf_rounds_half_up_like_sqlite() {
        assert_eq!(printf_fixed(0.0625, 3), "0.063");
        assert_eq!(printf_fixed(59.999, 3), "59.999");
        assert_eq!(printf_fixed(0.0, 3), "0.000");
        assert_eq!(printf_fixed(1700000000.123, 3), "1700000000.123");
        assert_eq!(printf_generic(2451544.5, 16), "2451544.5");
        assert_eq!(printf_generic(2460000.0, 16), "2460000");
        assert_eq!(printf_generic(0.000_012_5, 16), "1.25e-05");
    }
}
