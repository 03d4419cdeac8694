//! SQLite's own number text conversions, as the date functions use them: `sqlite3AtoF`
//! (text to double, with its verdict on whether the whole text was a number) and the
//! `%f`/`%g` conversions of its printf (`sqlite3FpDecode`), ported from SQLite 3.50's
//! `util.c` and `printf.c`.
//!
//! Why a port and not `str::parse` / `format!`: date.c decides what a time value or a
//! modifier is by `sqlite3AtoF`'s return value (`' 12 '` and `'5.'` are numbers, `'1e'`
//! is not), and its double-double arithmetic can differ from a correctly rounded parse in
//! the last bit, which moves a julian day by a millisecond. Likewise `%J` in `strftime`
//! prints 16 significant digits rounded half up from SQLite's own digit expansion, where
//! Rust rounds the exact binary value half to even.

/// SQLite's `sqlite3Isspace`: ASCII space, `\t`, `\n`, `\v`, `\f`, `\r`.
pub(super) fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Dekker double-double multiplication: `(x[0], x[1]) *= (y, yy)`.
fn dekker_mul2(x: &mut [f64; 2], y: f64, yy: f64) {
    let high = |v: f64| f64::from_bits(v.to_bits() & 0xffff_ffff_fc00_0000);
    let hx = high(x[0]);
    let tx = x[0] - hx;
    let hy = high(y);
    let ty = y - hy;
    let p = hx * hy;
    let q = hx * ty + tx * hy;
    let c = p + q;
    let mut cc = p - c + q + tx * ty;
    // (IEEE addition commutes: this is date.c's `x[0]*yy + x[1]*y + cc` exactly.)
    cc += x[0] * yy + x[1] * y;
    x[0] = c + cc;
    x[1] = c - x[0];
    x[1] += cc;
}

/// `sqlite3AtoF` on `z`: the value of its longest numeric prefix, and whether the whole
/// text (spaces around it allowed) is a number (`true` is SQLite's return value > 0).
pub(super) fn atof(z: &[u8]) -> (f64, bool) {
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

/// A finite, non-negative double as decimal digits (`sqlite3FpDecode`): the significant
/// digits (no trailing zeros) and the position of the decimal point after the first `dp`.
struct Decoded {
    digits: Vec<u8>,
    dp: i32,
}

/// `sqlite3FpDecode(r, round, 16)`: `round > 0` keeps that many significant digits,
/// `round <= 0` keeps `-round` digits after the decimal point; rounding is half up on
/// SQLite's 17–19 digit expansion.
fn fp_decode(r: f64, round: i32) -> Decoded {
    const MX_ROUND: i32 = 16;
    if r == 0.0 {
        return Decoded { digits: vec![b'0'], dp: 1 };
    }
    let mut rr = [r, 0.0];
    let mut exp = 0;
    if rr[0] > 9.223_372_036_854_775e18 {
        while rr[0] > 9.223_372_036_854_775e118 {
            exp += 100;
            dekker_mul2(&mut rr, 1.0e-100, -1.999_189_980_260_288_4e-117);
        }
        while rr[0] > 9.223_372_036_854_775e28 {
            exp += 10;
            dekker_mul2(&mut rr, 1.0e-10, -3.643_219_731_549_774e-27);
        }
        while rr[0] > 9.223_372_036_854_775e18 {
            exp += 1;
            dekker_mul2(&mut rr, 1.0e-01, -5.551_115_123_125_783e-18);
        }
    } else {
        while rr[0] < 9.223_372_036_854_775e-83 {
            exp -= 100;
            dekker_mul2(&mut rr, 1.0e+100, -1.590_289_110_975_991_8e83);
        }
        while rr[0] < 9.223_372_036_854_775e7 {
            exp -= 10;
            dekker_mul2(&mut rr, 1.0e+10, 0.0);
        }
        while rr[0] < 9.223_372_036_854_775e17 {
            exp -= 1;
            dekker_mul2(&mut rr, 1.0e+01, 0.0);
        }
    }
    let v = if rr[1] < 0.0 {
        (rr[0] as u64).wrapping_sub((-rr[1]) as u64)
    } else {
        (rr[0] as u64).wrapping_add(rr[1] as u64)
    };
    // A leading '0' leaves room for a carry out of the first digit.
    let mut digits: Vec<u8> = std::iter::once(b'0').chain(v.to_string().into_bytes()).collect();
    let mut start = 1usize;
    let mut n = (digits.len() - 1) as i32;
    let mut dp = n + exp;
    let mut round = round;
    if round <= 0 {
        round = dp - round;
        if round == 0 && digits[1] >= b'5' {
            // Rounds up to one digit more than there was: "0.6" at 0 places is "1".
            round = 1;
            start = 0;
            n += 1;
            dp += 1;
        }
    }
    if round > 0 && (round < n || n > MX_ROUND) {
        let round = round.min(MX_ROUND) as usize;
        n = round as i32;
        if digits[start + round] >= b'5' {
            let mut j = round - 1;
            loop {
                digits[start + j] += 1;
                if digits[start + j] <= b'9' {
                    break;
                }
                digits[start + j] = b'0';
                if j == 0 {
                    start -= 1;
                    digits[start] = b'1';
                    n += 1;
                    dp += 1;
                    break;
                }
                j -= 1;
            }
        }
    }
    let mut digits = digits[start..start + n.max(1) as usize].to_vec();
    while digits.len() > 1 && digits.last() == Some(&b'0') {
        digits.pop();
    }
    Decoded { digits, dp }
}

/// SQLite's `%.Nf` of a finite double.
pub(super) fn printf_fixed(r: f64, precision: i32) -> String {
    let negative = r < 0.0;
    let d = fp_decode(r.abs(), -precision);
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    push_fixed(&mut out, &d, precision);
    out
}

/// Digits of `d` in fixed notation with `precision` digits after the point.
fn push_fixed(out: &mut String, d: &Decoded, mut precision: i32) {
    let digit = |j: usize| char::from(d.digits.get(j).copied().unwrap_or(b'0'));
    let mut j = 0;
    let mut e2 = d.dp - 1;
    if e2 < 0 {
        out.push('0');
    } else {
        while e2 >= 0 {
            out.push(digit(j));
            j += 1;
            e2 -= 1;
        }
    }
    if precision > 0 {
        out.push('.');
    }
    e2 += 1;
    while e2 < 0 && precision > 0 {
        out.push('0');
        precision -= 1;
        e2 += 1;
    }
    while precision > 0 {
        out.push(digit(j));
        j += 1;
        precision -= 1;
    }
}

/// SQLite's `%.Ng` of a finite double (`strftime('%J')` uses `%.16g`).
pub(super) fn printf_generic(r: f64, precision: i32) -> String {
    let negative = r < 0.0;
    let precision = precision.max(1);
    let d = fp_decode(r.abs(), precision);
    let exp = d.dp - 1;
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    let scientific = exp < -4 || exp > precision - 1;
    if scientific {
        let mantissa = Decoded { digits: d.digits.clone(), dp: 1 };
        push_fixed(&mut out, &mantissa, precision - 1);
    } else {
        push_fixed(&mut out, &d, precision - 1 - exp);
    }
    // %g drops trailing zeros, and the point when nothing follows it.
    if out.contains('.') {
        while out.ends_with('0') {
            out.pop();
        }
        if out.ends_with('.') {
            out.pop();
        }
    }
    if scientific {
        let sign = if exp < 0 { '-' } else { '+' };
        out.push_str(&format!("e{sign}{:02}", exp.abs()));
    }
    out
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
